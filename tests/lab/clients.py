"""Build the lab's resolver clients (static musl C, pure Go) into tests/lab/bin/, cached."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ._sys import LabError

HERE = Path(__file__).resolve().parent
SRC = HERE / "clients"
BIN = HERE / "bin"


def _newer(target: Path, sources: list[Path]) -> bool:
    """True when target exists and is newer than every source."""
    if not target.exists():
        return False
    t = target.stat().st_mtime
    return all(s.stat().st_mtime <= t for s in sources)


def _build(argv: list[str], out: Path, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> None:
    """Run a compiler writing to a temporary file, then rename: concurrent builds are safe."""
    BIN.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=BIN)
    os.close(fd)
    try:
        argv = [a.replace("{OUT}", tmp) for a in argv]
        proc = subprocess.run(argv, check=False, capture_output=True, text=True, env=env, cwd=cwd,
                              timeout=300)
        if proc.returncode != 0:
            raise LabError(f"building {out.name} failed: {' '.join(argv)}\n{proc.stderr}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def musl_client() -> Path:
    """tests/lab/bin/resolve-musl: static musl getaddrinfo client (see clients/resolve.c)."""
    src = SRC / "resolve.c"
    out = BIN / "resolve-musl"
    if not _newer(out, [src]):
        cc = shutil.which("musl-gcc")
        if cc is None:
            raise LabError("musl-gcc is not installed (apt-get install musl-tools)")
        _build([cc, "-static", "-O2", "-Wall", "-o", "{OUT}", str(src)], out)
    return out


def uring_client() -> Path:
    """tests/lab/bin/uring_dns: DNS over UDP through io_uring (see clients/uring_dns.c)."""
    src = SRC / "uring_dns.c"
    out = BIN / "uring_dns"
    if not _newer(out, [src]):
        cc = shutil.which("gcc") or shutil.which("cc")
        if cc is None:
            raise LabError("gcc is not installed (apt-get install gcc libc6-dev)")
        _build([cc, "-O2", "-Wall", "-o", "{OUT}", str(src)], out)
    return out


def go_client() -> Path:
    """tests/lab/bin/goresolve: pure-Go (CGO_ENABLED=0) resolver client."""
    src_dir = SRC / "goresolve"
    out = BIN / "goresolve"
    sources = [src_dir / "main.go", src_dir / "go.mod"]
    if not _newer(out, sources):
        go = shutil.which("go")
        if go is None:
            raise LabError("go is not installed (apt-get install golang-go)")
        cache = BIN / ".go"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(cache),
            "CGO_ENABLED": "0",
            "GOFLAGS": "-mod=mod",
            "GOPROXY": "off",
            "GOSUMDB": "off",
            "GOTOOLCHAIN": "local",
            "GOCACHE": str(cache / "cache"),
            "GOPATH": str(cache / "path"),
        }
        _build([go, "build", "-trimpath", "-o", "{OUT}", "."], out, env=env, cwd=src_dir)
    return out


def build_all() -> dict[str, Path]:
    return {"musl": musl_client(), "go": go_client(), "uring": uring_client()}
