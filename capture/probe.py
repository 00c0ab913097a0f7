"""The kernel side of ``dnstrail record``: load ``bpf/dnstrail.bpf.c`` and read its events in bulk.

Usage (the recorder's contract; keep this shape)::

    from capture.probe import ProbeConfig, Probe, render_source

    cfg = ProbeConfig(ports=(53,), pids=(), comms=(), cgroup_ids=(), snaplen=1232,
                      ringbuf_mb=32, trace_connects=True, trace_execs=True)
    print(render_source(cfg))            # final BPF C text (for --print-bpf); no bcc needed
    with Probe(cfg) as probe:            # compiles, loads, attaches; raises capture.errors.*
        probe.boot_time_ns               # wall-clock ns at CLOCK_MONOTONIC zero
        batches = probe.poll(timeout_ms=100)
        # -> {"messages": [pa.RecordBatch], "connects": [...], "execs": [...]}, each batch
        #    conforming exactly to capture.schema.{MESSAGES,CONNECTS,EXECS}_SCHEMA
        probe.lost()                     # cumulative lost-event counters, every cause present
        probe.set_cgroup_ids({...})      # replace the cgroup filter set (and turn it on)
        probe.stats()                    # events and bytes received, by kind

Filters: an empty ``pids``/``comms`` tuple means "all". The cgroup filter is in force when
``cgroup_ids`` is non-empty, when ``filter_cgroups=True`` (a pod that does not exist yet
resolves to no ids: that must record nothing, not everything), or after ``set_cgroup_ids``.
An empty ``ports`` tuple records every TCP/UDP message (not just DNS): use with a pid filter.

Loading: BCC (LLVM + clang, ~300 MB resident) never enters this process. ``open()`` runs
``python -m capture._loader``, which compiles, attaches and fills the static filters, then
passes the map and attachment descriptors back (SCM_RIGHTS) and exits; this process talks to
the maps with bpf(2) and detaches by closing the descriptors. Struct offsets come from the
kernel's BTF (``capture._btf``). ``socket_source`` picks how the program finds a message's
socket: the sock tracepoints (Linux >= 6.3) or the fd table (older kernels); "auto" chooses.

Reading: the BPF program writes records of a few fixed sizes into a BPF ring buffer. This
module maps the ring itself (consumer page read-write, producer page and data area read-only,
the data area once), finds record boundaries with vectorized reads over runs of equal-size
records, copies the fixed headers as strided rows of the ring into a numpy structured array,
casts the payloads out of the ring through an Arrow binary_view array (one C++ copy each), and
advances the consumer position once per chunk (<= 16384 records).
``poll`` sleeps in 5 ms steps (until the timeout, or until an eighth of the ring is full)
instead of waking up per event. Not thread-safe: poll from one thread. See docs/bpf.md.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import platform
import secrets
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa

from bpf import source_path
from capture import _btf
from capture._arrow import arrow_array, bools, numeric
from capture.errors import (
    BccMissing,
    CaptureError,
    HeadersMissing,
    LoadFailed,
    NotPermitted,
    TracefsMissing,
)
from capture.schema import CONNECTS_SCHEMA, EXECS_SCHEMA, MESSAGES_SCHEMA, TS

__all__ = ["LOST_CAUSES", "Probe", "ProbeConfig", "render_source"]

SOURCE_NAME = "dnstrail.bpf.c"

#: Lost-event causes, in the order of the BPF `lost` array (LOST_* in dnstrail.bpf.c).
LOST_CAUSES: tuple[str, ...] = (
    "ringbuf_full",  # the ring buffer had no room: the consumer fell behind
    "payload_unreadable",  # bpf_probe_read_user failed: row kept, payload short, truncated=True
    "mmsg_over_bound",  # sendmmsg/recvmmsg messages past MAX_MMSG (count of messages)
    "iov_over_bound",  # msghdr/readv/writev with more than MAX_IOV iovecs: payload cut (row kept)
    "pending_full",  # too many syscalls in flight to remember their arguments
    "untracked_socket_io",  # DNS-port socket I/O with no hooked syscall's arguments
    "msghdr_unreadable",  # the struct msghdr of a sendmsg/recvmsg could not be read
    "connect_pending_full",  # too many connect() calls in flight
)

# Syscall codes (SC_* in dnstrail.bpf.c): index i+1 in the C code.
SYSCALLS: tuple[str, ...] = (
    "sendto", "sendmsg", "sendmmsg", "write", "writev",
    "recvfrom", "recvmsg", "recvmmsg", "read", "readv",
)
_KIND_MSG, _KIND_CONNECT, _KIND_EXEC = 1, 2, 3
_F_SRC_ADDR, _F_SRC_PORT, _F_DST_ADDR, _F_DST_PORT, _F_SOCK, _F_PROTO = 1, 2, 4, 8, 16, 32
_AF_INET, _AF_INET6 = 2, 10

_COMMON_FIELDS: list[tuple[str, str]] = [
    ("kind", "u1"), ("syscall", "u1"), ("direction", "u1"), ("protocol", "u1"),
    ("family", "u1"), ("flags", "u1"), ("msg_index", "<u2"),
    ("tgid", "<i4"), ("tid", "<i4"), ("uid", "<u4"), ("netns", "<u4"),
    ("mono_ns", "<i8"), ("cgroup_id", "<u8"), ("comm", "V16"),
]
_MSG_DTYPE = np.dtype(_COMMON_FIELDS + [
    ("sock_id", "<u8"), ("src_addr", "V16"), ("dst_addr", "V16"),
    ("src_port", "<u2"), ("dst_port", "<u2"), ("fd", "<i4"),
    ("orig_len", "<u4"), ("cap_len", "<u4"),
])
_CONNECT_DTYPE = np.dtype(_COMMON_FIELDS + [
    ("dst_addr", "V16"), ("dst_port", "<u2"), ("_pad", "<u2"), ("fd", "<i4"),
    ("result", "<i4"), ("_pad2", "<u4"), ("latency_ns", "<i8"),
])
_EXEC_DTYPE = np.dtype(_COMMON_FIELDS + [("ppid", "<i4"), ("_pad", "<u4"), ("filename", "V256")])
assert _MSG_DTYPE.itemsize == 112 and _CONNECT_DTYPE.itemsize == 96
assert _EXEC_DTYPE.itemsize == 320

#: Arrow binary_view (pyarrow >= 16) lets payloads be cast out of the ring in one C++ pass.
def _views_cast() -> bool:
    """Can this pyarrow cast a binary_view array (one out-of-line value) to binary?
    (Built from buffers: pa.array() on a list would import pandas into the recorder.)"""
    data = b"0123456789abcdef"
    view = struct.pack("<i4sii", len(data), data[:4], 0, 0)
    try:
        v = pa.Array.from_buffers(pa.binary_view(), 1, [None, pa.py_buffer(view),
                                                        pa.py_buffer(data)])
        out = v.cast(pa.binary())
        return bool(out.buffers()[2].to_pybytes()[: len(data)] == data)
    except (AttributeError, pa.ArrowException):
        return False


_HAS_VIEWS = _views_cast()
_RINGBUF_BUSY = 1 << 31
_RINGBUF_DISCARD = 1 << 30
_RINGBUF_HDR = 8
_RINGBUF_LEN = (1 << 30) - 1
#: Records parsed into one set of RecordBatches before the consumer position moves on.
_CHUNK_RECORDS = 16384
#: Full chunks one poll() returns at most (~5 MB of batches each).
_POLL_CHUNKS = 2


@dataclass(frozen=True)
class ProbeConfig:
    """What the probe records. Empty pids/comms/cgroup_ids = no filter (see module doc)."""

    ports: tuple[int, ...] = (53,)
    pids: tuple[int, ...] = ()
    comms: tuple[str, ...] = ()
    cgroup_ids: tuple[int, ...] = ()
    snaplen: int = 1232
    ringbuf_mb: int = 32
    trace_connects: bool = True
    trace_execs: bool = True
    #: Turn the cgroup filter on even with no ids yet (they come later via set_cgroup_ids).
    filter_cgroups: bool = False
    #: Messages read from one sendmmsg/recvmmsg vector; the rest are counted as lost.
    max_mmsg: int = 16
    #: iovecs read per msghdr/readv/writev; a payload spread over more is cut (counted).
    max_iov: int = 4
    #: How the probe finds the struct sock of a message: "tracepoint" (sock:sock_send_length
    #: and sock_recv_length, Linux >= 6.3), "fdtable" (walk the task's fd table at syscall
    #: exit, any kernel with BTF), or "auto" (tracepoint when the kernel has it).
    socket_source: str = "auto"

    def __post_init__(self) -> None:
        if not 1 <= self.snaplen <= 8192:
            raise ValueError(f"snaplen must be 1..8192, not {self.snaplen}")
        if not 1 <= self.ringbuf_mb <= 1024:
            raise ValueError(f"ringbuf_mb must be 1..1024, not {self.ringbuf_mb}")
        if not 1 <= self.max_mmsg <= 64 or not 1 <= self.max_iov <= 16:
            raise ValueError("max_mmsg must be 1..64 and max_iov 1..16")
        for port in self.ports:
            if not 0 < port < 65536:
                raise ValueError(f"bad port {port}")
        if self.socket_source not in ("auto", "tracepoint", "fdtable"):
            raise ValueError(f"socket_source must be auto, tracepoint or fdtable, "
                             f"not {self.socket_source!r}")
        for comm in self.comms:
            if not comm or len(comm.encode()) > 15:
                raise ValueError(f"comm {comm!r}: the kernel keeps at most 15 bytes")


def _ringbuf_pages(cfg: ProbeConfig) -> int:
    """Ring buffer size in pages: ringbuf_mb rounded down to a power of two."""
    page = mmap.PAGESIZE
    want = cfg.ringbuf_mb * 1024 * 1024 // page
    return 1 << (want.bit_length() - 1)


def _round8(n: int) -> int:
    return (n + 7) & ~7


def _defines(cfg: ProbeConfig, salt: int, offsets: dict[str, int]) -> dict[str, str]:
    defs = {
        "MAX_PAYLOAD": str(cfg.snaplen),
        "OFF_MASK": str((1 << (cfg.snaplen + 1).bit_length()) - 1),
        "SLOT_SMALL": str(min(_round8(cfg.snaplen), 256)),
        "SLOT_BIG": str(_round8(cfg.snaplen)),
        "RINGBUF_PAGES": str(_ringbuf_pages(cfg)),
        "RESCUE_PAGES": str(_RESCUE_PAGES),
        "MAX_MMSG": str(cfg.max_mmsg),
        "MAX_IOV": str(cfg.max_iov),
        "FILTER_PIDS": "1" if cfg.pids else "0",
        "FILTER_COMMS": "1" if cfg.comms else "0",
        "FILTER_CGROUPS": "1" if cfg.cgroup_ids or cfg.filter_cgroups else "0",
        "FILTER_PORTS": "1" if cfg.ports else "0",
        "TRACE_CONNECTS": "1" if cfg.trace_connects else "0",
        "TRACE_EXECS": "1" if cfg.trace_execs else "0",
        "SOCK_SALT": f"0x{salt:016x}ULL",
        "SOCK_TP": "1" if _use_sock_tracepoints(cfg) else "0",
    }
    defs.update({k: str(v) for k, v in offsets.items()})
    return defs


_TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


def _use_sock_tracepoints(cfg: ProbeConfig) -> bool:
    if cfg.socket_source != "auto":
        return cfg.socket_source == "tracepoint"
    try:
        return any(Path(t, "events", "sock", "sock_recv_length").is_dir() for t in _TRACEFS)
    except OSError:  # tracefs not readable (not root: --print-bpf): judge by the version
        return _kernel_version() >= (6, 3)


def _kernel_version() -> tuple[int, int]:
    parts = platform.release().split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def _kernel_offsets() -> dict[str, int]:
    """Struct offsets from the running kernel's BTF; {} (header offsets) when unavailable."""
    try:
        return _btf.probe_offsets()
    except _btf.BtfError:
        return {}


