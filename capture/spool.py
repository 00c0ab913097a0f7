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


class _Ids(ctypes.Structure):
    _fields_ = [("slots", ctypes.c_void_p), ("mask", ctypes.c_uint64), ("used", ctypes.c_uint64),
                ("fresh", ctypes.c_void_p), ("cap", ctypes.c_uint64), ("n", ctypes.c_uint64)]


#: Slots of the drain's set of cgroup ids seen (it takes 3/4 of them; later ids are named
#: by the recorder's periodic walks instead).
_ID_SLOTS = 1 << 14
_ID_FRESH = 1024

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
                                         ctypes.POINTER(_Drain), ctypes.POINTER(_Ids)]
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
        self._id_slots = np.zeros(_ID_SLOTS, dtype=np.uint64)
        self._id_fresh = np.zeros(_ID_FRESH, dtype=np.uint64)
        self._ids = _Ids(self._id_slots.ctypes.data, _ID_SLOTS - 1, 0,
                         self._id_fresh.ctypes.data, _ID_FRESH, 0)
        #: cgroup ids of spooled messages seen for the first time (taken by the caller)
        self.fresh_ids: list[int] = []
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
                    ctypes.byref(res), ctypes.byref(self._ids))
                if self._ids.n:
                    self.fresh_ids.extend(int(v) for v in self._id_fresh[:self._ids.n])
                    self._ids.n = 0
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


#: Arrow bytes of messages per row group of a converted file (the writer's row group size).
_ROW_GROUP_BYTES = 2 * 1024 * 1024


def convert_segment(path: str | Path, out: str | Path) -> int:
    """Write the messages of a spool segment (seq from its header's first) as a messages
    Parquet file at ``out``, with the options of every capture file; return the rows."""
    from capture.schema import MESSAGES_SCHEMA
    from capture.writer import _create_private, _parquet_writer, conform_batch, parquet_options

    first = read_header(path).first_seq
    _create_private(Path(out))
    sink = pa.OSFile(str(out), "wb")
    writer = _parquet_writer(sink, MESSAGES_SCHEMA, **parquet_options(MESSAGES_SCHEMA))
    rows = 0
    pending: list[pa.RecordBatch] = []
    size = 0
    seq_at = MESSAGES_SCHEMA.get_field_index("seq")

    def flush() -> None:
        nonlocal size
        if pending:
            table = pa.Table.from_batches(pending, schema=MESSAGES_SCHEMA)
            writer.write_table(table, row_group_size=max(1, table.num_rows))
            pending.clear()
            size = 0

    try:
        for part in read_segment(path):
            for batch in part["messages"]:
                n = batch.num_rows
                seq = pa.Array.from_buffers(pa.uint64(), n, [None, pa.py_buffer(
                    np.arange(first + rows, first + rows + n, dtype=np.uint64))])
                batch = conform_batch(batch.set_column(seq_at, "seq", seq), "messages")
                pending.append(batch)
                size += batch.nbytes
                rows += n
                if size >= _ROW_GROUP_BYTES:
                    flush()
        flush()
    finally:
        writer.close()
        sink.close()
    return rows


def _converter_main(policy: str) -> int:
    """The converter process: lower itself (``policy``: low = nice 19, idle = SCHED_IDLE,
    normal = as started), then convert the segments named on stdin (one JSON object a line:
    {"segment", "out"}), answering each on stdout ({"ok", "rows"} or {"ok": false, "error"})."""
    import json
    import sys

    from capture.sched import _set_all

    if policy in ("low", "idle"):
        _set_all(policy)  # every thread the imports started, and those started later
    for line in sys.stdin:
        job = json.loads(line)
        try:
            answer: dict[str, Any] = {"ok": True,
                                      "rows": convert_segment(job["segment"], job["out"])}
        except Exception as exc:  # noqa: BLE001  (reported to the recorder, which decides)
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                      "disk_full": isinstance(exc, OSError) and exc.errno in (28, 122)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


