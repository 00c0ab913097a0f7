"""The work directory: derived Parquet of the ingest and relate stages, outside the evidence.

Every entry is a directory named by a key: the SHA-256 of what it was derived from (the
evidence files' SHA-256s, the stage's version and its parameters). An entry is built in a
``.tmp-`` directory beside it and renamed into place when complete, so a reader never sees a
half-written entry and two processes building the same one do not corrupt each other; an
entry whose inputs changed simply has another key (it is rebuilt, never stale). The evidence
directory is only ever read.

The default location is ``$XDG_CACHE_HOME/dnstrail`` (``~/.cache/dnstrail``); ``load(...,
work_dir=...)`` and ``--work-dir`` choose another. ``DNSTRAIL_WORK_DIR`` overrides the default.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analyze.errors import AnalyzeError

#: Name of the file that marks a complete entry (written last) and describes it.
DONE = "entry.json"


class WorkDirError(AnalyzeError):
    """the work directory (cache of derived tables) cannot be used: choose another with --work-dir"""


class WorkDirFull(WorkDirError):
    """no space left in the work directory: free space or choose another with --work-dir (the evidence is untouched)"""


def default_root() -> Path:
    env = os.environ.get("DNSTRAIL_WORK_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dnstrail"


def digest(obj: Any) -> str:
    """SHA-256 of a JSON-serialisable description (keys sorted): an entry's key."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


@functools.lru_cache(maxsize=8)
def source_digest(*modules: str) -> str:
    """SHA-256 over the source files of these modules and packages: a cached result made by
    other code is never reused."""
    import importlib.util

    h = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            h.update(name.encode())
            continue
        origin = Path(spec.origin)
        # a package: its code and the data it ships (known_services.toml, ...)
        files = sorted([*origin.parent.glob("*.py"), *origin.parent.glob("*.toml")]) \
            if origin.name == "__init__.py" else [origin]
        for f in files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or quota) is full: an OSError's errno, or the text
    Arrow and DuckDB put in their own errors."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text


@dataclass(frozen=True)
class WorkDir:
    """A work directory root; ``entry(stage, key)`` is where one derived result lives."""

    root: Path

    @classmethod
    def at(cls, root: str | Path | None) -> WorkDir:
        path = Path(root) if root is not None else default_root()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if is_disk_full(exc):
                raise WorkDirFull() from None
            raise WorkDirError(f"{path}: cannot create the work directory: "
                               f"{exc.strerror or exc}") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise WorkDirError(f"{path}: the work directory is not writable: choose another "
                               "with --work-dir")
        return cls(path)

    def entry(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def lookup(self, stage: str, key: str) -> dict[str, Any] | None:
        """The description of a complete entry, or None when it must be built."""
        marker = self.entry(stage, key) / DONE
        try:
            data = json.loads(marker.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def building(self, stage: str, key: str) -> Path:
        """A fresh private directory to build the entry in (publish() moves it into place)."""
        tmp = self.root / stage / f".tmp-{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir(parents=True)
        except OSError as exc:
            raise self.error(exc) from None
        return tmp

    def publish(self, tmp: Path, stage: str, key: str, info: dict[str, Any]) -> Path:
        """Write the marker into ``tmp`` and rename it to the entry (another process may have
        published the same entry first: then ``tmp`` is discarded and theirs is used)."""
        final = self.entry(stage, key)
        try:
            (tmp / DONE).write_text(json.dumps(info, sort_keys=True, default=str))
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if final.exists() and self.lookup(stage, key) is not None:
                return final
            raise self.error(exc) from None
        return final

    def temp(self) -> Path:
        """Spill directory for the engine (DuckDB) under this work directory."""
        path = self.root / "spill"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def empty(self, name: str, schema: Any) -> Path:
        """A Parquet file with no rows of ``schema`` (for a stage table nobody wrote)."""
        import pyarrow.parquet as pq

        path = self.root / "empty" / f"{name}-{digest(str(schema))[:16]}.parquet"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
            pq.write_table(schema.empty_table(), tmp)
            os.replace(tmp, path)
        return path

    def error(self, exc: BaseException) -> WorkDirError:
        if is_disk_full(exc):
            return WorkDirFull(f"{self.root}: no space left in the work directory: free space "
                               "or choose another with --work-dir (the evidence is untouched)")
        reason = getattr(exc, "strerror", None) or (str(exc).splitlines()
                                                     or [type(exc).__name__])[0]
        return WorkDirError(f"{self.root}: cannot write the work directory: {reason}")


__all__ = ["DONE", "WorkDir", "WorkDirError", "WorkDirFull", "default_root", "digest"]