def render_source(cfg: ProbeConfig) -> str:
    """The BPF C text exactly as compiled: the -D constants as #defines, then the source."""
    defs = _defines(cfg, 0, _kernel_offsets())
    head = "".join(f"#define {k} {v}\n" for k, v in defs.items())
    note = "// SOCK_SALT is random per capture; 0 shown here.\n"
    return note + head + source_path(SOURCE_NAME).read_text()


def _check_environment(need_bcc: bool = True) -> Any:
    """Check what loading needs (and import bcc when need_bcc); raise the CaptureError.

    The checks are capture.preflight's, so the probe and `dnstrail record` agree (a non-root
    user with CAP_BPF + CAP_PERFMON passes both).
    """
    from capture import preflight

    paths = preflight.PreflightPaths()
    preflight.preflight(paths, skip=() if need_bcc else ("bcc",))
    if need_bcc:
        import bcc  # lazy: only the loader child process imports bcc

        return bcc
    return None


@dataclass
class _Counts:
    messages: int = 0
    connects: int = 0
    execs: int = 0
    payload_bytes: int = 0
    ring_bytes: int = 0
    polls: int = 0
    chunks: int = 0
    parse_seconds: float = 0.0
    malformed: int = 0
    rescued: int = 0
    by_syscall: np.ndarray = field(default_factory=lambda: np.zeros(len(SYSCALLS), np.int64))