class ConversionGate:
    """Whether the converter may run now: paused (SIGSTOP) while the node's CPUs are
    saturated by others, resumed when they leave some idle.

    Every ``interval`` seconds it reads the node's idle share (``/proc/stat``) and the
    converter's own CPU time (``/proc/PID/stat``), and counts the converter's time as idle:
    the question is whether the workload leaves CPU to spare, not whether the converter uses
    it. Nice 19 alone is not enough: a client/server pair at saturation leaves short idle gaps,
    and a converter that fills them costs the pair a quarter of its throughput
    (docs/benchmarks.md). It pauses below ``pause_below`` and resumes once the share has
    stayed above ``resume_above`` for ``hold`` seconds (hysteresis: no flapping)."""

    def __init__(self, pid: int, *, interval: float = 0.2, pause_below: float = 0.25,
                 resume_above: float = 0.40, hold: float = 1.0,
                 stat_path: str = "/proc/stat") -> None:
        self.pid = pid
        self.interval = interval
        self.pause_below = pause_below
        self.resume_above = resume_above
        self.hold = hold
        self.stat_path = stat_path
        self.paused = False
        self.pauses = 0
        self.paused_seconds = 0.0
        self.share = 1.0
        self._last: tuple[float, int, int, int] | None = None
        self._high = 0.0
        self._tick = os.sysconf("SC_CLK_TCK")

    def _own_ticks(self) -> int:
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            return int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError, ValueError):
            return 0

    def update(self, now: float) -> bool:
        """Sample (once an interval has passed) and pause or resume; True while it may run."""
        from capture.sched import cpu_idle_share

        if self._last is not None and now - self._last[0] < self.interval:
            return not self.paused
        try:
            idle, total = cpu_idle_share(self.stat_path)
        except (OSError, ValueError):
            return not self.paused
        own = self._own_ticks()
        last, self._last = self._last, (now, idle, total, own)
        if last is None or total <= last[2]:
            return not self.paused
        if self.paused:
            self.paused_seconds += now - last[0]
        self.share = min(1.0, (idle - last[1] + max(0, own - last[3])) / (total - last[2]))
        if not self.paused and self.share < self.pause_below:
            self._signal(True)
        elif self.paused:
            self._high = self._high + (now - last[0]) if self.share > self.resume_above else 0.0
            if self._high >= self.hold - 1e-9:
                self._signal(False)
        return not self.paused

    def _signal(self, pause: bool) -> None:
        import signal

        try:
            os.kill(self.pid, signal.SIGSTOP if pause else signal.SIGCONT)
        except ProcessLookupError:
            return
        self.paused = pause
        self._high = 0.0
        if pause:
            self.pauses += 1

    def release(self) -> None:
        """Let it run from now on (the capture is over)."""
        if self.paused:
            self._signal(False)


