"""The spool: the recorder's cheap path from the BPF ring buffer to disk, and its reader.

While recording, every poll hands the ring to a small compiled routine (``capture/_spool.c``,
built by ``pip install``, called through ctypes without the GIL) that appends the committed
message records, cut to their header and captured payload, to a spool segment file in large
sequential writes, and only then frees them in the ring. Connect and exec records (rare) come
back in a side buffer and are parsed at once. Turning spooled records into Parquet rows is the
expensive part (~0.6 us a message); the recorder does it when the node has CPU to spare, or after
the capture, never in the way of the ring (see ``capture.recorder``).

A segment file (``spool-NNNNNN.spool``, documented in docs/format.md) is a 48-byte header then
records: u32 content length, u32 zero, the content (a ring record: the fixed header of
``capture.probe``'s ``_MSG_DTYPE`` and the payload), zero padding to 8 bytes. A closed segment
enters the manifest with its SHA-256 (kind ``spool``) until its rows are in a finished Parquet
file; the segment being written is named in the manifest's ``spool_open``. A recorder killed with
``kill -9`` leaves both readable: ``read_segment`` stops at the last whole record.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from capture.errors import CaptureError

__all__ = [
    "SPOOL_MAGIC", "SpoolDamaged", "SpoolHeader", "SpoolUnavailable", "available",
    "read_header", "read_segment", "segment_name",
]

SPOOL_MAGIC = b"DTSPOOL1"
SPOOL_VERSION = 1
#: magic, version, message header size, snaplen, boot_time_ns, first_seq, reserved
_HEADER = struct.Struct("<8sIIIxxxxqQ8x")
HEADER_BYTES = _HEADER.size
assert HEADER_BYTES == 48
_RECORD_HDR = 8
#: Records a read_segment batch holds at most (the ring reader's chunk).
READ_RECORDS = 16384
#: Bytes read from a segment at a time.
READ_BYTES = 8 * 1024 * 1024
SUFFIX = ".spool"


class SpoolUnavailable(CaptureError):
    """The compiled spool routine is missing (the package was not installed with pip)."""


class SpoolDamaged(CaptureError):
    """A spool segment's header is not one this version writes."""


def segment_name(index: int) -> str:
    return f"spool-{index:06d}{SUFFIX}"


class _Drain(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "records", "messages", "spool_bytes", "side_bytes", "ring_bytes", "payload_bytes")] + [
        ("error", ctypes.c_int64)]


_LIB: Any = None


def _library_path() -> Path | None:
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_spool{suffix}"
        if path.exists():
            return path
    return None


def _lib() -> Any:
    global _LIB
    if _LIB is not None:
        return _LIB
    path = _library_path()
    if path is None:
        raise SpoolUnavailable(
            "the recorder's compiled spool routine (capture/_spool.c) is not built: install "
            "dnstrail with pip (deploy/setup.sh does), which compiles it")
    source = path.parent / "_spool.c"
    if source.exists() and source.stat().st_mtime > path.stat().st_mtime:
        raise SpoolUnavailable(
            f"{path.name} is older than capture/_spool.c: rebuild it with "
            "`.venv/bin/pip install -e .`")
    lib = ctypes.CDLL(str(path))
    u64, p = ctypes.c_uint64, ctypes.c_void_p
    lib.dnstrail_spool_drain.argtypes = [p, u64, p, p, ctypes.c_int, p, u64, p, u64,
                                         ctypes.c_uint32, ctypes.c_uint32, u64,
                                         ctypes.POINTER(_Drain)]
    lib.dnstrail_spool_drain.restype = ctypes.c_int
    lib.dnstrail_spool_index.argtypes = [p, u64, p, p, u64, ctypes.POINTER(u64)]
    lib.dnstrail_spool_index.restype = u64
    lib.dnstrail_ring_pending.argtypes = [p, u64, p, p]
    lib.dnstrail_ring_pending.restype = u64
    _LIB = lib
    return lib


def available() -> bool:
    try:
        _lib()
    except (SpoolUnavailable, OSError):
        return False
    return True


@dataclass(frozen=True)
class SpoolHeader:
    msg_hdr: int
    snaplen: int
    boot_time_ns: int
    first_seq: int

    def pack(self) -> bytes:
        return _HEADER.pack(SPOOL_MAGIC, SPOOL_VERSION, self.msg_hdr, self.snaplen,
                            self.boot_time_ns, self.first_seq)