# ---- raw bpf(2) map access (the parent process never imports bcc) ----
_NR_BPF = {"x86_64": 321, "aarch64": 280, "arm64": 280}.get(platform.machine(), 321)
_BPF_MAP_LOOKUP_ELEM, _BPF_MAP_UPDATE_ELEM, _BPF_MAP_DELETE_ELEM = 1, 2, 3
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _ElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("key", ctypes.c_uint64), ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


def _map_op(cmd: int, fd: int, key: ctypes.Array[ctypes.c_char] | ctypes._SimpleCData[Any],
            value: Any = None) -> bool:
    attr = _ElemAttr(fd, 0, ctypes.addressof(key),
                     ctypes.addressof(value) if value is not None else 0, 0)
    ret = _libc.syscall(ctypes.c_long(_NR_BPF), ctypes.c_int(cmd), ctypes.byref(attr),
                        ctypes.c_uint(ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        if err == 2 and cmd != _BPF_MAP_UPDATE_ELEM:  # ENOENT
            return False
        raise OSError(err, f"bpf map operation {cmd}: {os.strerror(err)}")
    return True


def _possible_cpus() -> int:
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    last = 0
    for part in text.split(","):
        last = max(last, int(part.split("-")[-1]))
    return last + 1


#: Maps the parent keeps (the loader fills the static filters itself).
_PARENT_MAPS = ("events", "rescue", "cgroups", "config", "lost")
#: Pages of the rescue ring (RESCUE_PAGES in dnstrail.bpf.c): where a write goes when the main
#: ring refused it although it had room (see RINGBUF_RETRY there). Read like the main ring.
_RESCUE_PAGES = 256
#: The attributes that describe the ring being read; _swap_ring exchanges them with the
#: rescue ring's, so that one set of parsing methods reads both.
_RING_ATTRS = ("_cons_map", "_cons_u64", "_data_map", "_data_u8", "_data_u32", "_data_u64",
               "_mv32", "_ring_size", "_ring_mask", "_window")


class Probe:
    """The loaded BPF program and its ring buffer reader. Use as a context manager."""

    def __init__(self, cfg: ProbeConfig) -> None:
        self.cfg = cfg
        self.boot_time_ns = 0
        self._maps: dict[str, int] = {}
        self._attach_fds: list[int] = []
        self._cons_map: mmap.mmap | None = None
        self._data_map: mmap.mmap | None = None
        self._data_u8 = np.zeros(0, dtype=np.uint8)
        self._data_u32 = np.zeros(0, dtype=np.uint32)
        self._data_u64 = np.zeros(0, dtype=np.uint64)
        self._cons_u64 = np.zeros(0, dtype=np.uint64)
        self._mv32: memoryview | None = None
        self._ring_size = 0
        self._ring_mask = 0
        self._cgroups: set[int] = set()
        self._ncpus = _possible_cpus()
        self._counts = _Counts()
        self._seq = {"messages": 0, "connects": 0, "execs": 0}
        self._window = 64
        self._rescue: dict[str, Any] | None = None  # the rescue ring's _RING_ATTRS

    # ---- lifecycle ----
    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Compile and attach in a child process, take over its descriptors, map the ring."""
        if self._maps:
            raise RuntimeError("probe is already open")
        cfg = self.cfg
        defs = _defines(cfg, secrets.randbits(64), _kernel_offsets())
        request = {
            "source": str(source_path(SOURCE_NAME)),
            "cflags": [f"-D{k}={v}" for k, v in defs.items()] + ["-Wno-unused-function"],
            "ports": list(cfg.ports), "pids": list(cfg.pids), "comms": list(cfg.comms),
            "cgroup_ids": list(cfg.cgroup_ids),
            "maps": list(_PARENT_MAPS),
        }
        self._maps, self._attach_fds = _run_loader(request)
        try:
            # the rescue ring first: _map_ring leaves the ring it maps as the one being read
            self._map_ring(_RESCUE_PAGES * mmap.PAGESIZE, "rescue")
            self._rescue = {a: getattr(self, a) for a in _RING_ATTRS}
            self._map_ring(_ringbuf_pages(cfg) * mmap.PAGESIZE)
            # the loader filled the cgroup set before anything could pass (FILTER_CGROUPS)
            self._cgroups = {int(i) for i in cfg.cgroup_ids}
        except Exception:
            self.close()
            raise
        self.boot_time_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)

    def close(self) -> None:
        """Detach (by closing the attachment descriptors) and unmap. Idempotent."""
        self._unmap_ring()  # the main ring
        if self._rescue is not None:
            self._swap_ring()
            self._unmap_ring()  # the rescue ring
            self._rescue = None
        for fd in self._attach_fds + list(self._maps.values()):
            os.close(fd)
        self._attach_fds = []
        self._maps = {}

    def _swap_ring(self) -> None:
        """Exchange the ring being read with the rescue ring (call again to swap back)."""
        assert self._rescue is not None
        for a in _RING_ATTRS:
            mine = getattr(self, a)
            setattr(self, a, self._rescue[a])
            self._rescue[a] = mine

    def _unmap_ring(self) -> None:
        """Unmap the ring being read."""
        self._data_u8 = np.zeros(0, dtype=np.uint8)  # drop the views before unmapping
        self._data_u32 = np.zeros(0, dtype=np.uint32)
        self._data_u64 = np.zeros(0, dtype=np.uint64)
        self._cons_u64 = np.zeros(0, dtype=np.uint64)
        if self._mv32 is not None:
            self._mv32.release()
            self._mv32 = None
        for m in (self._cons_map, self._data_map):
            if m is not None:
                m.close()
        self._cons_map = self._data_map = None

    def set_cgroup_ids(self, ids: Any) -> None:
        """Replace the cgroup filter set with ``ids`` (cgroup v2 ids) and turn the filter on."""
        if not self._maps:
            raise RuntimeError("probe is not open")
        fd = self._maps["cgroups"]
        new = {int(i) for i in ids}
        one = ctypes.c_uint8(1)
        for cg in sorted(new - self._cgroups):
            _map_op(_BPF_MAP_UPDATE_ELEM, fd, ctypes.c_uint64(cg), one)
        for cg in sorted(self._cgroups - new):
            _map_op(_BPF_MAP_DELETE_ELEM, fd, ctypes.c_uint64(cg))
        self._cgroups = new
        _map_op(_BPF_MAP_UPDATE_ELEM, self._maps["config"], ctypes.c_uint32(0),
                ctypes.c_uint64(1))

    def _map_ring(self, size: int, name: str = "events") -> None:
        fd = self._maps[name]
        page = mmap.PAGESIZE
        self._ring_size = size
        self._ring_mask = size - 1
        self._cons_map = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                                   offset=0)
        # The positions are read and written as whole aligned 8-byte words: the kernel reads
        # and writes them locklessly, and struct.pack_into/unpack_from go byte by byte (a
        # consumer position written that way made reservations fail on an almost empty ring).
        self._cons_u64 = np.frombuffer(self._cons_map, dtype=np.uint64, count=1)
        # The kernel maps the data area twice in a row so that wrapped records read
        # contiguously; the pages are mapped eagerly, so that would count twice in RSS.
        # We map it once and wrap indices ourselves.
        self._data_map = mmap.mmap(fd, page + size, mmap.MAP_SHARED, mmap.PROT_READ,
                                   offset=page)
        self._data_u8 = np.frombuffer(self._data_map, dtype=np.uint8)
        self._data_u32 = self._data_u8.view(np.uint32)
        self._data_u64 = self._data_u8.view(np.uint64)
        self._mv32 = memoryview(self._data_map).cast("I")

    # ---- reading ----
    def _positions(self) -> tuple[int, int]:
        assert self._cons_map is not None and self._data_map is not None
        return int(self._cons_u64[0]), int(self._data_u64[0])  # the producer page comes first

    def pending_bytes(self) -> int:
        """Bytes committed to the ring buffer and not consumed yet."""
        cons, prod = self._positions()
        return prod - cons

    def poll(self, timeout_ms: int = 100,
             max_chunks: int | None = None) -> dict[str, list[pa.RecordBatch]]:
        """Wait up to timeout_ms (less when the ring is an eighth full), then parse what is
        there, up to max_chunks (default _POLL_CHUNKS) chunks of _CHUNK_RECORDS records: the
        rest stays in the ring for the next call, so a recorder that fell behind does not
        hold a whole ring's worth of batches at once."""
        self.wait(timeout_ms)
        return self.drain(max_chunks=max_chunks or _POLL_CHUNKS)

    def wait(self, timeout_ms: int = 100) -> None:
        """Sleep in 5 ms steps until timeout_ms or until an eighth of the ring is full."""
        if self._data_map is None:
            raise RuntimeError("probe is not open")
        deadline = time.monotonic() + max(timeout_ms, 0) / 1000
        early = self._ring_size // 8
        while True:
            if self.pending_bytes() >= early:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, 0.005))

    def drain(self, max_chunks: int | None = None) -> dict[str, list[pa.RecordBatch]]:
        """Parse every committed record now (or max_chunks chunks of them), without waiting."""
        if self._data_map is None:
            raise RuntimeError("probe is not open")
        out: dict[str, list[pa.RecordBatch]] = {"messages": [], "connects": [], "execs": []}
        self._counts.polls += 1
        chunks = 0
        while self._drain_chunk(out) >= _CHUNK_RECORDS:
            chunks += 1
            if max_chunks is not None and chunks >= max_chunks:
                break
        if self._rescue is not None:
            self._swap_ring()
            try:
                self._counts.rescued += self._drain_chunk(out)  # 1 MB: under one chunk
            finally:
                self._swap_ring()
        return out

    def _walk(self, cons: int, prod: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Record content offsets and lengths from cons up to prod (or a busy record, or the
        chunk limit), and the position after the last one.

        Runs of equal-length records are checked with one vectorized read: if the record at
        p has length L, the next one starts at p + stride(L), so headers at p + k*stride all
        equal to L prove k records. Where lengths vary, a scalar walk takes over for a while.
        """
        u32 = self._data_u32
        mv = self._mv32
        assert mv is not None
        base4 = mmap.PAGESIZE >> 2
        mask = self._ring_mask
        pos_parts: list[np.ndarray] = []
        len_parts: list[np.ndarray] = []
        scalar_pos: list[int] = []
        scalar_len: list[int] = []
        count = 0
        scalar_left = 0
        limit = _CHUNK_RECORDS
        while cons < prod and count < limit:
            hdr = mv[base4 + ((cons & mask) >> 2)]
            if hdr & _RINGBUF_BUSY:
                break
            length = hdr & _RINGBUF_LEN
            stride = (length + _RINGBUF_HDR + 7) & ~7
            if hdr & _RINGBUF_DISCARD:
                cons += stride
                continue
            if scalar_left > 0:
                scalar_pos.append(cons)
                scalar_len.append(length)
                cons += stride
                count += 1
                scalar_left -= 1
                continue
            k = min((prod - cons) // stride, self._window, limit - count)
            cand = cons + np.arange(k, dtype=np.int64) * stride
            same = u32[base4 + ((cand & mask) >> 2)] == length
            good = k if bool(same.all()) else int(np.argmin(same))
            # good >= 1: the record at cons has length `length`
            pos_parts.append(cand[:good])
            len_parts.append(np.full(good, length, dtype=np.int64))
            count += good
            cons += good * stride
            if good == k:
                self._window = min(self._window * 4, _CHUNK_RECORDS)
            else:
                self._window = 64
                if good < 8:
                    scalar_left = 64
        if scalar_pos:
            pos_parts.append(np.array(scalar_pos, dtype=np.int64))
            len_parts.append(np.array(scalar_len, dtype=np.int64))
        if not pos_parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), cons
        positions = np.concatenate(pos_parts)
        lengths = np.concatenate(len_parts)
        # ring offsets of the record contents (a record may wrap past the end); the order
        # of records inside a chunk does not matter, seq follows this order
        order = np.argsort(positions, kind="stable")
        starts = (positions[order] + _RINGBUF_HDR) & mask
        return starts, lengths[order], cons

    def ring_addresses(self) -> list[tuple[int, int, int, int]]:
        """(data area, mask, consumer word, producer word) addresses of the main ring and the
        rescue ring, for capture.spool's compiled drain (valid while the probe is open)."""
        if self._data_map is None:
            raise RuntimeError("probe is not open")
        rings = []
        for swap in (False, True):
            if swap:
                if self._rescue is None:
                    break
                self._swap_ring()
            try:
                base = int(self._data_u8.ctypes.data)
                rings.append((base + mmap.PAGESIZE, self._ring_mask,
                              int(self._cons_u64.ctypes.data), base))
            finally:
                if swap:
                    self._swap_ring()
        return rings

    def count_drained(self, ring_bytes: int, messages: int, payload_bytes: int,
                      others: int = 0, rescued: int = 0) -> None:
        """Account for records another reader (capture.spool) took out of the rings: messages,
        and ``others`` (connects, execs, malformed records: counted as connects here, which
        only the per-record average of ``stats`` uses)."""
        self._counts.ring_bytes += ring_bytes
        self._counts.messages += messages
        self._counts.connects += others
        self._counts.payload_bytes += payload_bytes
        self._counts.rescued += rescued
        self._counts.polls += 1

    def parse_records(self, data: np.ndarray, starts: np.ndarray, lens: np.ndarray
                      ) -> dict[str, list[pa.RecordBatch]]:
        """Parse records laid out one after another in ``data`` (the spool's layout: a record's
        content at offset ``starts[i]``, ``lens[i]`` bytes long, nothing wrapping) with the
        same code that parses the ring. ``data`` must hold PAGESIZE bytes before offset 0 (the
        ring's producer page) and a power-of-two number of bytes from there, larger than the
        end of the last record plus a record header (the largest fixed header read)."""
        out: dict[str, list[pa.RecordBatch]] = {"messages": [], "connects": [], "execs": []}
        if not len(starts):
            return out
        saved = {a: getattr(self, a) for a in _RING_ATTRS}
        try:
            self._data_u8 = data
            self._data_u32 = data.view(np.uint32)
            self._data_u64 = data.view(np.uint64)
            self._ring_size = len(data) - mmap.PAGESIZE
            self._ring_mask = self._ring_size - 1
            self._parse(starts.astype(np.int64), lens.astype(np.int64), out)
        finally:
            for a, v in saved.items():
                setattr(self, a, v)
        return out

    def _drain_chunk(self, out: dict[str, list[pa.RecordBatch]]) -> int:
        assert self._cons_map is not None
        t0 = time.perf_counter()
        cons, prod = self._positions()
        starts, lens, new_cons = self._walk(cons, prod)
        if len(starts):
            self._parse(starts, lens, out)
        if new_cons != cons:
            self._cons_u64[0] = new_cons  # one 8-byte store (see _map_ring)
            self._counts.ring_bytes += new_cons - cons
        self._counts.chunks += 1
        self._counts.parse_seconds += time.perf_counter() - t0
        return len(starts)

    def _gather(self, starts: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """The fixed headers at ring offsets ``starts`` as a structured array. Every 8-aligned
        ring offset is the start of a row of a strided view (no copy); fancy-indexing its rows
        copies one run per record (~3x faster than an (n, words) index matrix), which only
        the header that wraps past the end of the ring (at most one per pass) needs."""
        words = dtype.itemsize // 8
        size = self._ring_size
        ring = self._data_u64[mmap.PAGESIZE >> 3:]
        rows = np.lib.stride_tricks.as_strided(
            ring, shape=((size >> 3) - words + 1, words), strides=(8, 8), writeable=False)
        wraps = starts + dtype.itemsize > size
        if not wraps.any():
            return np.ascontiguousarray(rows[starts >> 3]).view(dtype).reshape(len(starts))
        out = np.empty((len(starts), words), dtype=np.uint64)
        out[~wraps] = rows[starts[~wraps] >> 3]
        idx = (starts[wraps] >> 3)[:, None] + np.arange(words, dtype=np.int64)
        out[wraps] = ring[idx & (self._ring_mask >> 3)]
        return out.view(dtype).reshape(len(starts))

    def _parse(self, starts: np.ndarray, lens: np.ndarray,
               out: dict[str, list[pa.RecordBatch]]) -> None:
        kinds = self._data_u8[starts + mmap.PAGESIZE]
        known = np.zeros(len(starts), dtype=bool)
        for kind, name, dtype, build in (
            (_KIND_MSG, "messages", _MSG_DTYPE, self._messages_batch),
            (_KIND_CONNECT, "connects", _CONNECT_DTYPE, self._connects_batch),
            (_KIND_EXEC, "execs", _EXEC_DTYPE, self._execs_batch),
        ):
            sel = (kinds == kind) & (lens >= dtype.itemsize)
            if not sel.any():
                continue
            known |= sel
            s = starts[sel]
            out[name].append(build(s, self._gather(s, dtype)))
        self._counts.malformed += int((~known).sum())

    def _common(self, rec: np.ndarray, kind: str) -> list[pa.Array]:
        n = len(rec)
        seq0 = self._seq[kind]
        self._seq[kind] = seq0 + n
        mono = rec["mono_ns"].astype(np.int64)
        return [
            numeric(mono + self.boot_time_ns, TS),
            numeric(mono, pa.int64()),
            numeric(np.arange(seq0, seq0 + n, dtype=np.uint64), pa.uint64()),
            numeric(rec["tgid"], pa.int32()),
            numeric(rec["tid"], pa.int32()),
            numeric(rec["uid"], pa.uint32()),
            _strings16(rec["comm"]),
            numeric(rec["cgroup_id"], pa.uint64()),
            numeric(rec["netns"], pa.uint32()),
        ]

    def _messages_batch(self, starts: np.ndarray, rec: np.ndarray) -> pa.RecordBatch:
        n = len(rec)
        flags = rec["flags"]
        cap = np.minimum(rec["cap_len"], self.cfg.snaplen).astype(np.int64)
        # ring offset of each payload (the header may end exactly at, or wrap past, the end)
        pos = (starts + _MSG_DTYPE.itemsize) & self._ring_mask
        if _HAS_VIEWS:
            payload = self._payload_views(pos, cap)
            total = int(cap.sum())
        else:
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(cap, out=offsets[1:])
            total = int(offsets[-1])
            payload_data = self._payloads(pos, cap, total)
            # n <= _CHUNK_RECORDS and cap <= 8192: offsets fit in int32
            payload = pa.Array.from_buffers(
                pa.binary(), n, [None, pa.py_buffer(offsets.astype(np.int32)),
                                 pa.py_buffer(payload_data)])
        sc = rec["syscall"].astype(np.int8) - 1
        bad_sc = (sc < 0) | (sc >= len(SYSCALLS))
        family = rec["family"]
        proto = rec["protocol"]
        orig = rec["orig_len"]
        cols = self._common(rec, "messages") + [
            _dict(np.where(bad_sc, 0, sc), SYSCALLS, bad_sc),
            _dict(rec["direction"].astype(np.int8), ("send", "recv"), rec["direction"] > 1),
            numeric(rec["fd"], pa.int32()),
            numeric(rec["sock_id"], pa.uint64(), (flags & _F_SOCK) == 0),
            numeric(rec["msg_index"], pa.uint16()),
            _dict((proto == 6).astype(np.int8), ("udp", "tcp"), (proto != 6) & (proto != 17)),
            _dict((family == _AF_INET6).astype(np.int8), ("inet", "inet6"),
                  (family != _AF_INET) & (family != _AF_INET6)),
            _addresses(family, rec["src_addr"], (flags & _F_SRC_ADDR) == 0),
            numeric(rec["src_port"], pa.uint16(), (flags & _F_SRC_PORT) == 0),
            _addresses(family, rec["dst_addr"], (flags & _F_DST_ADDR) == 0),
            numeric(rec["dst_port"], pa.uint16(), (flags & _F_DST_PORT) == 0),
            payload,
            numeric(orig, pa.uint32()),
            bools(cap < orig),
        ]
        self._counts.messages += n
        self._counts.payload_bytes += total
        self._counts.by_syscall += np.bincount(sc[~bad_sc], minlength=len(SYSCALLS))
        return pa.RecordBatch.from_arrays(cols, schema=MESSAGES_SCHEMA)

    def _payload_views(self, pos: np.ndarray, cap: np.ndarray) -> pa.Array:
        """Payloads (cap[i] bytes at ring offset pos[i]) as a binary array: a binary_view
        array whose views point into the mapped ring (no copy), cast to binary, which copies
        each payload once in C++ (~0.09 us per message against ~0.35 for strided rows +
        mask). The cast runs before the consumer position moves on. The payload that wraps
        past the end of the ring (at most one per pass over the ring) is copied into a
        second data buffer, so a chunk with a wrap costs no more than any other."""
        n = len(cap)
        at = pos + mmap.PAGESIZE  # offsets in the data mapping (< 2**31: ring <= 1 GB)
        views = np.empty((n, 4), dtype=np.int32)  # length, prefix, buffer index, offset
        views[:, 0] = cap
        long_ = cap > 12
        # pos is 8-aligned and < ring size - 4: the 4-byte prefix is one aligned word
        prefix = self._data_u32[at >> 2]
        prefix[~long_] = 0
        views[:, 1] = prefix.view(np.int32)
        views[:, 2] = 0
        views[:, 3] = at
        short = np.nonzero(~long_)[0]
        if len(short):  # up to 12 bytes live inside the view itself
            idx = ((pos[short, None] + np.arange(12)) & self._ring_mask) + mmap.PAGESIZE
            inline = self._data_u8[idx]
            inline[np.arange(12) >= cap[short, None]] = 0
            views.view(np.uint8).reshape(n, 16)[short, 4:] = inline
        buffers = [None, pa.py_buffer(views), pa.py_buffer(self._data_u8)]
        wrapped = np.nonzero(long_ & (pos + cap > self._ring_size))[0]
        if len(wrapped):
            ring = self._data_u8[mmap.PAGESIZE:]
            parts = []
            offset = 0
            for i in wrapped:
                p, c = int(pos[i]), int(cap[i])
                parts += [ring[p:], ring[: c - (self._ring_size - p)]]
                views[i, 2:] = (1, offset)
                offset += c
            buffers.append(pa.py_buffer(np.concatenate(parts)))
        arr = pa.Array.from_buffers(pa.binary_view(), n, buffers)
        return arr.cast(pa.binary())

    def _payloads(self, pos: np.ndarray, cap: np.ndarray, total: int) -> np.ndarray:
        """Concatenate cap[i] bytes at ring offsets pos[i] (8-aligned) into one array."""
        if not total:
            return np.zeros(0, dtype=np.uint8)
        maxcap = int(cap.max())
        size = self._ring_size
        ring = self._data_u8[mmap.PAGESIZE:]
        # rows cost n*maxcap bytes (+ as many mask bytes), byte indices ~16 bytes per byte:
        # take rows unless a few big payloads would make most of the rows slack
        if int(pos.max()) + maxcap <= size and maxcap * len(cap) <= 8 * total:
            # every 8-aligned ring offset as the start of a maxcap-byte row (a strided view,
            # no copy): fancy-indexing rows copies n short runs, the mask drops the slack
            rows = np.lib.stride_tricks.as_strided(
                ring, shape=((size - maxcap) // 8 + 1, maxcap), strides=(8, 1),
                writeable=False)
            block = rows[pos >> 3]
            return block[np.arange(maxcap) < cap[:, None]]
        # a record wraps past the end of the ring, or the sizes vary a lot: byte indices
        offsets = np.zeros(len(cap) + 1, dtype=np.int64)
        np.cumsum(cap, out=offsets[1:])
        src = np.repeat(pos - offsets[:-1], cap)
        src += np.arange(total, dtype=np.int64)
        src &= self._ring_mask
        return ring[src]

    def _connects_batch(self, starts: np.ndarray, rec: np.ndarray) -> pa.RecordBatch:
        family = rec["family"]
        proto = rec["protocol"]
        cols = self._common(rec, "connects") + [
            numeric(rec["fd"], pa.int32()),
            _dict((family == _AF_INET6).astype(np.int8), ("inet", "inet6"),
                  (family != _AF_INET) & (family != _AF_INET6)),
            _dict((proto == 6).astype(np.int8), ("udp", "tcp"), (proto != 6) & (proto != 17)),
            _addresses(family, rec["dst_addr"], np.zeros(len(rec), dtype=bool)),
            numeric(rec["dst_port"], pa.uint16()),
            numeric(rec["result"], pa.int32()),
            numeric(rec["latency_ns"], pa.int64()),
        ]
        self._counts.connects += len(rec)
        return pa.RecordBatch.from_arrays(cols, schema=CONNECTS_SCHEMA)

    def _execs_batch(self, starts: np.ndarray, rec: np.ndarray) -> pa.RecordBatch:
        names = [bytes(v).split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
                 for v in rec["filename"]]
        cols = self._common(rec, "execs") + [
            numeric(rec["ppid"], pa.int32()),
            arrow_array(names, pa.string()),
        ]
        self._counts.execs += len(rec)
        return pa.RecordBatch.from_arrays(cols, schema=EXECS_SCHEMA)

    # ---- counters ----
    def lost(self) -> dict[str, int]:
        """Cumulative lost-event counters by cause (summed over CPUs); every cause present."""
        if not self._maps:
            raise RuntimeError("probe is not open")
        fd = self._maps["lost"]
        values = (ctypes.c_uint64 * self._ncpus)()
        result = {}
        for i, cause in enumerate(LOST_CAUSES):
            found = _map_op(_BPF_MAP_LOOKUP_ELEM, fd, ctypes.c_uint32(i), values)
            result[cause] = int(sum(values)) if found else 0
        return result

    def stats(self) -> dict[str, Any]:
        """Events and bytes received so far, and the consumer's own cost."""
        c = self._counts
        return {
            "messages": c.messages, "connects": c.connects, "execs": c.execs,
            "payload_bytes": c.payload_bytes, "ring_bytes": c.ring_bytes,
            "ring_pending_bytes": self.pending_bytes() if self._data_map is not None else 0,
            "polls": c.polls, "chunks": c.chunks, "parse_seconds": round(c.parse_seconds, 6),
            "malformed_records": c.malformed,
            "rescued_records": c.rescued,
            "messages_by_syscall": {name: int(v) for name, v in zip(SYSCALLS, c.by_syscall)
                                    if v},
        }


def _run_loader(request: dict[str, Any]) -> tuple[dict[str, int], list[int]]:
    """Run capture._loader; return the parent's map fds by name and the attachment fds."""
    _check_environment(need_bcc=False)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    # stderr to a file: a failed load prints the whole verifier log, far more than a pipe holds
    with tempfile.TemporaryFile() as errfile:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "capture._loader", str(child.fileno())],
                pass_fds=[child.fileno()], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=errfile, cwd=str(Path(__file__).resolve().parents[1]))
            child.close()
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(request).encode())
            proc.stdin.close()
            parent.settimeout(_LOADER_TIMEOUT)
            try:
                msg, fds, _flags, _addr = socket.recv_fds(parent, 1 << 16, 512)
            except TimeoutError:
                proc.kill()
                proc.wait()
                raise LoadFailed(
                    f"the BPF loader did not answer within {_LOADER_TIMEOUT:.0f}s") from None
            proc.wait(timeout=_LOADER_TIMEOUT)
        finally:
            parent.close()
            child.close()
        errfile.seek(0)
        stderr = errfile.read().decode(errors="replace")
    if not msg:
        tail = stderr.strip().splitlines()[-3:]
        raise LoadFailed(f"the BPF loader exited with status {proc.returncode}: "
                         f"{' | '.join(tail)}")
    header = json.loads(msg)
    if not header.get("ok"):
        for fd in fds:
            os.close(fd)
        cls = _ERRORS.get(header.get("error", ""), LoadFailed)
        detail = stderr.strip().splitlines()
        message = header.get("message", "")
        if cls is LoadFailed and detail:
            # the verifier/compiler's last lines say why
            message += " | " + " | ".join(detail[-4:])
        raise cls(message)
    names = header["maps"]
    return dict(zip(names, fds[: len(names)])), list(fds[len(names):])


