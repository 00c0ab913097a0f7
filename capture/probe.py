"""The kernel side of ``dnstrail record``: load ``bpf/dnstrail.bpf.c`` and read its events in bulk.

Usage (the recorder's contract; keep this shape)::

    from capture.probe import ProbeConfig, Probe, render_source

    cfg = ProbeConfig(ports=(53,), pids=(), comms=(), cgroup_ids=(), snaplen=1232,
                      ringbuf_mb=64, trace_connects=True, trace_execs=True)
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

How events reach Python: the BPF program writes variable-size records into a BPF ring buffer.
This module maps the ring buffer itself (as libbpf does: consumer page read-write, producer page
and the twice-mapped data area read-only), walks all committed records in one pass, gathers
their fixed headers with numpy into column arrays and the payloads into one Arrow binary
buffer, and advances the consumer position once per chunk. No Python code runs per event except
the record-length walk; ``poll`` sleeps between checks instead of waking up per event.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import secrets
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa

from bpf import source_path
from capture import _btf
from capture.errors import (
    BccMissing,
    HeadersMissing,
    LoadFailed,
    NotPermitted,
    TracefsMissing,
)
from capture.schema import CONNECTS_SCHEMA, EXECS_SCHEMA, MESSAGES_SCHEMA

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

_RINGBUF_BUSY = 1 << 31
_RINGBUF_DISCARD = 1 << 30
_RINGBUF_HDR = 8
#: Records parsed into one set of RecordBatches before the consumer position moves on.
_CHUNK_RECORDS = 65536


@dataclass(frozen=True)
class ProbeConfig:
    """What the probe records. Empty pids/comms/cgroup_ids = no filter (see module doc)."""

    ports: tuple[int, ...] = (53,)
    pids: tuple[int, ...] = ()
    comms: tuple[str, ...] = ()
    cgroup_ids: tuple[int, ...] = ()
    snaplen: int = 1232
    ringbuf_mb: int = 64
    trace_connects: bool = True
    trace_execs: bool = True
    #: Turn the cgroup filter on even with no ids yet (they come later via set_cgroup_ids).
    filter_cgroups: bool = False
    #: Messages read from one sendmmsg/recvmmsg vector; the rest are counted as lost.
    max_mmsg: int = 16
    #: iovecs read per msghdr/readv/writev; a payload spread over more is cut (counted).
    max_iov: int = 4

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
        for comm in self.comms:
            if not comm or len(comm.encode()) > 15:
                raise ValueError(f"comm {comm!r}: the kernel keeps at most 15 bytes")


def _ringbuf_pages(cfg: ProbeConfig) -> int:
    """Ring buffer size in pages: ringbuf_mb rounded down to a power of two."""
    page = mmap.PAGESIZE
    want = cfg.ringbuf_mb * 1024 * 1024 // page
    return 1 << (want.bit_length() - 1)


def _defines(cfg: ProbeConfig, salt: int, offsets: dict[str, int]) -> dict[str, str]:
    defs = {
        "MAX_PAYLOAD": str(cfg.snaplen),
        "OFF_MASK": str((1 << (cfg.snaplen + 1).bit_length()) - 1),
        "RINGBUF_PAGES": str(_ringbuf_pages(cfg)),
        "MAX_MMSG": str(cfg.max_mmsg),
        "MAX_IOV": str(cfg.max_iov),
        "FILTER_PIDS": "1" if cfg.pids else "0",
        "FILTER_COMMS": "1" if cfg.comms else "0",
        "FILTER_PORTS": "1" if cfg.ports else "0",
        "TRACE_CONNECTS": "1" if cfg.trace_connects else "0",
        "TRACE_EXECS": "1" if cfg.trace_execs else "0",
        "SOCK_SALT": f"0x{salt:016x}ULL",
    }
    defs.update({k: str(v) for k, v in offsets.items()})
    return defs


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


def _check_environment() -> Any:
    """Import bcc and check what loading needs; raise the matching CaptureError."""
    try:
        import bcc  # lazy: the analyzer must not need bcc
    except ImportError:
        raise BccMissing() from None
    if os.geteuid() != 0:
        raise NotPermitted()
    if not any(Path(p, "events", "syscalls").is_dir()
               for p in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")):
        raise TracefsMissing()
    release = platform.release()
    if not Path(f"/lib/modules/{release}/build").exists():
        raise HeadersMissing()
    return bcc


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
    kinds_unknown: int = 0
    by_syscall: dict[str, int] = field(default_factory=dict)


class Probe:
    """The loaded BPF program and its ring buffer reader. Use as a context manager."""

    def __init__(self, cfg: ProbeConfig) -> None:
        self.cfg = cfg
        self.boot_time_ns = 0
        self._bpf: Any = None
        self._cons_map: mmap.mmap | None = None
        self._data_map: mmap.mmap | None = None
        self._counts = _Counts()
        self._seq = {"messages": 0, "connects": 0, "execs": 0}
        self._data_u8 = np.zeros(0, dtype=np.uint8)
        self._ring_size = 0
        self._ring_mask = 0

    # ---- lifecycle ----
    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        bcc = _check_environment()
        cfg = self.cfg
        defs = _defines(cfg, secrets.randbits(64), _kernel_offsets())
        cflags = [f"-D{k}={v}" for k, v in defs.items()]
        cflags.append("-Wno-unused-function")
        try:
            self._bpf = bcc.BPF(src_file=str(source_path(SOURCE_NAME)).encode(), cflags=cflags)
        except PermissionError as exc:
            raise NotPermitted(f"not permitted to load BPF programs: {exc}") from None
        except Exception as exc:  # noqa: BLE001  (bcc raises bare Exception on failure)
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise LoadFailed(f"the BPF program failed to compile or load: {msg} "
                             "(run with --print-bpf to see the C source; check dmesg)") from None
        try:
            self._fill_filters()
            self._map_ring(_ringbuf_pages(cfg) * mmap.PAGESIZE)
        except Exception:
            self.close()
            raise
        self.boot_time_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)

    def close(self) -> None:
        self._data_u8 = np.zeros(0, dtype=np.uint8)  # drop the view before unmapping
        for m in (self._cons_map, self._data_map):
            if m is not None:
                m.close()
        self._cons_map = self._data_map = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def _fill_filters(self) -> None:
        b = self._bpf
        one = ctypes.c_uint8(1)
        ports = b["ports"]
        for port in self.cfg.ports:
            ports[ports.Key(port)] = one
        pids = b["pids"]
        for pid in self.cfg.pids:
            pids[pids.Key(pid)] = one
        comms = b["comms"]
        for comm in self.cfg.comms:
            key = comms.Key()
            raw = comm.encode()
            ctypes.memmove(ctypes.addressof(key), raw, len(raw))
            comms[key] = one
        if self.cfg.cgroup_ids or self.cfg.filter_cgroups:
            self.set_cgroup_ids(self.cfg.cgroup_ids)

    def set_cgroup_ids(self, ids: Any) -> None:
        """Replace the cgroup filter set with ``ids`` (cgroup v2 ids) and turn the filter on."""
        if self._bpf is None:
            raise RuntimeError("probe is not open")
        table = self._bpf["cgroups"]
        new = {int(i) for i in ids}
        old = {int(k.value) for k in table}
        one = ctypes.c_uint8(1)
        for cg in new - old:
            table[table.Key(cg)] = one
        for cg in old - new:
            del table[table.Key(cg)]
        config = self._bpf["config"]
        config[config.Key(0)] = config.Leaf(1)

    def _map_ring(self, size: int) -> None:
        fd = self._bpf["events"].map_fd
        page = mmap.PAGESIZE
        self._ring_size = size
        self._ring_mask = size - 1
        self._cons_map = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                                   offset=0)
        self._data_map = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                                   offset=page)
        self._data_u8 = np.frombuffer(self._data_map, dtype=np.uint8)

    # ---- reading ----
    def _positions(self) -> tuple[int, int]:
        assert self._cons_map is not None and self._data_map is not None
        cons = struct.unpack_from("<Q", self._cons_map, 0)[0]
        prod = struct.unpack_from("<Q", self._data_map, 0)[0]
        return cons, prod

    def pending_bytes(self) -> int:
        """Bytes committed to the ring buffer and not consumed yet."""
        cons, prod = self._positions()
        return prod - cons

    def poll(self, timeout_ms: int = 100) -> dict[str, list[pa.RecordBatch]]:
        """Wait up to timeout_ms (less when the ring is a quarter full), then drain it."""
        if self._data_map is None:
            raise RuntimeError("probe is not open")
        deadline = time.monotonic() + max(timeout_ms, 0) / 1000
        early = self._ring_size // 4
        while True:
            if self.pending_bytes() >= early:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, 0.01))
        return self.drain()

    def drain(self) -> dict[str, list[pa.RecordBatch]]:
        """Parse every committed record now, without waiting."""
        out: dict[str, list[pa.RecordBatch]] = {"messages": [], "connects": [], "execs": []}
        self._counts.polls += 1
        while True:
            n = self._drain_chunk(out)
            if n < _CHUNK_RECORDS:
                break
        return out

    def _drain_chunk(self, out: dict[str, list[pa.RecordBatch]]) -> int:
        assert self._cons_map is not None and self._data_map is not None
        t0 = time.perf_counter()
        cons, prod = self._positions()
        start_cons = cons
        data = self._data_map
        page = mmap.PAGESIZE
        mask = self._ring_mask
        unpack = struct.unpack_from
        starts: list[int] = []
        lens: list[int] = []
        while cons < prod and len(starts) < _CHUNK_RECORDS:
            off = page + (cons & mask)
            hdr = unpack("<I", data, off)[0]
            if hdr & _RINGBUF_BUSY:
                break
            length = hdr & ~(_RINGBUF_BUSY | _RINGBUF_DISCARD)
            if not hdr & _RINGBUF_DISCARD:
                starts.append(off + _RINGBUF_HDR)
                lens.append(length)
            cons += (length + _RINGBUF_HDR + 7) & ~7
        if starts:
            self._parse(np.array(starts, dtype=np.int64), np.array(lens, dtype=np.int64), out)
        if cons != start_cons:
            struct.pack_into("<Q", self._cons_map, 0, cons)
            self._counts.ring_bytes += cons - start_cons
        self._counts.chunks += 1
        self._counts.parse_seconds += time.perf_counter() - t0
        return len(starts)

    def _gather(self, starts: np.ndarray, dtype: np.dtype) -> np.ndarray:
        idx = starts[:, None] + np.arange(dtype.itemsize, dtype=np.int64)
        return self._data_u8[idx].view(dtype).reshape(len(starts))

    def _parse(self, starts: np.ndarray, lens: np.ndarray,
               out: dict[str, list[pa.RecordBatch]]) -> None:
        kinds = self._data_u8[starts]
        for kind, name, dtype, build in (
            (_KIND_MSG, "messages", _MSG_DTYPE, self._messages_batch),
            (_KIND_CONNECT, "connects", _CONNECT_DTYPE, self._connects_batch),
            (_KIND_EXEC, "execs", _EXEC_DTYPE, self._execs_batch),
        ):
            sel = kinds == kind
            if not sel.any():
                continue
            s = starts[sel]
            ok = lens[sel] >= dtype.itemsize
            self._counts.kinds_unknown += int((~ok).sum())
            s = s[ok]
            if len(s) == 0:
                continue
            out[name].append(build(s, self._gather(s, dtype)))
        self._counts.kinds_unknown += int((~np.isin(kinds, (1, 2, 3))).sum())

    def _common(self, rec: np.ndarray, kind: str) -> list[pa.Array]:
        n = len(rec)
        seq0 = self._seq[kind]
        self._seq[kind] = seq0 + n
        mono = rec["mono_ns"].astype(np.int64)
        return [
            pa.array(mono + self.boot_time_ns, type=pa.int64()).cast(pa.timestamp("ns", tz="UTC")),
            pa.array(mono, type=pa.int64()),
            pa.array(np.arange(seq0, seq0 + n, dtype=np.uint64), type=pa.uint64()),
            pa.array(rec["tgid"], type=pa.int32()),
            pa.array(rec["tid"], type=pa.int32()),
            pa.array(rec["uid"], type=pa.uint32()),
            _strings16(rec["comm"]),
            pa.array(rec["cgroup_id"], type=pa.uint64()),
            pa.array(rec["netns"], type=pa.uint32()),
        ]

    def _messages_batch(self, starts: np.ndarray, rec: np.ndarray) -> pa.RecordBatch:
        n = len(rec)
        flags = rec["flags"]
        cap = rec["cap_len"].astype(np.int64)
        # payload: gather rec payload bytes (after the 112-byte header) into one buffer
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(cap, out=offsets[1:])
        total = int(offsets[-1])
        if total:
            src = np.repeat(starts + _MSG_DTYPE.itemsize - offsets[:-1], cap)
            src += np.arange(total, dtype=np.int64)
            payload_data = self._data_u8[src]
        else:
            payload_data = np.zeros(0, dtype=np.uint8)
        if total < 2**31:
            payload = pa.Array.from_buffers(
                pa.binary(), n, [None, pa.py_buffer(offsets.astype(np.int32)),
                                 pa.py_buffer(payload_data)])
        else:  # cannot happen with a <=1 GiB ring and 8 KiB snaplen, but stay correct
            payload = pa.Array.from_buffers(
                pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(payload_data)]
            ).cast(pa.binary())
        sc = rec["syscall"].astype(np.int8) - 1
        bad_sc = (sc < 0) | (sc >= len(SYSCALLS))
        family = rec["family"]
        proto = rec["protocol"]
        cols = self._common(rec, "messages") + [
            _dict(np.where(bad_sc, 0, sc), SYSCALLS, bad_sc),
            _dict(rec["direction"].astype(np.int8), ("send", "recv"), rec["direction"] > 1),
            pa.array(rec["fd"], type=pa.int32()),
            pa.array(rec["sock_id"], type=pa.uint64(), mask=(flags & _F_SOCK) == 0),
            pa.array(rec["msg_index"], type=pa.uint16()),
            _dict(np.where(proto == 6, 1, 0).astype(np.int8), ("udp", "tcp"),
                  (proto != 6) & (proto != 17)),
            _dict(np.where(family == _AF_INET6, 1, 0).astype(np.int8), ("inet", "inet6"),
                  (family != _AF_INET) & (family != _AF_INET6)),
            _addresses(family, rec["src_addr"], (flags & _F_SRC_ADDR) == 0),
            pa.array(rec["src_port"], type=pa.uint16(), mask=(flags & _F_SRC_PORT) == 0),
            _addresses(family, rec["dst_addr"], (flags & _F_DST_ADDR) == 0),
            pa.array(rec["dst_port"], type=pa.uint16(), mask=(flags & _F_DST_PORT) == 0),
            payload,
            pa.array(rec["orig_len"], type=pa.uint32()),
            pa.array(cap < rec["orig_len"], type=pa.bool_()),
        ]
        self._counts.messages += n
        self._counts.payload_bytes += total
        for code, count in zip(*np.unique(sc[~bad_sc], return_counts=True)):
            name = SYSCALLS[int(code)]
            self._counts.by_syscall[name] = self._counts.by_syscall.get(name, 0) + int(count)
        return pa.RecordBatch.from_arrays(cols, schema=MESSAGES_SCHEMA)

    def _connects_batch(self, starts: np.ndarray, rec: np.ndarray) -> pa.RecordBatch:
        family = rec["family"]
        proto = rec["protocol"]
        cols = self._common(rec, "connects") + [
            pa.array(rec["fd"], type=pa.int32()),
            _dict(np.where(family == _AF_INET6, 1, 0).astype(np.int8), ("inet", "inet6"),
                  (family != _AF_INET) & (family != _AF_INET6)),
            _dict(np.where(proto == 6, 1, 0).astype(np.int8), ("udp", "tcp"),
                  (proto != 6) & (proto != 17)),
            _addresses(family, rec["dst_addr"], np.zeros(len(rec), dtype=bool)),
            pa.array(rec["dst_port"], type=pa.uint16()),
            pa.array(rec["result"], type=pa.int32()),
            pa.array(rec["latency_ns"], type=pa.int64()),
        ]
        self._counts.connects += len(rec)
        return pa.RecordBatch.from_arrays(cols, schema=CONNECTS_SCHEMA)

    def _execs_batch(self, starts: np.ndarray, rec: np.ndarray) -> pa.RecordBatch:
        names = [bytes(v).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                 .encode("utf-8", "backslashreplace").decode() for v in rec["filename"]]
        cols = self._common(rec, "execs") + [
            pa.array(rec["ppid"], type=pa.int32()),
            pa.array(names, type=pa.string()),
        ]
        self._counts.execs += len(rec)
        return pa.RecordBatch.from_arrays(cols, schema=EXECS_SCHEMA)

    # ---- counters ----
    def lost(self) -> dict[str, int]:
        """Cumulative lost-event counters by cause (summed over CPUs); every cause present."""
        if self._bpf is None:
            raise RuntimeError("probe is not open")
        table = self._bpf["lost"]
        return {cause: int(sum(table[table.Key(i)])) for i, cause in enumerate(LOST_CAUSES)}

    def stats(self) -> dict[str, Any]:
        """Events and bytes received so far, and the consumer's own cost."""
        c = self._counts
        return {
            "messages": c.messages, "connects": c.connects, "execs": c.execs,
            "payload_bytes": c.payload_bytes, "ring_bytes": c.ring_bytes,
            "ring_pending_bytes": self.pending_bytes() if self._data_map is not None else 0,
            "polls": c.polls, "chunks": c.chunks, "parse_seconds": round(c.parse_seconds, 6),
            "malformed_records": c.kinds_unknown, "messages_by_syscall": dict(c.by_syscall),
        }