def read_header(path: str | Path) -> SpoolHeader:
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise SpoolDamaged(f"{Path(path).name}: {len(raw)}-byte spool header, expected "
                           f"{HEADER_BYTES}")
    magic, version, msg_hdr, snaplen, boot, first = _HEADER.unpack(raw)
    if magic != SPOOL_MAGIC or version != SPOOL_VERSION:
        raise SpoolDamaged(f"{Path(path).name}: not a dnstrail spool segment (version "
                           f"{SPOOL_VERSION})")
    if not 0 < msg_hdr <= 4096 or not 0 < snaplen <= 8192:
        raise SpoolDamaged(f"{Path(path).name}: implausible spool header")
    return SpoolHeader(msg_hdr, snaplen, boot, first)


def _index(buf: np.ndarray, n: int, limit: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Content offsets and lengths of the whole records in buf[:n] (at most limit)."""
    starts = np.empty(limit, dtype=np.int64)
    lens = np.empty(limit, dtype=np.int64)
    used = ctypes.c_uint64(0)
    k = _lib().dnstrail_spool_index(buf.ctypes.data, n, starts.ctypes.data, lens.ctypes.data,
                                    limit, ctypes.byref(used))
    return starts[:k], lens[:k], int(used.value)


def _pow2_at_least(n: int) -> int:
    return 1 << max(12, (n - 1).bit_length())


def _parser(header: SpoolHeader) -> Any:
    from capture.probe import Probe, ProbeConfig

    parser = Probe(ProbeConfig(snaplen=header.snaplen))
    parser.boot_time_ns = header.boot_time_ns
    return parser


def read_segment(path: str | Path, parser: Any = None,
                 read_bytes: int = READ_BYTES) -> Iterator[dict[str, list[pa.RecordBatch]]]:
    """Parse a spool segment into batches ({"messages": [...], ...}, the probe's shapes) of
    at most READ_RECORDS records, in file order. A partial record at the end (a killed
    recorder's last write) is left out. ``parser``: a capture.probe.Probe to parse with
    (its counters and seq numbers carry on); default a fresh one for this segment."""
    header = read_header(path)
    parser = parser if parser is not None else _parser(header)
    chunk = max(read_bytes, 1 << 16)
    size = _pow2_at_least(chunk + 4096)
    buf = np.zeros(mmap.PAGESIZE + size, dtype=np.uint8)
    data = buf[mmap.PAGESIZE:]
    with open(path, "rb", buffering=0) as f:
        f.seek(HEADER_BYTES)
        have = 0
        while True:
            got = f.readinto(data.data[have:chunk])
            have += got or 0
            if have == 0:
                return
            starts, lens, used = _index(data, have, READ_RECORDS)
            if used == 0:
                if got:
                    continue  # a record longer than what we have: read more
                return  # a partial record at the end
            yield parser.parse_records(buf, starts, lens)
            rest = have - used
            data[:rest] = data[used:have].copy()
            data[rest:have] = 0
            have = rest


class SpoolSink:
    """Drains a probe's rings into spool segments (the recorder's hot path).

    ``open_segment`` / ``close_segment`` are called by the recorder around the file's life;
    ``drain`` moves what the rings hold into the open segment and returns the side records
    parsed (connects, execs) and the number of messages spooled."""

    def __init__(self, probe: Any, snaplen: int, msg_hdr: int,
                 stage_bytes: int = 1 << 20, side_bytes: int = 1 << 20,
                 parser: Any = None) -> None:
        self._lib = _lib()
        self.probe = probe
        self.parser = parser if parser is not None else probe
        self.snaplen = snaplen
        self.msg_hdr = msg_hdr
        self._stage = np.zeros(stage_bytes, dtype=np.uint8)
        self._side = np.zeros(mmap.PAGESIZE + _pow2_at_least(side_bytes + 4096), dtype=np.uint8)
        self._side_cap = side_bytes
        self._rings = probe.ring_addresses()
        self.fd: int | None = None
        self.messages = 0
        self.payload_bytes = 0
        self.spool_bytes = 0

    def pending_records(self) -> int:
        """Committed records still in the rings (left behind when the capture must stop)."""
        return int(sum(self._lib.dnstrail_ring_pending(*ring) for ring in self._rings))

    def drain(self, max_records: int = 1 << 20) -> tuple[dict[str, list[pa.RecordBatch]], int]:
        """Spool what the rings hold (up to max_records records per ring). Returns the side
        batches and the messages spooled. Raises OSError (the errno of a failed write) with
        the unwritten records left in the ring."""
        if self.fd is None:
            raise RuntimeError("no open spool segment")
        out: dict[str, list[pa.RecordBatch]] = {"messages": [], "connects": [], "execs": []}
        res = _Drain()
        side = self._side[mmap.PAGESIZE:]
        spooled = 0
        for i, (data, mask, cons, prod) in enumerate(self._rings):
            while True:
                rc = self._lib.dnstrail_spool_drain(
                    data, mask, cons, prod, self.fd, self._stage.ctypes.data, len(self._stage),
                    side.ctypes.data, self._side_cap, self.msg_hdr, self.snaplen, max_records,
                    ctypes.byref(res))
                if rc != 0:
                    break  # a producer position out of range: leave the ring alone
                spooled += res.messages
                self.messages += res.messages
                self.payload_bytes += res.payload_bytes
                self.spool_bytes += res.spool_bytes
                self.probe.count_drained(res.ring_bytes, res.messages, res.payload_bytes,
                                         res.records - res.messages, res.records if i else 0)
                if res.side_bytes:
                    starts, lens, _ = _index(side, res.side_bytes, 1 << 16)
                    for kind, batches in self.parser.parse_records(self._side, starts,
                                                                   lens).items():
                        out[kind].extend(batches)
                    side[:res.side_bytes] = 0
                if res.error:
                    raise OSError(int(res.error), os.strerror(int(res.error)))
                # the side buffer filled up: go on; otherwise the ring is drained (or capped)
                if res.side_bytes + 4096 < self._side_cap or res.records == 0:
                    break
        return out, spooled


@dataclass
class _Segment:
    fd: int
    path: Path
    opened_at: float
    bytes: int = HEADER_BYTES
    messages: int = 0


class Spooler:
    """The recorder's spool: a drain thread moves the rings into spool segments and rotates
    them by size or age; the recorder's thread (``service``) writes the side records, lists
    each closed segment in the manifest with its hash, and turns segments into messages
    Parquet files (``convert``) when there is CPU to spare; ``finish`` stops the drain thread
    and converts what is left.

    The drain thread touches only the rings, the open segment's file and two queues: the
    hashing, fsyncs and manifest rewrites that take the recorder's thread tens of
    milliseconds and more on a busy disk never hold the ring up. ``on_batches`` receives every
    parsed batch dict (side records, and messages as they are converted) on the recorder's
    thread and writes it (the recorder's ``_consume``)."""

    def __init__(self, writer: Any, probe: Any, on_batches: Any, *,
                 max_bytes: int, max_seconds: float, clock: Any, poll_ms: int = 100) -> None:
        import queue
        import threading

        from capture.probe import _MSG_DTYPE

        self.writer = writer
        self.probe = probe
        self.on_batches = on_batches
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.clock = clock
        self.poll_ms = poll_ms
        self.msg_hdr = int(_MSG_DTYPE.itemsize)
        header = SpoolHeader(self.msg_hdr, probe.cfg.snaplen, int(probe.boot_time_ns), 0)
        # parsers of their own: the probe's ring attributes are never swapped under a reader
        self.sink = SpoolSink(probe, probe.cfg.snaplen, self.msg_hdr, parser=_parser(header))
        self._parser = _parser(header)
        self._pending: list[tuple[Path, int]] = []  # listed segments, oldest first
        self._pending_messages = 0
        self._converting: Iterator[dict[str, list[pa.RecordBatch]]] | None = None
        self._side: queue.SimpleQueue[dict[str, list[pa.RecordBatch]]] = queue.SimpleQueue()
        self._closed: queue.SimpleQueue[_Segment] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._segment: _Segment | None = None
        self.converted_segments = 0
        self.spooled = 0  # messages in segments (open or closed, converted or not)
        self._segment = self._new_segment()
        self._thread = threading.Thread(target=self._run, name="dnstrail-spool", daemon=True)
        self._thread.start()

    # -- the drain thread --
    def _new_segment(self) -> _Segment:
        first = self.writer.next_seq["messages"] + self._pending_messages + (
            self._segment.messages if self._segment is not None else 0)
        header = SpoolHeader(self.msg_hdr, self.probe.cfg.snaplen, int(self.probe.boot_time_ns),
                             first)
        fd, path = self.writer.spool_create(header.pack())
        seg = _Segment(fd, path, self.clock())
        self.sink.fd = fd
        return seg

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.probe.wait(timeout_ms=self.poll_ms)
                self._drain_once()
            for _ in range(200):  # what the rings still hold at the end
                if not self._drain_once():
                    break
        except BaseException as exc:  # noqa: BLE001  (handed to the recorder's thread)
            self._error = exc

    def _drain_once(self) -> int:
        seg = self._segment
        assert seg is not None
        before_bytes, before_messages = self.sink.spool_bytes, self.sink.messages
        try:
            side, _ = self.sink.drain()
        except OSError:
            # what a failed write left half-written after the last whole write: cut it off
            seg.bytes += self.sink.spool_bytes - before_bytes
            seg.messages += self.sink.messages - before_messages
            try:
                os.ftruncate(seg.fd, seg.bytes)
            except OSError:
                pass
            raise
        spooled = self.sink.messages - before_messages
        seg.bytes += self.sink.spool_bytes - before_bytes
        seg.messages += spooled
        self.spooled += spooled
        if any(side.values()):
            self._side.put(side)
        if seg.messages and (seg.bytes >= self.max_bytes
                             or self.clock() - seg.opened_at >= self.max_seconds):
            self._segment = self._new_segment()  # counts seg's messages in its first seq
            self._pending_messages += seg.messages
            self._closed.put(seg)
        return spooled

    # -- the recorder's thread --
    def service(self, convert: bool, max_chunks: int = 2) -> int:
        """Write the side records, list closed segments, and (``convert``) turn up to
        max_chunks chunks of spooled messages into Parquet rows; returns the messages
        converted. Raises what stopped the drain thread (DiskFull for a full disk)."""
        self._take_side()
        self._list_closed()
        if self._error is not None:
            self._raise()
        return self.convert(max_chunks) if convert else 0

    def _take_side(self) -> None:
        while not self._side.empty():
            self.on_batches(self._side.get())

    def _list_closed(self) -> None:
        while not self._closed.empty():
            seg = self._closed.get()
            self.writer.spool_closed(seg.fd, seg.path, seg.messages)
            self._pending.append((seg.path, seg.messages))

    def _raise(self) -> None:
        exc = self._error
        assert exc is not None
        self._error = None
        if isinstance(exc, OSError):
            # DiskFull (the capture ends 'failed', what the rings still hold counted as
            # lost), or the error itself
            self.writer.disk_full(exc, lost=self.sink.pending_records())
        raise exc

    @property
    def backlog_messages(self) -> int:
        """Messages spooled and not yet in Parquet files (closed and open segments)."""
        return self.spooled - self.converted_messages

    converted_messages = 0

    @property
    def backlog_segments(self) -> int:
        return len(self._pending) + self._closed.qsize()

    def convert(self, max_chunks: int = 1) -> int:
        """Turn up to max_chunks chunks (READ_RECORDS records each) of the oldest listed
        segment into messages rows. Returns the messages converted."""
        done = 0
        for _ in range(max_chunks):
            if self._converting is None:
                if not self._pending:
                    break
                self._converting = read_segment(self._pending[0][0], parser=self._parser)
            batch = next(self._converting, None)
            if batch is None:
                path, messages = self._pending.pop(0)
                self._converting = None
                self._pending_messages -= messages
                self.writer.spool_converted(path)
                self.converted_segments += 1
                continue
            self.on_batches(batch)
            n = sum(b.num_rows for b in batch["messages"])
            self.converted_messages += n
            done += n
        return done

    def stop(self) -> None:
        """Stop the drain thread after a last drain of the rings (before they are unmapped).
        Raises what stopped it."""
        self._stop.set()
        self._thread.join()
        self._take_side()
        self._list_closed()
        if self._error is not None:
            self._raise()

    def finish(self) -> None:
        """After ``stop``: close the open segment and convert every segment left."""
        seg = self._segment
        if seg is not None:
            self._segment = None
            self.sink.fd = None
            if seg.messages:
                self._pending_messages += seg.messages
                self.writer.spool_closed(seg.fd, seg.path, seg.messages)
                self._pending.append((seg.path, seg.messages))
            else:  # an empty segment: nothing to keep
                self.writer.spool_closed(seg.fd, seg.path, 0, listed=False)
                seg.path.unlink(missing_ok=True)
        while self._pending or self._converting is not None:
            self.convert(max_chunks=64)


def count_records(path: str | Path) -> int:
    """Message records in a spool segment (whole ones; a partial last record is not one)."""
    read_header(path)
    total = 0
    buf = np.zeros(READ_BYTES + 4096, dtype=np.uint8)
    with open(path, "rb", buffering=0) as f:
        f.seek(HEADER_BYTES)
        have = 0
        while True:
            got = f.readinto(buf.data[have:READ_BYTES]) or 0
            have += got
            if not have:
                return total
            starts, _, used = _index(buf, have, 1 << 20)
            total += len(starts)
            if used == 0 and not got:
                return total
            buf[: have - used] = buf[used:have].copy()
            have -= used