_LOADER_TIMEOUT = 180.0
_ERRORS: dict[str, type[CaptureError]] = {
    cls.__name__: cls
    for cls in (BccMissing, HeadersMissing, LoadFailed, NotPermitted, TracefsMissing)
}


_DICT_VALUES: dict[tuple[str, ...], pa.Array] = {}


def _dict(indices: np.ndarray, values: tuple[str, ...], null: np.ndarray) -> pa.Array:
    dictionary = _DICT_VALUES.get(values)
    if dictionary is None:
        dictionary = _DICT_VALUES[values] = arrow_array(values, pa.string())
    idx = numeric(indices, pa.int8(), np.asarray(null, dtype=bool))
    return pa.DictionaryArray.from_arrays(idx, dictionary)


def _indices(encoded: pa.DictionaryArray) -> np.ndarray:
    """The int32 indices of a dictionary_encode() result as numpy (nulls read as 0)."""
    ind = encoded.indices
    buf = ind.buffers()[1]
    assert buf is not None
    return np.frombuffer(buf, dtype=np.int32)[ind.offset: ind.offset + len(ind)]


def _few_distinct(h: np.ndarray, limit: int = 4) -> tuple[np.ndarray, np.ndarray] | None:
    """(first, inverse) of a uint64 vector with at most ``limit`` distinct values, found by
    comparisons alone (no hash table: ~2 ns per value against ~15); None if there are more.
    A busy node's batch usually holds a handful of comms and addresses."""
    n = len(h)
    same = h == h[0]
    if same.all():
        return np.zeros(1, dtype=np.int64), np.zeros(n, dtype=np.int64)
    inverse = np.zeros(n, dtype=np.int64)
    first = [0]
    left = ~same
    while (j := int(left.argmax())) or left[0]:
        if len(first) == limit:
            return None
        match = h == h[j]
        inverse[match] = len(first)
        first.append(j)
        left &= ~match
    return np.array(first, dtype=np.int64), inverse


