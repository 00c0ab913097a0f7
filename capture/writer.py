"""Write a capture directory: event batches to rotating Parquet files, snapshots, manifest.json.

Life cycle of a file: it is written as ``.tmp-<name>``, and when it is complete (rotation by size
or age, or the end of the capture) it is fsynced, hashed, renamed to ``<name>`` and the directory
is fsynced. Only then does it enter manifest.json, which is itself replaced atomically (tmp +
rename) at start, after every finished file, and at the end. A crash or ``kill -9`` therefore
loses at most the files still being written; everything named in the manifest reads back and
matches its SHA-256.

Memory stays bounded however long a capture runs: batches are buffered per kind only up to one
row group (``row_group_bytes``) before being streamed to the open file by a Parquet writer.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import pyarrow as pa
from pyarrow._parquet import ParquetWriter

from capture.errors import CaptureError, DiskFull, OutputNotEmpty
from capture.schema import (
    EVENT_KINDS,
    MANIFEST_KEYS,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    SCHEMAS,
    SNAPSHOT_KINDS,
    SPOOL_KIND,
    TMP_PREFIX,
    FileEntry,
    FormatError,
    event_file_name,
    file_kind,
    read_manifest,
    snapshot_file_name,
    spool_file_name,
)

DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_ROTATE_SECONDS = 60.0
DEFAULT_ROW_GROUP_BYTES = 2 * 1024 * 1024
COMPRESSION = "zstd"
FILE_MODE = 0o600
DIR_MODE = 0o700
#: Lost-event cause the writer itself can add: rows of a file that could not be finished
#: because the disk was full.
LOST_DISK_FULL = "disk_full"
#: Space kept aside for the last manifest and snapshots of a capture that fills its disk.
RESERVE_BYTES = (256 * 1024, 64 * 1024)
RESERVE_NAME = TMP_PREFIX + "reserve"

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_EVENT_NAME = re.compile(r"^(?:" + re.escape(TMP_PREFIX) + r")?([a-z]+)-(\d+)\.parquet$")


def utc_iso(ns: int | None = None) -> str:
    """ISO 8601 UTC text of a wall-clock time in ns (now when None)."""
    if ns is None:
        ns = time.time_ns()
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="microseconds")


def _is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: str | Path, directory: bool = False) -> None:
    """fsync a file (or, with ``directory``, a directory's entries) by path."""
    _fsync_path(Path(path), directory)


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file, hex: the one hash of the capture format."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest_file(directory: str | Path, manifest: Mapping[str, Any],
                        indent: int = 1) -> None:
    """Write manifest.json atomically: temporary file (mode 0600), fsync, rename, fsync the
    directory. The one way a capture's manifest reaches the disk (recorder and importer)."""
    directory = Path(directory)
    text = json.dumps(manifest, indent=indent, default=str) + "\n"
    tmp = directory / (TMP_PREFIX + MANIFEST_NAME)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        view = memoryview(text.encode())
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, directory / MANIFEST_NAME)
    _fsync_path(directory, directory=True)


