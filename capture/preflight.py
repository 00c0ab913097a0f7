"""Checks made before loading the BPF program, each failing with a one-line fix.

The checked paths are parameters (defaulting to the real ones) so that tests can point them at
an empty directory instead of unmounting the real tracefs. ``DNSTRAIL_MODULES_DIR`` and
``DNSTRAIL_TRACEFS_DIRS`` (colon-separated) override the defaults the same way for the CLI.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from capture.errors import BccMissing, HeadersMissing, NotPermitted, TracefsMissing

CAP_PERFMON = 38
CAP_BPF = 39
CAP_SYS_ADMIN = 21

DEFAULT_TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


def _env_paths(name: str) -> tuple[str, ...] | None:
    value = os.environ.get(name)
    return tuple(p for p in value.split(":") if p) if value else None


@dataclass(frozen=True)
class PreflightPaths:
    """Where the checks look. Defaults are the real system locations."""

    proc_status: Path = Path("/proc/self/status")
    modules_dir: Path = field(
        default_factory=lambda: Path(os.environ.get("DNSTRAIL_MODULES_DIR", "/lib/modules"))
    )
    tracefs_dirs: tuple[str, ...] = field(
        default_factory=lambda: _env_paths("DNSTRAIL_TRACEFS_DIRS") or DEFAULT_TRACEFS_DIRS
    )
    kernel_release: str = field(default_factory=lambda: os.uname().release)
    bcc_module: str = "bcc"


def effective_caps(proc_status: Path) -> int:
    """CapEff of this process as a bit mask (0 when unreadable)."""
    try:
        for line in proc_status.read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def check_privileges(paths: PreflightPaths) -> None:
    caps = effective_caps(paths.proc_status)

    def has(cap: int) -> bool:
        return bool(caps >> cap & 1)

    if has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON)):
        return
    who = "root without capabilities" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    raise NotPermitted(
        f"not permitted to load BPF programs (running as {who}, CapEff={caps:#x}): run as "
        "root (sudo dnstrail record ...) or grant CAP_BPF and CAP_PERFMON"
    )


def check_bcc(paths: PreflightPaths) -> None:
    try:
        importlib.import_module(paths.bcc_module)
    except (ImportError, OSError) as exc:
        raise BccMissing(
            f"bcc is not importable ({exc}): apt-get install python3-bpfcc (the PyPI "
            "package 'bcc' is unrelated), then re-run deploy/setup.sh"
        ) from None


def check_headers(paths: PreflightPaths) -> None:
    include = paths.modules_dir / paths.kernel_release / "build" / "include"
    if not include.is_dir():
        raise HeadersMissing(
            f"kernel headers are missing ({include} not found): apt-get install "
            "linux-headers-$(uname -r) (or run deploy/setup.sh --lab, which links the nearest "
            "Debian headers)"
        )


def check_tracefs(paths: PreflightPaths) -> None:
    for d in paths.tracefs_dirs:
        if Path(d, "events").is_dir():
            return
    raise TracefsMissing(
        f"tracefs is not mounted (no events/ under {', '.join(paths.tracefs_dirs)}): "
        "mount -t tracefs tracefs /sys/kernel/tracing"
    )


def preflight(paths: PreflightPaths | None = None, skip: Sequence[str] = ()) -> None:
    """Run every check in order (privileges, bcc, headers, tracefs); raise the first failure."""
    paths = paths or PreflightPaths()
    for name, check in (
        ("privileges", check_privileges),
        ("bcc", check_bcc),
        ("headers", check_headers),
        ("tracefs", check_tracefs),
    ):
        if name not in skip:
            check(paths)
