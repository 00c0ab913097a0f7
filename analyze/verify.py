"""Verify a capture directory: is it what the recorder wrote, and how did the capture end?

``verify_capture(path)`` checks every file against the manifest (``manifest.json``: name, size,
SHA-256, row count), the manifest itself (format, schema version, counts that add up, file
names that stay inside the directory), finds missing, extra and changed files, says how the
capture ended (complete; stopped by a signal or its ``--duration``; failed with an error; or
died with the manifest still ``running``) and explains the manifest's ``lost`` counters in
words. The result is a ``Verification``; ``dnstrail verify`` prints it (docs/guarantees.md).

The evidence id is the SHA-256 of manifest.json's bytes: the manifest lists the SHA-256 of
every file, so this one hash names the whole capture. Note it in the ticket; a later
``dnstrail verify`` that prints the same id and ``verified`` proves nothing changed since.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import textwrap
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from analyze.errors import AnalyzeError
from capture import schema

# -- exit codes of `dnstrail verify` (docs/guarantees.md); the worst capture decides ------------
#: Every file matches the manifest, the capture ended normally and nothing was lost.
EXIT_VERIFIED = 0
#: (1 is any error the CLI reports: not a capture, unreadable directory; 2 a bad option.)
#: Every file matches, the capture ended normally, but the recorder counted lost events.
EXIT_LOST = 3
#: Every finished file matches, but the capture did not end normally (died or failed).
EXIT_ABNORMAL_END = 4
#: A file is missing, changed, cut or extra, or the manifest is damaged.
EXIT_DAMAGED = 5

#: Verdicts, best first; each has its exit code.
VERDICTS: dict[str, int] = {
    "verified": EXIT_VERIFIED,
    "lost-events": EXIT_LOST,
    "abnormal-end": EXIT_ABNORMAL_END,
    "damaged": EXIT_DAMAGED,
}

# -- file statuses ---------------------------------------------------------------------------
OK = "ok"
MISSING = "missing"  # listed, not on disk
SIZE_DIFFERS = "size differs"  # listed, other size (cut, grown)
HASH_DIFFERS = "sha256 differs"  # listed, same size, other bytes
ROWS_DIFFER = "rows differ"  # bytes match, but the Parquet footer says other rows
UNREADABLE = "unreadable"  # cannot be opened or read
NOT_REGULAR = "not a regular file"  # a symlink, directory or device under a listed name
BAD_NAME = "bad name"  # a manifest entry that names a path outside the directory
EXTRA = "extra"  # a capture file (readers load it) that the manifest does not list
UNLISTED = "unlisted"  # same, in a capture that died: finished after the last manifest write
SNAPSHOT_NEWER = "snapshot newer"  # a snapshot rewritten just before a crash
TEMPORARY = "temporary"  # a .tmp- file: unfinished, readers ignore it
OTHER = "other"  # not a capture file: dnstrail never reads it

#: File statuses that make a capture damaged.
DAMAGE = frozenset({MISSING, SIZE_DIFFERS, HASH_DIFFERS, ROWS_DIFFER, UNREADABLE,
                    NOT_REGULAR, BAD_NAME, EXTRA})

#: What each lost-event cause means and what it cost (docs/bpf.md, docs/record.md, decode.md).
LOST_CAUSES: dict[str, str] = {
    "ringbuf_full": "the kernel ring buffer had no room (the recorder fell behind, or was held "
    "back by --cpu-budget on a saturated node): these DNS messages were not recorded at all",
    "disk_full": "the disk filled: these events were in the file being written, which was "
    "deleted; they are not in the capture",
    "payload_unreadable": "the process's buffer could not be read: the rows are kept with a "
    "short payload marked truncated, so these messages may not decode",
    "mmsg_over_bound": "messages of one sendmmsg/recvmmsg beyond the vector bound: these "
    "messages were not recorded",
    "iov_over_bound": "a message spread over more iovecs than the bound: the rows are kept "
    "with the payload cut",
    "pending_full": "the recorder could not remember a syscall's arguments (out of memory): "
    "those syscalls' messages were not recorded",
    "untracked_socket_io": "DNS-port socket I/O through a path the probe does not read "
    "(sendfile/splice, io_uring, a 32-bit process, a kernel thread): these messages were "
    "seen but not recorded",
    "msghdr_unreadable": "the struct msghdr of a sendmsg/recvmsg could not be read: these "
    "messages were not recorded",
    "connect_pending_full": "more connect() calls in flight than the probe tracks: these "
    "connects were not recorded",
    "skipped_malformed": "packets in the pcap whose IP/UDP/TCP headers were damaged: DNS in "
    "them was not imported",
    "skipped_fragments": "IP fragments after the first: their bytes are not in the imported "
    "messages",
    "skipped_link_type": "packets on pcapng interfaces of an unsupported link type: not "
    "imported",
}


class VerifyError(AnalyzeError):
    """the capture could not be verified"""


class NotACaptureDirectory(VerifyError):
    """not a dnstrail capture directory (no manifest.json): give the directory `dnstrail record` or `dnstrail import` wrote"""


class NoSuchCapture(VerifyError):
    """no such capture directory"""


@dataclass(frozen=True)
class FileCheck:
    """One file of the directory, compared with its manifest entry."""

    name: str
    kind: str | None
    status: str
    detail: str = ""
    listed_bytes: int | None = None
    actual_bytes: int | None = None
    listed_sha256: str | None = None
    actual_sha256: str | None = None
    rows: int | None = None

    @property
    def damaged(self) -> bool:
        return self.status in DAMAGE


@dataclass(frozen=True)
class CaptureEnd:
    """How the capture ended, from the manifest: ``kind`` and a sentence."""

    kind: str  # complete | signal | duration | imported | failed | died | unknown
    text: str

    @property
    def normal(self) -> bool:
        return self.kind in ("complete", "signal", "duration", "imported")


@dataclass(frozen=True)
class Loss:
    cause: str
    count: int
    meaning: str


@dataclass
class Verification:
    """The result of verifying one capture directory (``verify_capture``)."""

    path: str
    evidence_id: str | None  # SHA-256 of manifest.json's bytes
    schema_version: int | None
    source: str | None
    host: str | None
    status: str | None  # the manifest's status
    end: CaptureEnd
    files: list[FileCheck] = field(default_factory=list)
    losses: list[Loss] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # manifest-level damage

    @property
    def damaged(self) -> list[FileCheck]:
        return [f for f in self.files if f.damaged]

    @property
    def intact(self) -> bool:
        """No file missing, changed or extra, and the manifest is sound."""
        return not self.problems and not self.damaged

    @property
    def lost_total(self) -> int:
        return sum(loss.count for loss in self.losses)

    @property
    def verdict(self) -> str:
        if not self.intact:
            return "damaged"
        if not self.end.normal:
            return "abnormal-end"
        if self.lost_total:
            return "lost-events"
        return "verified"

    @property
    def exit_code(self) -> int:
        return VERDICTS[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["end"] = {"kind": self.end.kind, "text": self.end.text, "normal": self.end.normal}
        d["verdict"] = self.verdict
        d["exit_code"] = self.exit_code
        d["intact"] = self.intact
        d["lost_total"] = self.lost_total
        return d


def explain_losses(lost: Mapping[str, Any] | None) -> list[Loss]:
    """The non-zero lost counters, each with what it means and what it cost."""
    out = []
    for cause, count in (lost or {}).items():
        if isinstance(count, bool) or not isinstance(count, (int, float)) or count <= 0:
            continue
        meaning = LOST_CAUSES.get(str(cause), "a cause this dnstrail does not know: events "
                                  "were lost")
        out.append(Loss(str(cause), int(count), meaning))
    return out


def _when(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _requested_duration(command_line: Any) -> float | None:
    """The --duration of the recorder's argv, in seconds (None when absent or unreadable)."""
    if not isinstance(command_line, list):
        return None
    text = None
    for i, arg in enumerate(command_line):
        if not isinstance(arg, str):
            continue
        if arg == "--duration" and i + 1 < len(command_line):
            text = command_line[i + 1]
        elif arg.startswith("--duration="):
            text = arg.split("=", 1)[1]
    if not isinstance(text, str):
        return None
    try:
        from capture.recorder import parse_duration  # the recorder's own parser

        return parse_duration(text)
    except (ImportError, ValueError):
        return None