def _dict(indices: np.ndarray, values: tuple[str, ...], null: np.ndarray) -> pa.Array:
    idx = pa.array(indices.astype(np.int8), type=pa.int8(), mask=np.asarray(null, dtype=bool))
    return pa.DictionaryArray.from_arrays(idx, pa.array(values, type=pa.string()))


def _strings16(raw: np.ndarray) -> pa.Array:
    """Fixed 16-byte NUL-padded names -> string array (decoded once per distinct value)."""
    uniq, inverse = np.unique(raw, return_inverse=True)
    texts = [bytes(u).split(b"\0", 1)[0].decode("utf-8", "backslashreplace") for u in uniq]
    return pa.array(texts, type=pa.string()).take(pa.array(inverse.reshape(-1), type=pa.int32()))


def _format_addr(family: int, raw: bytes) -> str | None:
    if family == _AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == _AF_INET6:
        if raw[:12] == b"\0" * 10 + b"\xff\xff":  # v4-mapped: print as IPv4
            return socket.inet_ntop(socket.AF_INET, raw[12:16])
        return socket.inet_ntop(socket.AF_INET6, raw)
    return None


def _addresses(family: np.ndarray, raw: np.ndarray, null: np.ndarray) -> pa.Array:
    """16-byte addresses (+ family) -> strings, formatting each distinct address once."""
    n = len(raw)
    keyed = np.empty(n, dtype=[("f", "u1"), ("a", "V16")])
    keyed["f"] = family
    keyed["a"] = raw
    uniq, inverse = np.unique(keyed, return_inverse=True)
    texts = [_format_addr(int(u["f"]), bytes(u["a"])) for u in uniq]
    arr = pa.array(texts + [None], type=pa.string())
    idx = np.where(np.asarray(null, dtype=bool), len(texts), inverse.reshape(-1)).astype(np.int32)
    return arr.take(pa.array(idx, type=pa.int32()))