def _create_private(path: Path) -> None:
    """Create (or truncate a leftover) file with mode 0600 before pyarrow opens it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    os.close(fd)


def _parquet_writer(sink: Any, schema: pa.Schema, **options: Any) -> Any:
    """A Parquet file writer on an open sink (a pa.OSFile).

    This is the class ``pyarrow.parquet.ParquetWriter`` wraps, with the wrapper's defaults.
    The wrapper is not used because importing ``pyarrow.parquet`` loads ``pyarrow.fs`` and
    with it the S3, GCS, Azure and HDFS libraries: ~13 MB resident for the life of a
    recording that never leaves the local disk."""
    return ParquetWriter(sink, schema, version="2.6", data_page_version="1.0",
                         writer_engine_version="V2", use_compliant_nested_type=True,
                         store_schema=True, **options)


def _write_parquet(table: pa.Table, path: Path) -> None:
    """``pq.write_table(table, path, compression=COMPRESSION)``, without pyarrow.parquet."""
    with pa.OSFile(str(path), "wb") as sink:
        writer = _parquet_writer(sink, table.schema, compression=COMPRESSION)
        writer.write_table(table, row_group_size=max(1, table.num_rows))
        writer.close()


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """ParquetWriter options for event files: dictionary pages only for string and dictionary
    columns (comm, addresses, syscall...: few distinct values), plain pages for the rest, where
    zstd does better alone (payloads differ in their transaction id); min/max statistics only
    for the fixed-width columns (ts, seq, pids, ports...), none for payloads and strings.
    Measured on 600k recorded messages (2 MB row groups): 0.47 instead of 0.69 us of CPU per
    row, 8.9 instead of 10.6 MB of file. Readers see the same Arrow schema (ARROW:schema)."""
    def textual(t: pa.DataType) -> bool:
        return pa.types.is_string(t) or pa.types.is_dictionary(t)

    # Times and sequence numbers grow by small steps: delta encoding (7.7 instead of 8.9 MB
    # for the same 600k messages, CPU the same within noise).
    delta = {f.name: "DELTA_BINARY_PACKED" for f in schema if f.name in ("ts", "mono_ns", "seq")
             and (pa.types.is_integer(f.type) or pa.types.is_timestamp(f.type))}
    return {
        "compression": COMPRESSION,
        "use_dictionary": [f.name for f in schema if textual(f.type)],
        "write_statistics": [f.name for f in schema
                             if not (textual(f.type) or pa.types.is_binary(f.type))],
        "column_encoding": delta,
    }


def conform_batch(batch: pa.RecordBatch, kind: str) -> pa.RecordBatch:
    """The batch with exactly the columns and types of the kind's schema (field docs included)."""
    schema = SCHEMAS[kind]
    if batch.schema.equals(schema, check_metadata=False):
        return pa.RecordBatch.from_arrays(batch.columns, schema=schema)
    columns = []
    for fld in schema:
        idx = batch.schema.get_field_index(fld.name)
        if idx >= 0:
            col = batch.column(idx)
            if col.type != fld.type:
                col = col.cast(fld.type)
            columns.append(col)
        elif fld.nullable or fld.name == "seq":
            columns.append(pa.nulls(batch.num_rows, fld.type))
        else:
            raise CaptureError(f"{kind} batch lacks required column {fld.name!r}")
    return pa.RecordBatch.from_arrays(columns, schema=schema)


@dataclass
class _OpenFile:
    kind: str
    index: int
    name: str
    tmp_path: Path
    sink: Any  # pa.OSFile
    writer: Any  # pyarrow._parquet.ParquetWriter
    opened_at: float
    rows: int = 0
    pending: list[pa.RecordBatch] = field(default_factory=list)
    pending_bytes: int = 0
    #: Bytes in the file after the last row group the flusher wrote.
    written: int = 0
    #: Arrow bytes handed to the flusher (main thread) and written by it (flusher thread).
    submitted: int = 0
    completed: int = 0


class _Flusher:
    """One background thread that writes row groups, so that compression (which releases the
    GIL) overlaps the recorder's polling instead of stalling it. At most ``depth`` row groups
    wait, which keeps memory bounded. The first error is sticky: later jobs are skipped and
    every wait() raises it again."""

    def __init__(self, depth: int = 2) -> None:
        self._q: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dnstrail-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._q.get()
            try:
                if job is None:
                    return
                if self.error is None:
                    job()
            except BaseException as exc:  # noqa: BLE001  (handed to the caller in wait())
                self.error = exc
            finally:
                self._q.task_done()

    def submit(self, job: Callable[[], None]) -> None:
        self.check()
        self._q.put(job)

    def wait(self) -> None:
        """Block until every submitted row group is written; raise a writing error."""
        self._q.join()
        self.check()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._q.join()
        self._q.put(None)
        self._thread.join(timeout=60)


@dataclass
class WriterStats:
    """Progress figures for a status line."""

    rows: dict[str, int]
    bytes: int
    files: int