def capture_end(manifest: Mapping[str, Any]) -> CaptureEnd:
    """How the capture ended, read from its manifest.

    The recorder writes ``complete`` for all three normal ends (``--duration`` reached,
    SIGINT, SIGTERM); without ``--duration`` only a signal ends it, and a capture that stopped
    well before its ``--duration`` was stopped by one.
    """
    status = manifest.get("status")
    if status == "running":
        lost = ("events still in the ring buffer are not in the capture, nor those of its "
                "last unfinished Parquet files")
        open_ = manifest.get("spool_open")
        if isinstance(open_, str) and schema.file_kind(open_) == schema.SPOOL_KIND:
            lost = ("events still in the ring buffer are not in the capture; the spool "
                    f"segment it was writing ({open_}) is read up to its last "
                    "whole record")
        return CaptureEnd("died", "did not end normally: the manifest still says 'running' "
                          "(the recorder was killed, crashed or lost power, or it is still "
                          f"recording); {lost}")
    if status == "failed":
        error = manifest.get("error") or "no reason recorded"
        return CaptureEnd("failed", f"failed: {error}; files finished before the failure "
                          "are kept")
    if status != "complete":
        return CaptureEnd("unknown", f"the manifest's status {status!r} is not one dnstrail "
                          "writes")
    if manifest.get("source") == "pcap":
        return CaptureEnd("imported", "complete (imported from a pcap file)")
    wanted = _requested_duration(manifest.get("command_line"))
    start, stop = _when(manifest.get("started_at")), _when(manifest.get("stopped_at"))
    if wanted is None:
        if isinstance(manifest.get("command_line"), list) and manifest.get("command_line"):
            return CaptureEnd("signal", "complete: stopped by SIGINT or SIGTERM (no "
                              "--duration was given)")
        return CaptureEnd("complete", "complete")
    if start is not None and stop is not None:
        elapsed = (stop - start).total_seconds()
        if elapsed + 1.0 < wanted:
            return CaptureEnd("signal", f"complete: stopped by SIGINT or SIGTERM after "
                              f"{elapsed:.1f} s of the requested {wanted:g} s")
    return CaptureEnd("duration", f"complete: ran its --duration of {wanted:g} s")


