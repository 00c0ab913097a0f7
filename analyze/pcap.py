"""Import a pcap or pcapng file as a dnstrail capture directory (``dnstrail import``).

The reader is written here (no dependency): classic pcap in both byte orders with micro- or
nanosecond timestamps, and pcapng (several sections and interfaces, ``if_tsresol`` and
``if_tsoffset``, enhanced, simple and obsolete packet blocks). Link types: Ethernet (1, with
802.1Q/802.1ad VLAN tags), Linux cooked SLL (113) and SLL2 (276), BSD loopback/NULL (0) and
OpenBSD LOOP (108), raw IP (101, 12, 14, 228 IPv4, 229 IPv6). IPv4 and IPv6 (extension headers
walked).

What is kept (docs/decode.md): every UDP datagram and TCP segment with payload whose source or
destination port is a DNS port (53 plus ``ports``) becomes a ``messages`` row, damaged or not
(a cut datagram keeps its bytes with ``truncated`` True); every TCP SYN (any port) becomes a
``connects`` row so the DNS-to-connect analysis works on pcaps. Retransmitted TCP segments are
dropped by sequence number (counted); a hole in a stream is recorded on the chunk before it as
missing bytes (``orig_len`` larger than the payload). Everything else is counted in the
summary, never dropped silently.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from analyze.errors import AppendMismatch, OutputExists, PcapError, UnsupportedLinkType
from capture import schema
from capture.writer import fsync_path, sha256_file, write_manifest_file

#: Ports always imported as DNS.
DNS_PORT = 53
#: Rows per messages file before the importer starts the next one.
ROWS_PER_FILE = 250_000
#: Largest packet record accepted (pcap's largest snaplen); anything bigger is damage.
MAX_PACKET = 262_144
#: Largest pcapng block accepted.
MAX_BLOCK = 16 << 20
#: TCP flows followed at once (sequence numbers for de-duplication); past this the table is
#: started afresh, as the SYN table is, so that a pcap of millions of flows runs in bounded
#: memory (a flow seen again then starts from its next segment).
MAX_FLOWS = 1 << 20
#: Timestamps outside this range (ns since 1970; year 1970..2262) are pinned to it. The top is
#: one below the int64 maximum, which DuckDB reads as the timestamp ``infinity`` (a report on
#: such a capture failed).
_TS_MIN, _TS_MAX = 0, (1 << 63) - 2

LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP = 0, 1, 101, 108
LINKTYPE_SLL, LINKTYPE_SLL2, LINKTYPE_IPV4, LINKTYPE_IPV6 = 113, 276, 228, 229
_RAW_TYPES = frozenset((LINKTYPE_RAW, 12, 14))
SUPPORTED_LINK_TYPES = frozenset(
    (LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_LOOP, LINKTYPE_SLL, LINKTYPE_SLL2,
     LINKTYPE_IPV4, LINKTYPE_IPV6)
) | _RAW_TYPES

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000), b"\xa1\xb2\xc3\xd4": (">", 1_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1), b"\xa1\xb2\x3c\x4d": (">", 1),
}
_PCAPNG_SHB = 0x0A0D0D0A
_VLAN_TYPES = (0x8100, 0x88A8, 0x9100)
_AF_INET6_VALUES = (10, 24, 28, 30)


@dataclass
class ImportSummary:
    """What an import read, wrote and left out."""

    path: str
    out_dir: str
    packets: int = 0
    messages: int = 0
    udp: int = 0
    tcp: int = 0
    connects: int = 0
    truncated: int = 0
    skipped_non_dns: int = 0
    skipped_malformed: int = 0
    skipped_fragments: int = 0
    skipped_link_type: int = 0
    tcp_duplicates: int = 0
    tcp_holes: int = 0
    syn_retransmissions: int = 0
    bad_timestamps: int = 0
    file_damaged: str | None = None
    link_types: list[int] = field(default_factory=list)
    first_ts: str | None = None
    last_ts: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Packet:
    ts_ns: int
    linktype: int
    data: bytes
    orig_len: int


# ---------------------------------------------------------------------------------------------
# File readers


def _read_exact(f: IO[bytes], n: int) -> bytes | None:
    data = f.read(n)
    if len(data) == n:
        return data
    return None if not data else data


def _pcap_packets(f: IO[bytes], head: bytes, path: str,
                  summary: ImportSummary) -> Iterator[_Packet]:
    endian, ns_per_unit = _PCAP_MAGICS[head[:4]]
    rest = f.read(20)
    if len(rest) < 20:
        raise PcapError(f"{path}: pcap file header is cut short")
    _, _, _, _, _snaplen, network = struct.unpack(endian + "HHiIII", rest)
    linktype = network & 0x0FFFFFFF
    if linktype not in SUPPORTED_LINK_TYPES:
        raise UnsupportedLinkType(
            f"{path}: unsupported link type {linktype}: dnstrail import reads Ethernet (1), "
            "Linux cooked SLL (113) and SLL2 (276), loopback/NULL (0) and raw IP (101/228/229)")
    summary.link_types = [linktype]
    rec = struct.Struct(endian + "IIII")
    while True:
        hdr = f.read(16)
        if not hdr:
            return
        if len(hdr) < 16:
            summary.file_damaged = "file ends inside a packet header"
            return
        sec, frac, caplen, origlen = rec.unpack(hdr)
        if caplen > MAX_PACKET:
            summary.file_damaged = f"packet record of {caplen} bytes (damaged file)"
            return
        data = f.read(caplen)
        if len(data) < caplen:
            summary.file_damaged = "file ends inside a packet"
            return
        yield _Packet(sec * 1_000_000_000 + frac * ns_per_unit, linktype, data, origlen)


@dataclass
class _Interface:
    linktype: int
    units_per_sec: int = 1_000_000
    offset_s: int = 0


def _idb_options(body: bytes, endian: str, iface: _Interface) -> None:
    pos = 8
    for _ in range(256):
        if pos + 4 > len(body):
            return
        code, length = struct.unpack_from(endian + "HH", body, pos)
        value = body[pos + 4 : pos + 4 + length]
        if code == 0:
            return
        if code == 9 and length >= 1:
            v = value[0]
            iface.units_per_sec = (2 ** (v & 0x7F)) if v & 0x80 else 10 ** min(v, 18)
        elif code == 14 and length == 8:
            iface.offset_s = struct.unpack(endian + "q", value)[0]
        pos += 4 + ((length + 3) & ~3)


def _pcapng_packets(f: IO[bytes], head: bytes, path: str,
                    summary: ImportSummary) -> Iterator[_Packet]:
    endian = "<"
    interfaces: list[_Interface] = []
    first = True
    pending = head
    last_ts = 0
    while True:
        hdr = pending + (f.read(8 - len(pending)) if len(pending) < 8 else b"")
        pending = b""
        if not hdr:
            return
        if len(hdr) < 8:
            if first:
                raise PcapError(f"{path}: pcapng section header is cut short")
            summary.file_damaged = "file ends inside a block header"
            return
        if struct.unpack_from("<I", hdr)[0] == _PCAPNG_SHB:
            bom = f.read(4)
            if len(bom) < 4:
                if first:
                    raise PcapError(f"{path}: pcapng section header is cut short")
                summary.file_damaged = "file ends inside a section header"
                return
            if bom == b"\x4d\x3c\x2b\x1a":
                endian = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                endian = ">"
            else:
                if first:
                    raise PcapError(f"{path}: pcapng section header has a bad byte-order mark")
                summary.file_damaged = "bad byte-order mark in a section header"
                return
            total = struct.unpack_from(endian + "I", hdr, 4)[0]
            if total < 28 or total > MAX_BLOCK or total % 4:
                if first:
                    raise PcapError(f"{path}: pcapng section header has a bad length")
                summary.file_damaged = "bad section header length"
                return
            rest = f.read(total - 12)
            if len(rest) < total - 12:
                if first:
                    raise PcapError(f"{path}: pcapng section header is cut short")
                summary.file_damaged = "file ends inside a section header"
                return
            interfaces = []
            first = False
            continue
        if first:
            raise PcapError(f"{path}: pcapng file does not start with a section header")
        btype, total = struct.unpack_from(endian + "II", hdr)
        if total < 12 or total > MAX_BLOCK or total % 4:
            summary.file_damaged = f"block of bad length {total}"
            return
        body = f.read(total - 8)
        if len(body) < total - 8:
            summary.file_damaged = "file ends inside a block"
            return
        body = body[:-4]  # trailing copy of the length
        if btype == 1:  # interface description
            if len(body) < 8:
                summary.file_damaged = "interface block too short"
                return
            linktype = struct.unpack_from(endian + "H", body, 0)[0]
            iface = _Interface(linktype)
            _idb_options(body, endian, iface)
            interfaces.append(iface)
            if linktype not in summary.link_types:
                summary.link_types.append(linktype)
            continue
        if btype in (6, 2):  # enhanced packet, obsolete packet
            if len(body) < 20:
                summary.file_damaged = "packet block too short"
                return
            if btype == 6:
                if_id, ts_hi, ts_lo, caplen, origlen = struct.unpack_from(endian + "IIIII", body)
            else:
                if_id, _drops, ts_hi, ts_lo, caplen, origlen = struct.unpack_from(
                    endian + "HHIIII", body)
            if if_id >= len(interfaces) or 20 + caplen > len(body):
                summary.file_damaged = "packet block refers to a missing interface or overruns"
                return
            iface = interfaces[if_id]
            units = (ts_hi << 32) | ts_lo
            ts_ns = units * 1_000_000_000 // iface.units_per_sec + iface.offset_s * 1_000_000_000
            last_ts = ts_ns
            yield _Packet(ts_ns, iface.linktype, body[20 : 20 + caplen], origlen)
        elif btype == 3:  # simple packet: interface 0, no timestamp
            if not interfaces or len(body) < 4:
                summary.file_damaged = "simple packet block without interface"
                return
            origlen = struct.unpack_from(endian + "I", body)[0]
            yield _Packet(last_ts, interfaces[0].linktype, body[4 : 4 + origlen], origlen)
        # Other blocks (name resolution, statistics, custom, decryption secrets) are skipped.


def _packets(path: Path, summary: ImportSummary) -> Iterator[_Packet]:
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the generator's finally
    except IsADirectoryError:
        raise PcapError(f"{path}: is a directory, not a pcap or pcapng file") from None
    try:
        head = f.read(4)
        if len(head) < 4:
            raise PcapError(f"{path}: not a pcap or pcapng file (empty or shorter than a header)")
        if head in _PCAP_MAGICS:
            yield from _pcap_packets(f, head, str(path), summary)
        elif struct.unpack("<I", head)[0] == _PCAPNG_SHB:
            yield from _pcapng_packets(f, head, str(path), summary)
        else:
            raise PcapError(f"{path}: not a pcap or pcapng file (starts with 0x{head.hex()})")
    finally:
        f.close()


# ---------------------------------------------------------------------------------------------
# Packet dissection


_addr_cache: dict[bytes, str] = {}


def _addr(raw: bytes) -> str:
    s = _addr_cache.get(raw)
    if s is None:
        s = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
        if len(_addr_cache) > 1 << 16:
            _addr_cache.clear()
        _addr_cache[raw] = s
    return s


def _network_layer(linktype: int, data: bytes) -> tuple[int, int] | None:
    """(ethertype-like version 4/6, offset of the IP header) or None if not IP."""
    if linktype == LINKTYPE_ETHERNET:
        if len(data) < 14:
            return None
        etype = (data[12] << 8) | data[13]
        off = 14
        for _ in range(4):
            if etype not in _VLAN_TYPES:
                break
            if len(data) < off + 4:
                return None
            etype = (data[off + 2] << 8) | data[off + 3]
            off += 4
    elif linktype == LINKTYPE_SLL:
        if len(data) < 16:
            return None
        etype, off = (data[14] << 8) | data[15], 16
    elif linktype == LINKTYPE_SLL2:
        if len(data) < 20:
            return None
        etype, off = (data[0] << 8) | data[1], 20
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if len(data) < 4:
            return None
        le, be = struct.unpack_from("<I", data)[0], struct.unpack_from(">I", data)[0]
        fam = be if linktype == LINKTYPE_LOOP else (le if le < 256 else be)
        if fam == 2:
            return 4, 4
        if fam in _AF_INET6_VALUES:
            return 6, 4
        return None
    elif linktype in _RAW_TYPES or linktype in (LINKTYPE_IPV4, LINKTYPE_IPV6):
        if not data:
            return None
        return data[0] >> 4, 0
    else:
        return None
    if etype == 0x0800:
        return 4, off
    if etype == 0x86DD:
        return 6, off
    return None


@dataclass
class _Segment:
    """Transport view of one packet."""

    family: str
    proto: str  # 'udp' or 'tcp'
    src: str
    dst: str
    sport: int
    dport: int
    payload: bytes
    orig_len: int  # payload length the headers declare
    tcp_seq: int = 0
    tcp_flags: int = 0


class _Skip(Exception):
    def __init__(self, counter: str) -> None:
        self.counter = counter


def _transport(version: int, data: bytes, off: int) -> _Segment:
    """Dissect IP + UDP/TCP; raise _Skip with the counter to bump."""
    if version == 4:
        if len(data) < off + 20:
            raise _Skip("skipped_malformed")
        vihl = data[off]
        ihl = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or ihl < 20:
            raise _Skip("skipped_malformed")
        total = (data[off + 2] << 8) | data[off + 3]
        frag = ((data[off + 6] << 8) | data[off + 7]) & 0x1FFF
        proto = data[off + 9]
        if proto not in (6, 17):
            raise _Skip("skipped_non_dns")
        if frag:
            raise _Skip("skipped_fragments")
        src, dst = data[off + 12 : off + 16], data[off + 16 : off + 20]
        family = "inet"
        l4 = off + ihl
        declared_end = off + total if total >= ihl else len(data)
    elif version == 6:
        if len(data) < off + 40:
            raise _Skip("skipped_malformed")
        plen = (data[off + 4] << 8) | data[off + 5]
        proto = data[off + 6]
        src, dst = data[off + 8 : off + 24], data[off + 24 : off + 40]
        family = "inet6"
        l4 = off + 40
        declared_end = l4 + plen
        for _ in range(8):
            if proto in (0, 43, 60, 51):
                if len(data) < l4 + 2:
                    raise _Skip("skipped_malformed")
                hlen = (data[l4 + 1] + 2) * 4 if proto == 51 else (data[l4 + 1] + 1) * 8
                proto = data[l4]
                l4 += hlen
            elif proto == 44:
                if len(data) < l4 + 8:
                    raise _Skip("skipped_malformed")
                if ((data[l4 + 2] << 8) | data[l4 + 3]) & 0xFFF8:
                    raise _Skip("skipped_fragments")
                proto = data[l4]
                l4 += 8
            else:
                break
        if proto not in (6, 17):
            raise _Skip("skipped_non_dns")
    else:
        raise _Skip("skipped_non_dns")
    end = min(declared_end, len(data))
    if proto == 17:
        if end < l4 + 4:
            raise _Skip("skipped_malformed")
        sport, dport = struct.unpack_from("!HH", data, l4)
        ulen = (data[l4 + 4] << 8) | data[l4 + 5] if end >= l4 + 6 else 0
        declared = (ulen - 8) if ulen >= 8 else max(declared_end - l4 - 8, 0)
        payload = data[l4 + 8 : min(end, l4 + 8 + declared)] if end > l4 + 8 else b""
        return _Segment(family, "udp", _addr(src), _addr(dst), sport, dport, payload,
                        max(declared, len(payload)))
    if end < l4 + 4:
        raise _Skip("skipped_malformed")
    sport, dport = struct.unpack_from("!HH", data, l4)
    if end < l4 + 14:
        return _Segment(family, "tcp", _addr(src), _addr(dst), sport, dport, b"",
                        max(declared_end - l4 - 20, 0))
    seq = struct.unpack_from("!I", data, l4 + 4)[0]
    doff = (data[l4 + 12] >> 4) * 4
    flags = data[l4 + 13]
    start = l4 + max(doff, 20)
    payload = data[start:end] if end > start else b""
    declared = max(declared_end - start, len(payload))
    return _Segment(family, "tcp", _addr(src), _addr(dst), sport, dport, payload, declared,
                    seq, flags)


# ---------------------------------------------------------------------------------------------
# TCP de-duplication


@dataclass
class _Flow:
    next_seq: int | None = None
    last_row: dict[str, Any] | None = None


def _seq_diff(a: int, b: int) -> int:
    """a - b in TCP sequence space (signed, wrap-around aware)."""
    d = (a - b) & 0xFFFFFFFF
    return d - (1 << 32) if d & 0x80000000 else d


# ---------------------------------------------------------------------------------------------
# Writing


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).isoformat().replace("+00:00", "Z")


def _write_parquet(directory: Path, name: str, table: pa.Table) -> dict[str, Any]:
    tmp = directory / f"{schema.TMP_PREFIX}{name}"
    pq.write_table(table, tmp, compression="zstd")
    os.chmod(tmp, 0o600)
    fsync_path(tmp)  # the bytes are on disk before the name is
    digest = sha256_file(tmp)
    size = tmp.stat().st_size
    os.replace(tmp, directory / name)
    return {"name": name, "kind": schema.file_kind(name), "rows": table.num_rows,
            "bytes": size, "sha256": digest}


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    # indent=2: the layout `dnstrail import` has always written (the evidence id hashes it)
    write_manifest_file(directory, manifest, indent=2)


def _prepare_dir(out: Path, append: bool) -> dict[str, Any] | None:
    """Create the output directory, or read the manifest of the capture to append to."""
    if out.exists() and not out.is_dir():
        raise OutputExists(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not append:
            raise OutputExists(f"{out}: the directory is not empty: choose a new directory "
                               "or pass --append to add to the capture in it")
        try:
            manifest = schema.read_manifest(out)
        except schema.FormatError as exc:
            raise AppendMismatch(f"cannot append: {exc}") from None
        if manifest.get("source") != "pcap":
            raise AppendMismatch(f"cannot append to {out}: it was made by "
                                 f"{manifest.get('source')!r}, not `dnstrail import`")
        return manifest
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    return None


def _base_manifest(command_line: Sequence[str], ports: Sequence[int]) -> dict[str, Any]:
    from dnstrail import __version__

    manifest: dict[str, Any] = {
        "format": "dnstrail-capture",
        "schema_version": schema.SCHEMA_VERSION,
        "dnstrail_version": __version__,
        "source": "pcap",
        "host": None,
        "kernel": None,
        "boot_time_ns": None,
        "started_at": None,
        "stopped_at": None,
        "status": "running",
        "error": None,
        "command_line": list(command_line),
        "filters": {"ports": sorted(set(ports)), "snaplen": None},
        "lost": {"skipped_malformed": 0, "skipped_fragments": 0, "skipped_link_type": 0},
        "counts": {kind: 0 for kind in schema.EVENT_KINDS},
        "files": [],
        "priority_log": [],
        "spool_open": None,
    }
    return manifest


def write_capture(out_dir: str | Path, messages: pa.Table, connects: pa.Table | None = None,
                  manifest_extra: dict[str, Any] | None = None) -> Path:
    """Write a complete capture directory from tables (for tests and notebooks).

    ``messages``/``connects`` are conformed to the capture schemas (missing nullable columns
    become nulls). ``manifest_extra`` overrides manifest keys (``source`` defaults to 'pcap').
    The directory must not exist or be empty.
    """
    out = Path(out_dir)
    _prepare_dir(out, append=False)
    manifest = _base_manifest(sys.argv, (DNS_PORT,))
    manifest["status"] = "complete"
    files = [_write_parquet(out, schema.event_file_name("messages", 1),
                            _conform_loose(messages, "messages"))]
    if connects is not None:
        files.append(_write_parquet(out, schema.event_file_name("connects", 1),
                                    _conform_loose(connects, "connects")))
    manifest["files"] = files
    manifest["counts"] = {k: sum(f["rows"] for f in files if f["kind"] == k)
                          for k in schema.EVENT_KINDS}
    if messages.num_rows and "ts" in messages.column_names:
        ts = messages.column("ts").cast(pa.int64())
        manifest["started_at"] = _iso(pa.compute.min(ts).as_py())
        manifest["stopped_at"] = _iso(pa.compute.max(ts).as_py())
    manifest.update(manifest_extra or {})
    _write_manifest(out, manifest)
    return out


def _conform_loose(table: pa.Table, kind: str) -> pa.Table:
    sch = schema.SCHEMAS[kind]
    cols = []
    for f in sch:
        if f.name in table.column_names:
            cols.append(table.column(f.name).cast(f.type))
        elif f.name == "msg_index":
            cols.append(pa.array([0] * table.num_rows, f.type))
        elif f.name == "truncated":
            cols.append(pa.array([False] * table.num_rows, f.type))
        elif f.name == "seq":
            cols.append(pa.array(range(1, table.num_rows + 1), f.type))
        elif f.name == "orig_len" and "payload" in table.column_names:
            cols.append(pa.compute.binary_length(table.column("payload")).cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=sch)


class _Rows:
    """Column lists for one kind, flushed to numbered files."""

    def __init__(self, kind: str, out: Path, first_index: int) -> None:
        self.kind = kind
        self.out = out
        self.index = first_index
        self.cols: dict[str, list[Any]] = {}
        self.rows: list[dict[str, Any]] = []
        self.files: list[dict[str, Any]] = []
        self.total = 0
        self.flushes = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= ROWS_PER_FILE:
            self.flush(keep_last=True)

    def flush(self, keep_last: bool = False) -> None:
        # The last row may still be patched (a TCP hole found later): keep it in memory.
        keep = self.rows[-1:] if keep_last else []
        rows = self.rows[:-1] if keep_last else self.rows
        if rows or (not self.files and not keep_last and self.index == 1):
            table = pa.Table.from_pylist(rows, schema=schema.SCHEMAS[self.kind])
            name = schema.event_file_name(self.kind, self.index)
            self.files.append(_write_parquet(self.out, name, table))
            self.index += 1
            self.total += len(rows)
            self.flushes += 1
        self.rows = keep


def _next_file_index(manifest: dict[str, Any] | None, kind: str) -> int:
    if not manifest:
        return 1
    idx = 0
    for f in manifest.get("files") or []:
        name = f.get("name", "") if isinstance(f, dict) else ""
        if schema.file_kind(name) == kind:
            idx = max(idx, int(name[: -len(".parquet")].rpartition("-")[2]))
    return idx + 1


def import_pcap(path: str | Path, out_dir: str | Path, ports: Sequence[int] = (DNS_PORT,),
                append: bool = False,
                command_line: Sequence[str] | None = None) -> ImportSummary:
    """Read a pcap/pcapng file and write it as a capture directory (see module doc).

    ``ports``: DNS server ports besides 53. ``append``: add the packets to a capture that an
    earlier import wrote in ``out_dir`` (sequence numbers continue). Raises ``PcapError`` (or
    ``UnsupportedLinkType``) for a file that is not a readable capture, ``OutputExists`` when
    ``out_dir`` is not empty and append is off.
    """
    src = Path(path)
    out = Path(out_dir)
    if not src.exists():
        raise PcapError(f"{src}: no such file")
    dns_ports = frozenset(ports) | {DNS_PORT}
    summary = ImportSummary(str(src), str(out))
    packets = _packets(src, summary)
    # Read the header before touching the output: a bad file leaves nothing behind.
    try:
        first = next(packets)
    except StopIteration:
        first = None
    if summary.link_types and not set(summary.link_types) & SUPPORTED_LINK_TYPES:
        types = ", ".join(str(t) for t in summary.link_types)
        raise UnsupportedLinkType(
            f"{src}: unsupported link type {types}: dnstrail import reads Ethernet (1), "
            "Linux cooked SLL (113) and SLL2 (276), loopback/NULL (0) and raw IP (101/228/229)")
    old = _prepare_dir(out, append)
    seq_base = 0
    if old:
        previous = old.get("import")
        if isinstance(previous, dict) and isinstance(previous.get("seq_end"), int):
            seq_base = previous["seq_end"]
    msgs = _Rows("messages", out, _next_file_index(old, "messages"))
    conns = _Rows("connects", out, _next_file_index(old, "connects"))
    flows: dict[tuple[str, int, str, int], _Flow] = {}
    syns_seen: set[tuple[str, int, str, int, int]] = set()
    first_ts = last_ts = None
    frame = 0

    def all_packets() -> Iterator[_Packet]:
        if first is not None:
            yield first
            yield from packets

    for pkt in all_packets():
        frame += 1
        seq = seq_base + frame
        if not _TS_MIN <= pkt.ts_ns <= _TS_MAX:
            # A damaged or hostile timestamp: keep the packet, pin its time, count it.
            summary.bad_timestamps += 1
            pkt.ts_ns = _TS_MIN if pkt.ts_ns < _TS_MIN else _TS_MAX
        if first_ts is None:
            first_ts = pkt.ts_ns
        last_ts = pkt.ts_ns
        net = None
        if pkt.linktype in SUPPORTED_LINK_TYPES:
            net = _network_layer(pkt.linktype, pkt.data)
        else:
            summary.skipped_link_type += 1
            continue
        if net is None:
            summary.skipped_non_dns += 1
            continue
        try:
            seg = _transport(net[0], pkt.data, net[1])
        except _Skip as skip:
            setattr(summary, skip.counter, getattr(summary, skip.counter) + 1)
            continue
        ts = pkt.ts_ns
        syn = seg.proto == "tcp" and bool(seg.tcp_flags & 0x02)
        if syn and not seg.tcp_flags & 0x10:
            attempt = (seg.src, seg.sport, seg.dst, seg.dport, seg.tcp_seq)
            if attempt in syns_seen:
                summary.syn_retransmissions += 1
            else:
                if len(syns_seen) > 1 << 20:
                    syns_seen.clear()
                syns_seen.add(attempt)
                conns.add({"ts": ts, "mono_ns": None, "seq": seq, "fd": None,
                          "family": seg.family, "protocol": "tcp", "dst_addr": seg.dst,
                          "dst_port": seg.dport, "result": None, "latency_ns": None})
        if seg.sport not in dns_ports and seg.dport not in dns_ports:
            summary.skipped_non_dns += 1
            continue
        row = {"ts": ts, "mono_ns": None, "seq": seq, "syscall": "pcap", "direction": None,
               "msg_index": 0, "protocol": seg.proto, "family": seg.family,
               "src_addr": seg.src, "src_port": seg.sport, "dst_addr": seg.dst,
               "dst_port": seg.dport, "payload": seg.payload, "orig_len": seg.orig_len,
               "truncated": len(seg.payload) < seg.orig_len}
        if seg.proto == "tcp":
            key = (seg.src, seg.sport, seg.dst, seg.dport)
            flow = flows.get(key)
            if flow is None and len(flows) >= MAX_FLOWS:
                flows.clear()
            # Data starts after the SYN's own sequence number (TCP Fast Open puts data there).
            data_seq = (seg.tcp_seq + 1) & 0xFFFFFFFF if syn else seg.tcp_seq
            if flow is None or (syn and flow.next_seq != data_seq):
                flow = flows[key] = _Flow()
                if syn:
                    flow.next_seq = data_seq
            if not seg.payload and not row["truncated"]:
                summary.skipped_non_dns += 1  # a bare ACK/SYN/FIN carries no DNS bytes
                continue
            if flow.next_seq is None:
                flow.next_seq = data_seq
            ahead = _seq_diff(data_seq, flow.next_seq)
            if ahead < 0:
                overlap = -ahead
                if overlap >= seg.orig_len:
                    summary.tcp_duplicates += 1
                    continue
                row["payload"] = seg.payload[overlap:]
                row["orig_len"] = seg.orig_len - overlap
            elif ahead > 0:
                # Bytes never seen (lost or out of order): the chunk before the hole says so.
                summary.tcp_holes += 1
                if flow.last_row is not None:
                    flow.last_row["orig_len"] += ahead
                    flow.last_row["truncated"] = True
            flow.next_seq = (data_seq + seg.orig_len) & 0xFFFFFFFF
            flow.last_row = row
            summary.tcp += 1
        else:
            summary.udp += 1
        if row["truncated"]:
            summary.truncated += 1
        flushes = msgs.flushes
        msgs.add(row)
        if msgs.flushes != flushes:
            # Rows on disk can no longer be patched; holding them would keep every flow's
            # last payload in memory for the whole import.
            kept = msgs.rows[-1] if msgs.rows else None
            for other in flows.values():
                if other.last_row is not None and other.last_row is not kept:
                    other.last_row = None

    msgs.flush()
    conns.flush()
    summary.packets = frame
    summary.messages = msgs.total
    summary.connects = conns.total
    summary.first_ts, summary.last_ts = _iso(first_ts), _iso(last_ts)

    cmd = list(command_line) if command_line is not None else list(sys.argv)
    manifest = old or _base_manifest(cmd, sorted(dns_ports))
    if old:
        manifest["command_line"] = cmd
        manifest["filters"]["ports"] = sorted(set(manifest["filters"].get("ports") or [])
                                              | dns_ports)
    files = list(manifest.get("files") or []) + msgs.files + conns.files
    if not old:
        for kind in schema.SNAPSHOT_KINDS:
            files.append(_write_parquet(out, schema.snapshot_file_name(kind),
                                        schema.SCHEMAS[kind].empty_table()))
    manifest["files"] = files
    counts = manifest.setdefault("counts", {})
    counts["messages"] = counts.get("messages", 0) + msgs.total
    counts["connects"] = counts.get("connects", 0) + conns.total
    counts.setdefault("execs", 0)
    lost = manifest.setdefault("lost", {})
    for cause in ("skipped_malformed", "skipped_fragments", "skipped_link_type"):
        lost[cause] = lost.get(cause, 0) + getattr(summary, cause)
    if manifest.get("started_at") is None or (first_ts is not None and _iso(first_ts) and
                                              manifest["started_at"] > (_iso(first_ts) or "")):
        manifest["started_at"] = _iso(first_ts)
    if last_ts is not None and (manifest.get("stopped_at") is None
                                or manifest["stopped_at"] < (_iso(last_ts) or "")):
        manifest["stopped_at"] = _iso(last_ts)
    manifest["status"] = "complete"
    manifest["error"] = None
    manifest["import"] = {k: v for k, v in summary.as_dict().items()
                          if k not in ("path", "out_dir")} | {"file": str(src),
                                                               "seq_end": seq_base + frame}
    _write_manifest(out, manifest)
    return summary


__all__ = [
    "DNS_PORT",
    "SUPPORTED_LINK_TYPES",
    "ImportSummary",
    "import_pcap",
    "write_capture",
]