def _unique_rows(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of a (n, w) uint64 matrix: (index of one row per distinct value,
    inverse mapping each row to its distinct value). Hashes rows to one uint64, groups the
    hashes (by comparison when there are few, else with Arrow's hash table: no sort), then
    checks every row against its group's representative, so a hash collision falls back to
    an exact (sorting) unique. A one-word row is its own hash: nothing to check."""
    n = len(words)
    if not n:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if words.shape[1] == 1:
        h = np.ascontiguousarray(words[:, 0])
    else:
        # odd multipliers: a bijection per word, so rows differing in one word never collide
        h = words[:, 0] * np.uint64(0x9E3779B97F4A7C15)
        for j in range(1, words.shape[1]):
            h ^= words[:, j] * _MULTS[j % len(_MULTS)]
    few = _few_distinct(h)
    if few is not None:
        first, inverse = few
    else:
        encoded = pa.Array.from_buffers(pa.uint64(), n, [None, pa.py_buffer(h)]
                                        ).dictionary_encode()
        inverse = _indices(encoded).astype(np.int64)
        first = np.empty(len(encoded.dictionary), dtype=np.int64)
        first[inverse] = np.arange(n, dtype=np.int64)  # any row of each value will do
    if words.shape[1] > 1:
        rep = first[inverse] if len(first) > 1 else np.zeros(n, dtype=np.int64)
        if not all(np.array_equal(words[:, j][rep], words[:, j])
                   for j in range(words.shape[1])):
            # a hash collision: do it exactly
            _, first, inverse = np.unique(words, axis=0, return_index=True,
                                          return_inverse=True)
            inverse = inverse.reshape(-1)
    return first, inverse


_MULTS = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F),
          np.uint64(0x165667B19E3779F9))


def _take(texts: list[str | None], inverse: np.ndarray) -> pa.Array:
    """texts[inverse[i]] for every row, as a string array. Values of one byte length (one
    value, or 'dnsperf' and 'unbound') are laid out with numpy; others with Arrow's take."""
    n = len(inverse)
    data = [t.encode("utf-8", "backslashreplace") for t in texts if t is not None]
    width = len(data[0]) if data else 0
    # width 0 (every name empty: prctl(PR_SET_NAME, "") makes one) takes Arrow's path
    if len(data) == len(texts) and all(len(d) == width for d in data) and n and width:
        offsets = np.arange(0, (n + 1) * width, width, dtype=np.int64)
        if offsets[-1] < 2**31:
            chars = (b"".join(data) * n if len(data) == 1 else
                     np.frombuffer(b"".join(data), dtype=np.uint8
                                   ).reshape(len(data), width)[inverse])
            return pa.Array.from_buffers(pa.string(), n, [
                None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(chars)])
    return arrow_array(texts, pa.string()).take(numeric(inverse, pa.int32()))


def _strings16(raw: np.ndarray) -> pa.Array:
    """Fixed 16-byte NUL-padded names -> string array (decoded once per distinct value)."""
    words = np.ascontiguousarray(raw).view(np.uint64).reshape(len(raw), 2)
    first, inverse = _unique_rows(words)
    texts: list[str | None] = [
        bytes(raw[i]).split(b"\0", 1)[0].decode("utf-8", "backslashreplace") for i in first]
    return _take(texts, inverse)


def _format_addr(family: int, raw: bytes) -> str | None:
    if family == _AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == _AF_INET6:
        if raw[:12] == b"\0" * 10 + b"\xff\xff":  # v4-mapped: print as IPv4
            return socket.inet_ntop(socket.AF_INET, raw[12:16])
        return socket.inet_ntop(socket.AF_INET6, raw)
    return None


_V4_MAPPED = np.uint64(0xFFFF0000)  # bytes 8..11 of a v4-mapped address, little-endian
_LOW32 = np.uint64(0xFFFFFFFF)
_NO_ADDR = np.uint64(1 << 32)


def _addresses(family: np.ndarray, raw: np.ndarray, null: np.ndarray) -> pa.Array:
    """16-byte addresses (+ family) -> strings, formatting each distinct address once.

    IPv4 and v4-mapped addresses (printed alike) and nulls fit one uint64 key exactly, so the
    usual batch needs no row hashing; a batch with real IPv6 addresses hashes whole rows."""
    n = len(raw)
    w = np.ascontiguousarray(raw).view(np.uint64).reshape(n, 2)
    null = np.asarray(null, dtype=bool)
    inet = family == _AF_INET
    inet6 = family == _AF_INET6
    mapped = inet6 & (w[:, 0] == 0) & ((w[:, 1] & _LOW32) == _V4_MAPPED)
    none = null | ~(inet | inet6)
    if not (inet6 & ~mapped & ~none).any():
        key = np.where(inet, w[:, 0] & _LOW32, w[:, 1] >> np.uint64(32))
        key[none] = _NO_ADDR
        first, inverse = _unique_rows(key.reshape(n, 1))
        texts = [None if key[i] == _NO_ADDR
                 else socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(key[i])))
                 for i in first]
        return _take(texts, inverse)
    words = np.empty((n, 3), dtype=np.uint64)
    words[:, :2] = w
    words[:, 2] = family
    words[none] = 0  # every null row one value
    first, inverse = _unique_rows(words)
    texts = [None if none[i] else _format_addr(int(family[i]), bytes(raw[i])) for i in first]
    return _take(texts, inverse)