class CaptureWriter:
    """Writes one capture directory. Use as a context manager or call start() and close().

    ``info`` fills the descriptive manifest keys (source, host, kernel, boot_time_ns,
    command_line, filters); ``snapshot_provider`` is called after every rotation and at close
    and returns snapshot tables (kind -> table) to (re)write, so a crash keeps recent ones.
    """

    def __init__(
        self,
        directory: str | Path,
        append: bool = False,
        *,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        rotate_seconds: float = DEFAULT_ROTATE_SECONDS,
        row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
        info: Mapping[str, Any] | None = None,
        snapshot_provider: Callable[[], Mapping[str, pa.Table]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_file_bytes <= 0:
            raise ValueError("max_file_bytes must be positive")
        if rotate_seconds <= 0:
            raise ValueError("rotate_seconds must be positive")
        self.directory = Path(directory)
        self.append = append
        self.max_file_bytes = max_file_bytes
        self.rotate_seconds = rotate_seconds
        self.row_group_bytes = max(1, min(row_group_bytes, max_file_bytes))
        self.snapshot_provider = snapshot_provider
        self._clock = clock
        self._open: dict[str, _OpenFile] = {}
        self._next_index: dict[str, int] = {k: 1 for k in EVENT_KINDS}
        self._files: list[FileEntry] = []
        self._prev_counts: dict[str, int] = {k: 0 for k in EVENT_KINDS}
        self._prev_lost: dict[str, int] = {}
        self._prev_snapshots: dict[str, pa.Table] = {}
        self._seq: dict[str, int] = {k: 0 for k in EVENT_KINDS}
        self._written_rows: dict[str, int] = {k: 0 for k in EVENT_KINDS}
        self._lost: dict[str, int] = {LOST_DISK_FULL: 0}
        self._started = False
        self._closed = False
        self._flusher: _Flusher | None = None
        self.status = "new"
        self.manifest: dict[str, Any] = {
            "format": "dnstrail-capture",
            "schema_version": SCHEMA_VERSION,
            "dnstrail_version": _dnstrail_version(),
            "source": "ebpf",
            "host": socket.gethostname(),
            "kernel": os.uname().release,
            "boot_time_ns": None,
            "started_at": None,
            "stopped_at": None,
            "status": "running",
            "error": None,
            "command_line": [],
            "filters": {},
            "lost": {},
            "counts": {},
            "files": [],
            "priority_log": [],
            "spool_open": None,
        }
        if info:
            self.update_info(info)

    # -- set-up ---------------------------------------------------------------------------

    def update_info(self, info: Mapping[str, Any]) -> None:
        """Set descriptive manifest keys; written with the next manifest update."""
        managed = {"format", "schema_version", "status", "files", "counts", "lost",
                   "stopped_at", "error", "spool_open"}
        for key, value in info.items():
            if key not in MANIFEST_KEYS:
                raise ValueError(f"unknown manifest key {key!r}")
            if key in managed:
                raise ValueError(f"manifest key {key!r} is kept by the writer")
            self.manifest[key] = value

    def start(self) -> Self:
        """Check and prepare the directory, then write the 'running' manifest."""
        if self._started:
            return self
        self._prepare_directory()
        if self.manifest["started_at"] is None:
            self.manifest["started_at"] = utc_iso()
        self._started = True
        self._flusher = _Flusher()
        self.status = "running"
        self._guarded(self._write_manifest)
        self._reserve_space()
        return self

    def _reserve_space(self) -> None:
        """Set RESERVE_BYTES (the first size that fits) aside in a ``.tmp-`` file (readers
        ignore it). The spool writes until the disk is full to the last block; deleting this
        file on a full disk (``_disk_full`` deletes every ``.tmp-`` file) leaves room for the
        final manifest."""
        path = self.directory / RESERVE_NAME
        for size in RESERVE_BYTES:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
                try:
                    os.posix_fallocate(fd, 0, size)
                finally:
                    os.close(fd)
                return
            except OSError:  # no room for that: try less, or go without
                path.unlink(missing_ok=True)

    def _release_space(self) -> None:
        try:
            (self.directory / RESERVE_NAME).unlink(missing_ok=True)
        except OSError:
            pass  # a .tmp- file: readers ignore it

    def _prepare_directory(self) -> None:
        d = self.directory
        if d.exists() and not d.is_dir():
            raise CaptureError(f"{d} exists and is not a directory")
        entries = sorted(os.listdir(d)) if d.exists() else []
        if entries and not self.append:
            raise OutputNotEmpty(
                f"output directory {d} is not empty: choose a new directory or pass "
                "--append to continue that capture"
            )
        if entries:
            self._load_previous(entries)
        try:
            d.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            os.chmod(d, DIR_MODE)
        except OSError as exc:
            if _is_disk_full(exc):
                raise DiskFull(f"disk full creating {d}: {exc.strerror}") from exc
            raise

    def _load_previous(self, entries: list[str]) -> None:
        try:
            previous = read_manifest(self.directory)
        except FormatError as exc:
            raise CaptureError(f"cannot append to {self.directory}: {exc}") from None
        if previous.get("source") not in (None, "ebpf"):
            raise CaptureError(
                f"cannot append to {self.directory}: it holds a "
                f"{previous.get('source')!r} capture, not a recording"
            )
        for raw in previous.get("files") or []:
            try:
                entry = FileEntry(
                    name=str(raw["name"]), kind=str(raw["kind"]), rows=int(raw["rows"]),
                    bytes=int(raw["bytes"]), sha256=str(raw["sha256"]),
                )
            except (KeyError, TypeError, ValueError):
                raise CaptureError(
                    f"cannot append to {self.directory}: damaged files list in manifest.json"
                ) from None
            if entry.kind in SNAPSHOT_KINDS:
                continue  # rewritten from _prev_snapshots with the new rows added
            self._files.append(entry)
        for kind, n in (previous.get("counts") or {}).items():
            if kind in self._prev_counts and isinstance(n, int):
                self._prev_counts[kind] = n
                self._seq[kind] = n
        for cause, n in (previous.get("lost") or {}).items():
            if isinstance(n, int):
                self._prev_lost[str(cause)] = n
        self.manifest["started_at"] = previous.get("started_at")
        # Continue numbering after every event file present, finished or left behind by a crash.
        names = set(entries) | {e.name for e in self._files}
        for name in names:
            m = _EVENT_NAME.match(name)
            if m and m.group(1) in EVENT_KINDS:
                kind, idx = m.group(1), int(m.group(2))
                self._next_index[kind] = max(self._next_index[kind], idx + 1)
            elif file_kind(name) == SPOOL_KIND:
                idx = int(name.split("-", 1)[1].split(".", 1)[0])
                self._next_index[SPOOL_KIND] = max(self._next_index.get(SPOOL_KIND, 1), idx + 1)
        for kind in SNAPSHOT_KINDS:
            path = self.directory / snapshot_file_name(kind)
            if path.exists():
                try:
                    import pyarrow.parquet as pq  # only --append reads Parquet

                    # ParquetFile.read: pq.read_table imports pandas (for its metadata)
                    table = pq.ParquetFile(path).read()
                    from capture.schema import conform

                    self._prev_snapshots[kind] = conform(table, kind)
                except (OSError, pa.ArrowException, FormatError) as exc:
                    raise CaptureError(f"cannot append: unreadable {path}: {exc}") from None

    # -- events ---------------------------------------------------------------------------

    def write(self, kind: str, data: pa.RecordBatch | pa.Table) -> None:
        """Append events of one kind. ``seq`` is assigned here, in order of arrival."""
        self._check_running()
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        batches: Iterable[pa.RecordBatch] = (
            data.to_batches() if isinstance(data, pa.Table) else (data,)
        )
        for batch in batches:
            if batch.num_rows == 0:
                continue
            batch = conform_batch(batch, kind)
            start = self._seq[kind]
            seq = pa.Array.from_buffers(pa.uint64(), batch.num_rows, [None, pa.py_buffer(
                np.arange(start, start + batch.num_rows, dtype=np.uint64))])
            self._seq[kind] = start + batch.num_rows
            seq_idx = batch.schema.get_field_index("seq")
            cols = list(batch.columns)
            cols[seq_idx] = seq
            batch = pa.RecordBatch.from_arrays(cols, schema=batch.schema)
            self._guarded(self._append, kind, batch)

    def _append(self, kind: str, batch: pa.RecordBatch) -> None:
        of = self._open.get(kind)
        if of is None:
            of = self._open_file(kind)
        of.pending.append(batch)
        of.pending_bytes += batch.nbytes
        of.rows += batch.num_rows
        self._written_rows[kind] += batch.num_rows
        if of.pending_bytes >= self.row_group_bytes:
            self._flush(of)
            if of.written + (of.submitted - of.completed) >= self.max_file_bytes:
                # Near the limit (row groups in flight count at their uncompressed size):
                # wait for the exact size before deciding.
                assert self._flusher is not None
                self._flusher.wait()
            if of.written >= self.max_file_bytes:
                self._finish(of)

    def tick(self) -> None:
        """Rotate files older than rotate_seconds. Call this regularly, also when idle."""
        self._check_running()
        now = self._clock()
        due = [of for of in self._open.values() if now - of.opened_at >= self.rotate_seconds]
        for of in due:
            self._guarded(self._finish_quiet, of)
        if due:
            self._guarded(self._after_rotation)

    def rotate(self) -> None:
        """Finish every open file now."""
        self._check_running()
        opened = list(self._open.values())
        for of in opened:
            self._guarded(self._finish_quiet, of)
        if opened:
            self._guarded(self._after_rotation)

    def _open_file(self, kind: str) -> _OpenFile:
        index = self._next_index[kind]
        self._next_index[kind] = index + 1
        name = event_file_name(kind, index)
        tmp = self.directory / (TMP_PREFIX + name)
        _create_private(tmp)
        sink = pa.OSFile(str(tmp), "wb")
        writer = _parquet_writer(sink, SCHEMAS[kind], **parquet_options(SCHEMAS[kind]))
        of = _OpenFile(kind, index, name, tmp, sink, writer, self._clock())
        self._open[kind] = of
        return of

    def _flush(self, of: _OpenFile) -> None:
        """Hand the pending batches to the flusher as one row group."""
        if of.pending:
            table = pa.Table.from_batches(of.pending, schema=SCHEMAS[of.kind])
            of.pending = []
            of.pending_bytes = 0

            size = table.nbytes
            of.submitted += size

            def job() -> None:
                of.writer.write_table(table, row_group_size=max(1, table.num_rows))
                of.written = of.sink.tell()
                of.completed += size

            assert self._flusher is not None
            self._flusher.submit(job)

    def _drain(self, of: _OpenFile) -> None:
        self._flush(of)
        assert self._flusher is not None
        self._flusher.wait()

    def _finish(self, of: _OpenFile) -> None:
        self._drain(of)
        of.writer.close()
        of.sink.close()
        del self._open[of.kind]
        entry = self._commit(of.tmp_path, of.name, of.kind, of.rows)
        self._files.append(entry)
        self._after_rotation()

    def _commit(self, tmp: Path, name: str, kind: str, rows: int) -> FileEntry:
        """fsync, hash and rename a written tmp file into place."""
        _fsync_path(tmp)
        digest = sha256_file(tmp)
        size = tmp.stat().st_size
        os.rename(tmp, self.directory / name)
        _fsync_path(self.directory, directory=True)
        return FileEntry(name=name, kind=kind, rows=rows, bytes=size, sha256=digest)

    def _after_rotation(self) -> None:
        if self.snapshot_provider is not None:
            for kind, table in self.snapshot_provider().items():
                self._write_snapshot(kind, table)
        self._write_manifest()

    # -- spool segments (capture.spool) ----------------------------------------------------

    def spool_create(self, header: bytes) -> tuple[int, Path]:
        """Create the next spool segment with ``header``; return its fd (append-only) and
        path. Safe from the spool's drain thread (no manifest write: the segment is found by
        its name, and listed once closed); ``spool_open`` names the newest one created."""
        index = self._next_index.setdefault(SPOOL_KIND, 1)
        self._next_index[SPOOL_KIND] = index + 1
        path = self.directory / spool_file_name(index)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                     FILE_MODE)
        try:
            os.write(fd, header)
        except BaseException:
            os.close(fd)
            raise
        self.manifest["spool_open"] = path.name  # written with the next manifest
        return fd, path

    def spool_closed(self, fd: int, path: Path, messages: int, listed: bool = True) -> None:
        """The segment at ``path`` is complete (its fd is closed here). With ``listed`` it
        enters the manifest with its hash (kind spool) until ``spool_converted``."""
        os.close(fd)
        if self.manifest.get("spool_open") == path.name:
            self.manifest["spool_open"] = None
        if listed:
            def commit() -> None:
                digest = sha256_file(path)
                size = path.stat().st_size
                self._files.append(FileEntry(name=path.name, kind=SPOOL_KIND, rows=messages,
                                             bytes=size, sha256=digest))
                self._write_manifest()

            self._guarded(commit)

    def spool_converted(self, path: Path) -> None:
        """Every row of the segment at ``path`` is in finished messages files: commit the open
        messages file, drop the segment from the manifest, then delete it."""
        self._check_running()
        of = self._open.get("messages")
        if of is not None:
            self._guarded(self._finish, of)  # writes the manifest
        self._files = [f for f in self._files if f.name != path.name]
        self._guarded(self._write_manifest)
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    @property
    def next_seq(self) -> dict[str, int]:
        """The seq the next row of each kind will get."""
        return dict(self._seq)

    # -- snapshots ------------------------------------------------------------------------

    def write_snapshot(self, kind: str, table: pa.Table) -> None:
        """Replace ``<kind>.parquet`` (processes, cgroups, pods) atomically."""
        self._check_running()
        self._guarded(self._write_snapshot, kind, table)
        self._guarded(self._write_manifest)

    def _write_snapshot(self, kind: str, table: pa.Table) -> None:
        if kind not in SNAPSHOT_KINDS:
            raise ValueError(f"unknown snapshot kind {kind!r}")
        schema = SCHEMAS[kind]
        table = pa.Table.from_batches(
            [conform_batch(b, kind) for b in table.to_batches()], schema=schema
        )
        previous = self._prev_snapshots.get(kind)
        if previous is not None and previous.num_rows:
            table = pa.concat_tables([previous.cast(schema), table])
            if kind != "processes":
                table = _distinct(table)
        name = snapshot_file_name(kind)
        tmp = self.directory / (TMP_PREFIX + name)
        _create_private(tmp)
        _write_parquet(table, tmp)
        entry = self._commit(tmp, name, kind, table.num_rows)
        self._files = [f for f in self._files if f.name != name] + [entry]

    # -- manifest and end -----------------------------------------------------------------

    def set_lost(self, lost: Mapping[str, int]) -> None:
        """Cumulative lost-event counters by cause (from the probe); written with the manifest."""
        for cause, n in lost.items():
            self._lost[str(cause)] = int(n)
        self._lost.setdefault(LOST_DISK_FULL, 0)

    def lost(self) -> dict[str, int]:
        merged = dict(self._prev_lost)
        for cause, n in self._lost.items():
            merged[cause] = merged.get(cause, 0) + n
        return merged

    def counts(self) -> dict[str, int]:
        """Rows in finished event files by kind (what the manifest lists)."""
        counts = {k: 0 for k in EVENT_KINDS}
        for f in self._files:
            if f.kind in counts:
                counts[f.kind] += f.rows
        return counts

    def stats(self) -> WriterStats:
        """Rows accepted so far (including files still open) and bytes on disk."""
        open_bytes = 0
        for of in self._open.values():
            open_bytes += of.written
        rows = {k: self._prev_counts[k] + self._written_rows[k] for k in EVENT_KINDS}
        return WriterStats(
            rows=rows,
            bytes=sum(f.bytes for f in self._files) + open_bytes,
            files=len(self._files),
        )

    @property
    def started(self) -> bool:
        return self._started

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def files(self) -> list[FileEntry]:
        return list(self._files)

    def close(self, status: str = "complete", error: str | None = None) -> None:
        """Finish open files, write final snapshots and the final manifest.

        With status 'failed' open files are still finished (their rows are good), and the
        error is recorded. Raises DiskFull if the disk fills while finishing.
        """
        if self._closed:
            return
        if status not in ("complete", "failed"):
            raise ValueError(f"bad final status {status!r}")
        if not self._started:
            self.start()
        self._release_space()
        try:
            if self._flusher is not None and self._flusher.error is not None:
                # A row group failed to write: those files are damaged; do not list them.
                self._abort_open()
            for of in list(self._open.values()):
                self._guarded(self._finish_quiet, of)
            if self.snapshot_provider is not None:
                for kind, table in self.snapshot_provider().items():
                    self._guarded(self._write_snapshot, kind, table)
            # Every event kind has at least one file, so readers always find the schema.
            present = {f.kind for f in self._files}
            for kind in EVENT_KINDS:
                if kind not in present:
                    self._guarded(self._write_empty, kind)
            self.status = status
            self.manifest["error"] = error
            self.manifest["stopped_at"] = utc_iso()
            self._guarded(self._write_manifest)
        finally:
            self._closed = True
            self._stop_flusher()

    def _stop_flusher(self) -> None:
        if self._flusher is not None:
            self._flusher.stop()
            self._flusher = None

    def _finish_quiet(self, of: _OpenFile) -> None:
        self._drain(of)
        of.writer.close()
        of.sink.close()
        del self._open[of.kind]
        self._files.append(self._commit(of.tmp_path, of.name, of.kind, of.rows))

    def _write_empty(self, kind: str) -> None:
        index = self._next_index[kind]
        self._next_index[kind] = index + 1
        name = event_file_name(kind, index)
        tmp = self.directory / (TMP_PREFIX + name)
        _create_private(tmp)
        _write_parquet(SCHEMAS[kind].empty_table(), tmp)
        self._files.append(self._commit(tmp, name, kind, 0))

    def _manifest_dict(self) -> dict[str, Any]:
        m = dict(self.manifest)
        m["status"] = self.status if self.status in ("complete", "failed") else "running"
        m["lost"] = self.lost()
        m["counts"] = self.counts()
        m["files"] = [asdict(f) for f in self._files]
        assert set(m) == set(MANIFEST_KEYS), set(m) ^ set(MANIFEST_KEYS)
        return {k: m[k] for k in MANIFEST_KEYS}

    def _write_manifest(self) -> None:
        write_manifest_file(self.directory, self._manifest_dict(), indent=1)

    # -- faults ---------------------------------------------------------------------------

    def _abort_open(self) -> int:
        """Discard every open file (its rows are lost); return how many rows that was."""
        if self._flusher is not None:
            self._flusher._q.join()  # let queued jobs finish or skip; errors stay recorded
        dropped = 0
        for of in list(self._open.values()):
            dropped += of.rows
            for closer in (of.writer.close, of.sink.close):
                try:
                    closer()
                except (OSError, pa.ArrowException):
                    pass  # the file is being discarded; its rows are counted as lost
            try:
                of.tmp_path.unlink()
            except OSError:
                pass  # left as a .tmp- file, which readers ignore
        self._open.clear()
        return dropped

    def _check_running(self) -> None:
        if not self._started:
            raise RuntimeError("CaptureWriter.start() was not called")
        if self._closed:
            raise RuntimeError("CaptureWriter is closed")

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except OSError as exc:
            if not _is_disk_full(exc):
                raise
            self._disk_full(exc)

    def disk_full(self, exc: OSError, lost: int = 0) -> None:
        """A write of another part of the capture (the spool) failed: re-raise ``exc``, or,
        when the disk is full, stop the capture as the writer's own writes do (DiskFull),
        with ``lost`` more events counted as lost for it."""
        if not _is_disk_full(exc):
            raise exc
        self._lost[LOST_DISK_FULL] = self._lost.get(LOST_DISK_FULL, 0) + lost
        self._disk_full(exc)

    def _disk_full(self, exc: OSError) -> None:
        """Stop: drop unfinished files, try to record the failure, raise DiskFull."""
        dropped = self._abort_open()
        self._stop_flusher()
        for name in os.listdir(self.directory):
            if name.startswith(TMP_PREFIX):
                try:
                    os.unlink(self.directory / name)
                except OSError:
                    pass
        self._lost[LOST_DISK_FULL] = self._lost.get(LOST_DISK_FULL, 0) + dropped
        reason = f"disk full writing {self.directory}: {exc.strerror or exc}"
        self.status = "failed"
        self.manifest["error"] = reason
        self.manifest["stopped_at"] = utc_iso()
        recorded = True
        try:
            self._write_manifest()
        except OSError:
            recorded = False
        self._closed = True
        kept = len(self._files)
        raise DiskFull(
            f"{reason}; capture stopped, {kept} finished file(s) kept"
            + (" and listed in manifest.json" if recorded else
               " (manifest.json could not be updated)")
            + (f", {dropped} unwritten event(s) lost" if dropped else "")
        ) from exc

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._closed:
            return
        if exc is None or isinstance(exc, KeyboardInterrupt):
            self.close("complete")
        else:
            self.close("failed", error=str(exc).splitlines()[0] if str(exc) else repr(exc))


def _distinct(table: pa.Table) -> pa.Table:
    """Rows of a small snapshot table without exact duplicates, first occurrence kept."""
    # timestamps as int ns: the as_py() of a ns timestamp is a pandas.Timestamp
    columns = [(c.cast(pa.int64()) if pa.types.is_timestamp(c.type) else c).to_pylist()
               for n, c in zip(table.column_names, table.columns) if n != "resolved_at"]
    seen: set[tuple[Any, ...]] = set()
    keep: list[int] = []
    for i, key in enumerate(zip(*columns)):
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return table.take(pa.Array.from_buffers(pa.int64(), len(keep), [
        None, pa.py_buffer(np.array(keep, dtype=np.int64))]))


def _dnstrail_version() -> str:
    try:
        from dnstrail import __version__

        return str(__version__)
    except ImportError:
        return "unknown"