class _Converter:
    """The converter process, one segment at a time."""

    def __init__(self, policy: str) -> None:
        import subprocess
        import sys

        env = dict(os.environ, ARROW_DEFAULT_MEMORY_POOL="system")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "capture.spool", "--converter", policy],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            cwd=str(Path(__file__).resolve().parents[1]))
        if policy in ("low", "idle"):
            # from here, at once: the child lowers itself only after its imports, and a
            # saturated node (or the gate, which may stop it first) can hold those up for
            # seconds, at nice 0 and with the threads numpy and Arrow start at nice 0 too
            from capture.sched import _set_all

            try:
                _set_all(policy, self.proc.pid)
            except OSError:
                pass  # the child does it itself as well
        self.busy: tuple[Path, Path, str, int] | None = None  # segment, tmp, name, messages

    def submit(self, segment: Path, tmp: Path, name: str, messages: int) -> None:
        import json

        assert self.busy is None and self.proc.stdin is not None
        self.busy = (segment, tmp, name, messages)
        self.proc.stdin.write(json.dumps({"segment": str(segment), "out": str(tmp)}) + "\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = 0.0) -> dict[str, Any] | None:
        """The answer for the busy segment, once there is one."""
        import json
        import select

        assert self.proc.stdout is not None
        if self.busy is None:
            return None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            return {"ok": False, "error": f"the converter process exited ({code})"}
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001
            self.proc.kill()
            self.proc.wait()


class Spooler:
    """The recorder's spool.

    - A drain thread moves the rings into spool segments (the compiled routine, no GIL) and
      rotates them by size or age. It touches only the rings, the open segment's file and
      queues: the hashing, fsyncs and manifest rewrites that take tens of milliseconds and
      more on a busy disk never hold the ring up.
    - A converter process (nice 19 with --priority auto, so the workload always comes first)
      turns closed segments into messages Parquet files, one at a time.
    - The recorder's thread (``service``) writes the side records (connects, execs), names new
      cgroup ids, lists each closed segment with its hash, hands segments to the converter and
      commits what it wrote. ``stop`` ends the drain (before the rings are unmapped),
      ``finish`` waits for the conversion of what is left.

    ``on_batches`` receives the side records' batch dicts; ``on_ids`` the cgroup ids of
    spooled messages seen for the first time."""

    def __init__(self, writer: Any, probe: Any, on_batches: Any, on_ids: Any, *,
                 max_bytes: int, max_seconds: float, clock: Any, poll_ms: int = 100,
                 converter_policy: str = "low", gate: bool = False) -> None:
        import queue
        import threading

        from capture.probe import _MSG_DTYPE

        self.writer = writer
        self.probe = probe
        self.on_batches = on_batches
        self.on_ids = on_ids
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.clock = clock
        self.poll_ms = poll_ms
        self.msg_hdr = int(_MSG_DTYPE.itemsize)
        header = SpoolHeader(self.msg_hdr, probe.cfg.snaplen, int(probe.boot_time_ns), 0)
        # a parser of its own: the probe's ring attributes are never swapped under a reader
        self.sink = SpoolSink(probe, probe.cfg.snaplen, self.msg_hdr, parser=_parser(header))
        self._pending: list[tuple[Path, int]] = []  # listed segments, oldest first
        self._side: queue.SimpleQueue[dict[str, list[pa.RecordBatch]]] = queue.SimpleQueue()
        self._ids: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
        self._closed: queue.SimpleQueue[_Segment] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._segment: _Segment | None = None
        self.converted_messages = 0
        self.spooled = 0  # messages in segments (open or closed, converted or not)
        self._converter = _Converter(converter_policy)
        #: with --priority auto: the converter paused while the workload saturates the node
        self.gate = (ConversionGate(self._converter.proc.pid) if gate else None)
        self._seq_base = int(writer.next_seq["messages"])  # rows of a capture appended to
        self._segment = self._new_segment()
        self._thread = threading.Thread(target=self._run, name="dnstrail-spool", daemon=True)
        self._thread.start()

    # -- the drain thread --
    def _new_segment(self) -> _Segment:
        # the seq of its first message: after every message spooled before it
        first = self._seq_base + self.spooled
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
            self.spooled += self.sink.messages - before_messages
            try:
                os.ftruncate(seg.fd, seg.bytes)
            except OSError:
                pass
            raise
        spooled = self.sink.messages - before_messages
        seg.bytes += self.sink.spool_bytes - before_bytes
        seg.messages += spooled
        if any(side.values()):
            self._side.put(side)
        if self.sink.fresh_ids:
            self._ids.put(self.sink.fresh_ids)
            self.sink.fresh_ids = []
        self.spooled += spooled
        if seg.messages and (seg.bytes >= self.max_bytes
                             or self.clock() - seg.opened_at >= self.max_seconds):
            self._segment = self._new_segment()
            self._closed.put(seg)
        return spooled

    # -- the recorder's thread --
    def service(self, wait: float = 0.0) -> None:
        """Write the side records, name new cgroup ids, list closed segments, keep the
        converter busy and commit what it finished (waiting up to ``wait`` seconds for it).
        Raises what stopped the drain thread (DiskFull for a full disk) or the converter."""
        self._take_side()
        self._list_closed()
        if self._error is not None:
            self._raise()
        if self.gate is not None:
            self.gate.update(self.clock())
        self._convert(wait)

    def _take_side(self) -> None:
        while not self._side.empty():
            self.on_batches(self._side.get())
        while not self._ids.empty():
            self.on_ids(self._ids.get())

    def _list_closed(self, now: bool = False) -> None:
        """List closed segments with their hashes. While the gate holds the converter (the
        workload saturates the node) hashing waits too: ~0.5 ms of CPU per MB, the largest
        part of the recorder's own work at saturation. A recorder killed meanwhile leaves those
        segments readable but unhashed (the readers say so)."""
        if not now and self.gate is not None and self.gate.paused:
            return
        while not self._closed.empty():
            seg = self._closed.get()
            self.writer.spool_closed(seg.fd, seg.path, seg.messages)
            self._pending.append((seg.path, seg.messages))

    def _convert(self, wait: float) -> None:
        conv = self._converter
        if conv.busy is not None:
            answer = conv.result(wait)
            if answer is None:
                return
            segment, tmp, name, messages = conv.busy
            conv.busy = None
            if not answer.get("ok"):
                tmp.unlink(missing_ok=True)
                error = str(answer.get("error"))
                if answer.get("disk_full"):
                    self.writer.disk_full(OSError(28, f"converting {segment.name}: {error}"))
                # the segment stays listed (readable, hashed); the capture goes on
                raise SpoolDamaged(f"converting {segment.name} failed: {error}")
            self.writer.spool_converted(segment, tmp, name, int(answer["rows"]), messages)
            self._pending.pop(0)
            self.converted_messages += int(answer["rows"])
        if conv.busy is None and self._pending:
            segment, messages = self._pending[0]
            name, tmp = self.writer.next_event_file("messages")
            conv.submit(segment, tmp, name, messages)

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

    @property
    def converter_pid(self) -> int:
        return int(self._converter.proc.pid)

    def stop(self) -> None:
        """Stop the drain thread after a last drain of the rings (before they are unmapped).
        Raises what stopped it."""
        self._stop.set()
        self._thread.join()
        self._take_side()
        self._list_closed(now=True)
        if self._error is not None:
            self._raise()

    def finish(self, within: float | None = None) -> int:
        """After ``stop``: close the open segment and convert the segments left, for at most
        ``within`` seconds (None: all of them). What is not converted by then stays spooled:
        listed with its hash, readable (the readers take spool segments as messages files).
        Returns the messages left spooled."""
        seg = self._segment
        if seg is not None:
            self._segment = None
            self.sink.fd = None
            if seg.messages:
                self.writer.spool_closed(seg.fd, seg.path, seg.messages)
                self._pending.append((seg.path, seg.messages))
            else:  # an empty segment: nothing to keep
                self.writer.spool_closed(seg.fd, seg.path, 0, listed=False)
                seg.path.unlink(missing_ok=True)
        if self.gate is not None:
            self.gate.release()  # the capture is over: the converter runs (at its priority)
        deadline = None if within is None else self.clock() + max(0.0, within)
        try:
            while self._pending or self._converter.busy is not None:
                if deadline is not None and self.clock() >= deadline:
                    break
                wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - self.clock()))
                self._convert(wait=wait)
        finally:
            if self._converter.busy is not None:  # out of time: its half-written file goes
                self._converter.proc.kill()
                _, tmp, _, _ = self._converter.busy
                self._converter.busy = None
                tmp.unlink(missing_ok=True)
            self._converter.close()
        return sum(messages for _, messages in self._pending)

    def abandon(self) -> None:
        """End the converter without waiting for the spool (a failed capture keeps it)."""
        if self.gate is not None:
            self.gate.release()
        self._converter.proc.kill()
        self._converter.close()


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


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--converter"]:
        raise SystemExit(_converter_main(sys.argv[2] if len(sys.argv) > 2 else "low"))
    raise SystemExit("usage: python -m capture.spool --converter {low,idle,normal}")