def _safe_name(name: Any) -> bool:
    return (isinstance(name, str) and bool(name) and name not in (".", "..")
            and "/" not in name and "\\" not in name and "\0" not in name)


def _parquet_rows(path: Path) -> int:
    """Rows of a capture file: a Parquet file's, or a spool segment's whole records."""
    if schema.file_kind(path.name) == schema.SPOOL_KIND:
        from capture.spool import count_records

        return count_records(path)
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def _check_listed(directory: Path, entry: Mapping[str, Any], crashed: bool) -> FileCheck:
    from capture.writer import sha256_file

    name = entry.get("name")
    if not _safe_name(name):
        return FileCheck(str(name), None, BAD_NAME, "the manifest names a path outside the "
                         "capture directory")
    assert isinstance(name, str)
    kind = schema.file_kind(name)
    listed_bytes = entry.get("bytes") if isinstance(entry.get("bytes"), int) else None
    listed_sha = entry.get("sha256") if isinstance(entry.get("sha256"), str) else None
    base = {"listed_bytes": listed_bytes, "listed_sha256": listed_sha}
    path = directory / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return FileCheck(name, kind, MISSING, "listed in the manifest, not in the directory",
                         **base)
    if not stat.S_ISREG(st.st_mode):
        return FileCheck(name, kind, NOT_REGULAR, "not a regular file (symlink, directory "
                         "or device)", **base)
    base["actual_bytes"] = st.st_size
    snapshot = kind in schema.SNAPSHOT_KINDS
    try:
        digest = sha256_file(path)
    except OSError as exc:
        return FileCheck(name, kind, UNREADABLE, f"cannot read: {exc.strerror or exc}", **base)
    base["actual_sha256"] = digest
    if listed_sha is None or listed_bytes is None:
        return FileCheck(name, kind, HASH_DIFFERS, "its manifest entry has no size or sha256",
                         **base)
    if st.st_size != listed_bytes or digest != listed_sha:
        if crashed and snapshot:
            # a snapshot is replaced just before each manifest rewrite (docs/record.md)
            return _snapshot_newer(path, name, kind, base)
        if st.st_size != listed_bytes:
            how = "cut short" if st.st_size < listed_bytes else "grown"
            return FileCheck(name, kind, SIZE_DIFFERS, f"{st.st_size} bytes, the manifest "
                             f"says {listed_bytes} ({how})", **base)
        return FileCheck(name, kind, HASH_DIFFERS, "same size, other bytes: modified or "
                         "damaged", **base)
    rows = None
    if kind is not None:
        try:
            rows = _parquet_rows(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types on bad files
            return FileCheck(name, kind, UNREADABLE, f"matches its sha256 but is not readable "
                             f"Parquet: {str(exc).splitlines()[0] if str(exc) else exc!r}",
                             **base)
        listed_rows = entry.get("rows")
        if isinstance(listed_rows, int) and rows != listed_rows:
            return FileCheck(name, kind, ROWS_DIFFER, f"{rows} rows, the manifest says "
                             f"{listed_rows}", rows=rows, **base)
    return FileCheck(name, kind, OK, "", rows=rows, **base)


def _snapshot_newer(path: Path, name: str, kind: str | None, base: dict[str, Any]) -> FileCheck:
    try:
        rows = _parquet_rows(path)
    except Exception as exc:  # noqa: BLE001
        return FileCheck(name, kind, UNREADABLE, f"differs from its manifest entry and is not "
                         f"readable Parquet: {exc}", **base)
    return FileCheck(name, kind, SNAPSHOT_NEWER, "rewritten after the last manifest update "
                     "(the capture did not finish): newer than its hash, reads whole",
                     rows=rows, **base)


def _check_unlisted(directory: Path, name: str, crashed: bool) -> FileCheck:
    kind = schema.file_kind(name)
    path = directory / name
    if name.startswith(schema.TMP_PREFIX):
        return FileCheck(name, None, TEMPORARY, "unfinished file: readers ignore it")
    if kind is None:
        return FileCheck(name, None, OTHER, "not a capture file: dnstrail does not read it")
    try:
        size = os.lstat(path).st_size
        rows = _parquet_rows(path)
    except Exception as exc:  # noqa: BLE001
        return FileCheck(name, kind, EXTRA if not crashed else UNREADABLE,
                         f"not in the manifest and not readable Parquet: {exc}")
    if crashed and kind == schema.SPOOL_KIND:
        return FileCheck(name, kind, UNLISTED, "a spool segment not yet hashed when the "
                         "recorder stopped (the one it was writing, or one that waited for "
                         "CPU to spare): reads up to its last whole record, but no hash vouches "
                         "for it", actual_bytes=size, rows=rows)
    if crashed and kind in schema.EVENT_KINDS:
        return FileCheck(name, kind, UNLISTED, "finished after the last manifest update (the "
                         "capture did not finish): reads whole, but no hash vouches for it",
                         actual_bytes=size, rows=rows)
    return FileCheck(name, kind, EXTRA, "a capture file the manifest does not list: "
                     "readers load it; it was added after the capture", actual_bytes=size,
                     rows=rows)


def _manifest_problems(manifest: Mapping[str, Any], files: list[Any]) -> list[str]:
    problems = []
    names = [f.get("name") for f in files if isinstance(f, dict)]
    if len(names) != len(files):
        problems.append("manifest 'files' holds entries that are not objects")
    dup = sorted({str(n) for n in names if names.count(n) > 1})
    if dup:
        problems.append(f"manifest lists files twice: {', '.join(dup)}")
    counts = manifest.get("counts")
    if isinstance(counts, dict) and manifest.get("status") != "running":
        for kind in schema.EVENT_KINDS:
            listed = sum(f.get("rows") or 0 for f in files if isinstance(f, dict)
                         and isinstance(f.get("rows"), int) and f.get("kind") == kind)
            if isinstance(counts.get(kind), int) and counts[kind] != listed:
                problems.append(f"manifest counts {counts[kind]} {kind} but its files hold "
                                f"{listed}")
    return problems


def verify_capture(directory: str | Path) -> Verification:
    """Verify one capture directory against its manifest (see the module doc).

    Raises ``NoSuchCapture`` / ``NotACaptureDirectory`` when there is nothing to verify; any
    damage found is in the result, never raised.
    """
    d = Path(directory)
    if not d.exists():
        raise NoSuchCapture(f"{d}: no such capture directory")
    if not d.is_dir():
        raise NotACaptureDirectory(f"{d}: not a directory (dnstrail verify checks capture "
                                   "directories; `dnstrail import` turns a pcap into one)")
    mpath = d / schema.MANIFEST_NAME
    try:
        raw = mpath.read_bytes()
    except FileNotFoundError:
        raise NotACaptureDirectory(f"{d}: no {schema.MANIFEST_NAME}: not a dnstrail capture "
                                   "directory") from None
    evidence_id = hashlib.sha256(raw).hexdigest()
    unknown = CaptureEnd("unknown", "unknown: the manifest is unreadable")
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        return Verification(str(d), evidence_id, None, None, None, None, unknown,
                            problems=[f"manifest.json is not valid JSON ({exc}): damaged"])
    if not isinstance(manifest, dict) or manifest.get("format") != "dnstrail-capture":
        return Verification(str(d), evidence_id, None, None, None, None, unknown,
                            problems=["manifest.json is not a dnstrail capture manifest"])
    version = manifest.get("schema_version")
    result = Verification(
        str(d), evidence_id, version if isinstance(version, int) else None,
        manifest.get("source"), manifest.get("host"), manifest.get("status"),
        capture_end(manifest), losses=explain_losses(manifest.get("lost")))
    if not isinstance(version, int) or isinstance(version, bool):
        result.problems.append("manifest schema_version is missing or not an integer")
    elif version > schema.SCHEMA_VERSION:
        result.problems.append(f"capture format version {version} is newer than this dnstrail "
                               f"reads ({schema.SCHEMA_VERSION}): upgrade dnstrail")
    if not isinstance(manifest.get("lost"), dict):
        result.problems.append("manifest has no 'lost' counters")
    files = manifest.get("files")
    if not isinstance(files, list):
        result.problems.append("manifest has no 'files' list")
        files = []
    result.problems.extend(_manifest_problems(manifest, files))
    crashed = manifest.get("status") == "running"
    listed = set()
    for entry in files:
        if isinstance(entry, dict):
            listed.add(entry.get("name"))
            result.files.append(_check_listed(d, entry, crashed))
    for name in sorted(os.listdir(d)):
        if name == schema.MANIFEST_NAME or name in listed:
            continue
        result.files.append(_check_unlisted(d, name, crashed))
    return result


def verify(paths: str | Path | list[str | Path]) -> list[Verification]:
    """``verify_capture`` for each path, in order."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    return [verify_capture(p) for p in items]


def exit_code(results: list[Verification]) -> int:
    """The worst result's exit code (0 only when every capture verified)."""
    return max((r.exit_code for r in results), default=EXIT_VERIFIED)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")


def _shown(value: Any) -> str:
    """Text from a manifest or a file name, safe on a terminal: controls become escapes."""
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", text)


def _human(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def format_text(result: Verification, width: int = 79) -> list[str]:
    """Lines a responder reads (and pastes into a ticket), at most ``width`` columns
    (the evidence id and long file names excepted)."""
    return [wrapped for line in _text_lines(result)
            for wrapped in (textwrap.wrap(line, width, subsequent_indent=" " * (
                len(line) - len(line.lstrip()) + 4), break_on_hyphens=False,
                break_long_words=False) or [line])]


def _text_lines(result: Verification) -> list[str]:
    version = result.schema_version if result.schema_version is not None else "?"
    lines = [f"{_shown(result.path)}: {result.verdict.upper()}",
             f"  evidence id: {result.evidence_id}"]
    lines.append(f"  source: {_shown(result.source or '?')}, host: "
                 f"{_shown(result.host or '?')}, format version {version}")
    lines.append(f"  ended: {_shown(result.end.text)}")
    ok = [f for f in result.files if f.status == OK]
    lines.append(f"  files: {len(ok)} match the manifest (size and sha256)"
                 + (f", {sum(f.actual_bytes or 0 for f in ok):,} bytes" if ok else ""))
    for f in result.files:
        if f.status == OK:
            continue
        mark = "DAMAGED" if f.damaged else "note"
        lines.append(f"  {mark}: {_shown(f.name)}: {f.status}"
                     + (f": {_shown(f.detail)}" if f.detail else ""))
    for p in result.problems:
        lines.append(f"  DAMAGED: {_shown(p)}")
    if result.losses:
        lines.append(f"  lost events: {_human(result.lost_total)}")
        lines.extend(f"    {_shown(loss.cause)} {loss.count:,}: {loss.meaning}"
                     for loss in result.losses)
    else:
        lines.append("  lost events: none counted")
    return lines


__all__ = [
    "DAMAGE",
    "EXIT_ABNORMAL_END",
    "EXIT_DAMAGED",
    "EXIT_LOST",
    "EXIT_VERIFIED",
    "LOST_CAUSES",
    "VERDICTS",
    "CaptureEnd",
    "FileCheck",
    "Loss",
    "NoSuchCapture",
    "NotACaptureDirectory",
    "Verification",
    "VerifyError",
    "capture_end",
    "exit_code",
    "explain_losses",
    "format_text",
    "verify",
    "verify_capture",
]
