"""``export``: a capture in the formats other tools read (docs/export.md).

* ``pcapng``: every DNS message as an IPv4/IPv6 packet (UDP; TCP as one segment holding the
  2-byte length prefix and the message) with its real addresses, ports and nanosecond time,
  one interface per network namespace (per node), and a comment on each packet naming the
  process, container, pod and namespace, so Wireshark shows who sent it. Packets and blocks
  are built with dpkt.
* ``zeek``: one ``dns.log`` line per transaction in Zeek's TSV form (``#fields``/``#types``).
* ``jsonl`` and ``csv``: one transaction per line, every column.

Rows are read from the engine in batches (``Capture.query_batches``) and written as they
come, so a capture larger than memory exports in bounded memory. Everything from the wire or
from a process is escaped for its format: Zeek's ``\\xHH``, JSON's ``\\uXXXX``, and in CSV
control and format characters as ``\\xHH``/``\\uXXXX`` and a leading ``= + - @`` (a
spreadsheet formula) behind a ``'``. The file is written beside ``path`` and renamed into
place when complete.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import ipaddress
import json
import math
import os
import re
import tempfile
import unicodedata
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from analyze.capture import Capture
from analyze.errors import AnalyzeError

#: Export formats, in the order ``--format`` lists them.
FORMATS = ("pcapng", "zeek", "jsonl", "csv")
#: Rows fetched from the engine at a time.
BATCH_ROWS = 20_000
#: Longest text kept in one pcapng comment field or interface description.
MAX_FIELD = 256
#: TCP flows whose sequence numbers are tracked at once (then the table starts afresh).
MAX_TCP_FLOWS = 100_000


class ExportError(AnalyzeError):
    """the capture could not be exported"""


class UnknownFormat(ExportError):
    """unknown export format: one of pcapng, zeek, jsonl, csv"""


class BadOutput(ExportError):
    """the export's output must be a file in an existing directory"""


@dataclass(frozen=True)
class Exported:
    """What ``export`` wrote: the file, its format and how many records (packets or lines)."""

    path: Path
    format: str
    records: int


def export(cap: Capture, path: str | Path, format: str) -> Exported:
    """Write ``cap`` (with its filters) to ``path`` as ``format`` (one of ``FORMATS``)."""
    if format not in FORMATS:
        raise UnknownFormat(f"{format!r}: unknown export format: one of {', '.join(FORMATS)}")
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise BadOutput(f"{out}: is a directory: give a file name")
    if not parent.is_dir():
        raise BadOutput(f"{parent}: no such directory for the export")
    writer: Callable[[Capture, IO[bytes]], int] = _WRITERS[format]
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            n = writer(cap, f)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Exported(out, format, n)


# --- text made inert ----------------------------------------------------------------------

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]|[^\x00-\x7f]")
_FORMULA = ("=", "+", "-", "@", "\t", "\r", "\n")


def printable(value: Any) -> str:
    """``value`` as text with control characters (C0, DEL, C1) as ``\\xNN`` and format or
    unassigned characters (bidi overrides, zero-width, surrogates) as ``\\uNNNN``; other
    printable Unicode stays as it is."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    return _UNPRINTABLE.sub(_escape_char, text)


def _escape_char(m: re.Match[str]) -> str:
    c = m.group()
    o = ord(c)
    if o < 0x80 or 0x80 <= o <= 0x9F:
        return f"\\x{o:02x}"
    if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
        return f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}"
    return c


def csv_cell(value: Any) -> str:
    """A text cell a spreadsheet shows as text: ``printable``, and a leading ``=``, ``+``,
    ``-``, ``@`` (or tab, CR) behind a ``'`` so that it is not read as a formula."""
    text = printable(value)
    return "'" + text if text.startswith(_FORMULA) else text


def _iso_ns(ns: int | None) -> str | None:
    if ns is None:
        return None
    sec, frac = divmod(int(ns), 1_000_000_000)
    stamp = datetime.fromtimestamp(sec, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{frac:09d}Z"


# --- transactions as rows (jsonl, csv) ----------------------------------------------------

#: Columns of the jsonl and csv exports, in order (docs/export.md).
COLUMNS = ("ts", "response_ts", "txn_id", "side", "status", "latency_s", "retransmissions",
           "protocol", "client_addr", "client_port", "server_addr", "server_port", "dns_id",
           "qname", "qtype", "registered_domain", "rcode", "rcode_name", "tc", "ancount",
           "answers", "answer_ips", "min_ttl", "node", "capture", "tgid", "tid", "comm", "uid",
           "netns", "cgroup_id", "cgroup_path", "pod_uid", "namespace", "pod", "container",
           "container_id", "qos")
_TIMES = ("ts", "response_ts")


def _transaction_batches(cap: Capture) -> Iterator[list[dict[str, Any]]]:
    sql, params = cap.table_sql("transactions")
    cols = ", ".join(f'"{c}"' for c in COLUMNS if c not in _TIMES)
    query = (f"SELECT epoch_ns(ts) AS ts, epoch_ns(response_ts) AS response_ts, {cols} "
             f"FROM ({sql}) ORDER BY txn_id")
    for batch in cap.query_batches(query, params, rows=BATCH_ROWS):
        yield batch.to_pylist()


def _clean_row(row: dict[str, Any]) -> dict[str, Any]:
    for name in _TIMES:
        row[name] = _iso_ns(row[name])
    lat = row.get("latency_s")
    if isinstance(lat, float) and math.isnan(lat):
        row["latency_s"] = None
    return row


def _write_jsonl(cap: Capture, f: IO[bytes]) -> int:
    n = 0
    for rows in _transaction_batches(cap):
        lines = [json.dumps(_clean_row(r), ensure_ascii=True, allow_nan=False,
                            separators=(",", ":"), default=str) for r in rows]
        if lines:
            f.write(("\n".join(lines) + "\n").encode("ascii"))
        n += len(lines)
    return n


def _csv_value(name: str, value: Any) -> Any:
    if value is None:
        return ""
    if name == "answers":
        return csv_cell("; ".join(f"{rr.get('name')} {rr.get('ttl')} {rr.get('type')} "
                                  f"{rr.get('data')}" for rr in value))
    if name == "answer_ips":
        return csv_cell(" ".join(str(ip) for ip in value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value
    return csv_cell(value)


def _write_csv(cap: Capture, f: IO[bytes]) -> int:
    import io

    text = io.TextIOWrapper(f, encoding="utf-8", errors="backslashreplace", newline="")
    w = csv.writer(text, lineterminator="\n")
    w.writerow(COLUMNS)
    n = 0
    for rows in _transaction_batches(cap):
        for r in rows:
            r = _clean_row(r)
            w.writerow([_csv_value(c, r[c]) for c in COLUMNS])
        n += len(rows)
    text.flush()
    text.detach()
    return n


# --- zeek dns.log -------------------------------------------------------------------------

ZEEK_FIELDS = ("ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto",
               "trans_id", "rtt", "query", "qclass", "qclass_name", "qtype", "qtype_name",
               "rcode", "rcode_name", "AA", "TC", "RD", "RA", "Z", "answers", "TTLs",
               "rejected")
ZEEK_TYPES = ("time", "string", "addr", "port", "addr", "port", "enum", "count", "interval",
              "string", "count", "string", "count", "string", "count", "string", "bool", "bool",
              "bool", "bool", "count", "vector[string]", "vector[interval]", "bool")
_ZEEK_CLASSES = {1: "C_INTERNET", 3: "C_CHAOS", 4: "C_HESIOD", 254: "C_NONE", 255: "C_ANY"}
_CLASS_NUMBERS = {"IN": 1, "CH": 3, "HS": 4, "NONE": 254, "ANY": 255}
_ZEEK_NEEDS_ESCAPE = re.compile(rb"[^\x21-\x5b\x5d-\x7e ]")


def _zeek_escape(value: str, *, in_set: bool = False) -> str:
    """Zeek's ASCII writer: a backslash as ``\\\\``; tab, non-printable and non-ASCII bytes
    (and the set separator inside a vector) as ``\\xHH``; a value that reads as the unset
    (``-``) or empty (``(empty)``) marker with its first byte escaped."""
    raw = value.encode("utf-8", errors="surrogateescape")
    if value in ("-", "(empty)"):
        return f"\\x{raw[0]:02x}" + value[1:]
    if not _ZEEK_NEEDS_ESCAPE.search(raw) and not (in_set and b"," in raw):
        return value
    out = []
    for b in raw:
        if b == 0x5C:
            out.append("\\\\")
        elif 0x20 <= b <= 0x7E and not (in_set and b == 0x2C):
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
    return "".join(out)


def _zeek_str(value: Any) -> str:
    if value is None:
        return "-"
    text = str(value)
    return _zeek_escape(text) if text else "(empty)"


def _zeek_bool(value: Any) -> str:
    return "-" if value is None else ("T" if value else "F")


def _zeek_int(value: Any) -> str:
    return "-" if value is None else str(int(value))


def _zeek_time(ns: int) -> str:
    sec, frac = divmod(int(ns), 1_000_000_000)
    return f"{sec}.{frac // 1000:06d}"


def _zeek_uid(*parts: Any) -> str:
    """A Zeek-shaped uid (``C`` and 17 base-62 characters), stable for the same transaction
    of the same evidence."""
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    n = int.from_bytes(hashlib.blake2b("|".join(map(str, parts)).encode(),
                                       digest_size=13).digest(), "big")
    chars = []
    for _ in range(17):
        n, r = divmod(n, 62)
        chars.append(alphabet[r])
    return "C" + "".join(chars)


def _qtype_number(name: str | None) -> int | None:
    from dnslib import QTYPE

    if not name:
        return None
    if name.startswith("TYPE") and name[4:].isdigit():
        return int(name[4:])
    number = QTYPE.reverse.get(name)
    return int(number) if number is not None else None


def _qclass_number(name: str | None) -> int | None:
    if not name:
        return None
    if name.startswith("CLASS") and name[5:].isdigit():
        return int(name[5:])
    return _CLASS_NUMBERS.get(name)


def _zeek_vector(values: list[str] | None) -> str:
    if values is None:
        return "-"
    if not values:
        return "(empty)"
    return ",".join(_zeek_escape(v, in_set=True) if v else "(empty)" for v in values)


def _zeek_line(r: dict[str, Any]) -> str:
    z = r.get("z")
    qclass = _qclass_number(r.get("qclass"))
    qtype = _qtype_number(r.get("qtype"))
    answered = r.get("response_msg_id") is not None
    answers = r.get("answers") if answered else None
    if answers is not None and not answers:
        answers = None  # Zeek leaves answers and TTLs unset when there are none
    lat = r.get("latency_s")
    rtt = f"{lat:.6f}" if answered and lat is not None and not math.isnan(lat) else "-"
    counts = (r.get("r_ancount"), r.get("r_nscount"), r.get("r_arcount"))
    rejected = (answered and all(c is not None for c in counts) and not any(counts))
    cells = [
        _zeek_time(r["ts_ns"]),
        _zeek_uid(r.get("node"), r.get("capture"), r.get("txn_id"), r.get("ts_ns")),
        _zeek_str(r.get("client_addr")), _zeek_int(r.get("client_port")),
        _zeek_str(r.get("server_addr")), _zeek_int(r.get("server_port")),
        _zeek_str(r.get("protocol")), _zeek_int(r.get("dns_id")), rtt,
        _zeek_str(r.get("qname")), _zeek_int(qclass),
        _zeek_str(_ZEEK_CLASSES.get(qclass) if qclass is not None else None),
        _zeek_int(qtype), _zeek_str(r.get("qtype")),
        _zeek_int(r.get("rcode")) if answered else "-",
        _zeek_str(r.get("rcode_name")) if answered else "-",
        _zeek_bool(r.get("r_aa") or False), _zeek_bool(r.get("tc") or False),
        _zeek_bool(r.get("q_rd") or False), _zeek_bool(r.get("r_ra") or False),
        _zeek_int(z),
        _zeek_vector(None if answers is None else [str(a.get("data")) for a in answers]),
        _zeek_vector(None if answers is None else
                     [f"{float(a.get('ttl') or 0):.6f}" for a in answers]),
        _zeek_bool(rejected),
    ]
    return "\t".join(cells)


def _zeek_sql(cap: Capture) -> tuple[str, list[Any]]:
    tsql, tparams = cap.table_sql("transactions")
    msql, mparams = cap.table_sql("messages", with_txn=False)
    query = (
        "WITH m AS (SELECT msg_id, qclass, rd, aa, ra, ancount, nscount, arcount, "
        "CASE WHEN octet_length(payload) >= 4 THEN get_bit(payload::BIT, 25) * 4 "
        "+ get_bit(payload::BIT, 26) * 2 + get_bit(payload::BIT, 27) END AS z "
        f"FROM ({msql})) "
        "SELECT epoch_ns(t.ts) AS ts_ns, t.txn_id, t.node, t.capture, t.client_addr, "
        "t.client_port, t.server_addr, t.server_port, t.protocol, t.dns_id, t.latency_s, "
        "t.qname, t.qtype, t.rcode, t.rcode_name, t.tc, t.answers, t.query_msg_id, "
        "t.response_msg_id, coalesce(q.qclass, r.qclass) AS qclass, q.rd AS q_rd, "
        "coalesce(q.z, r.z) AS z, r.aa AS r_aa, r.ra AS r_ra, "
        "r.ancount AS r_ancount, r.nscount AS r_nscount, r.arcount AS r_arcount "
        f"FROM ({tsql}) t LEFT JOIN m q ON q.msg_id = t.query_msg_id "
        "LEFT JOIN m r ON r.msg_id = t.response_msg_id ORDER BY t.txn_id")
    # the CTE's parameters come first in the statement
    return query, [*mparams, *tparams]


def _write_zeek(cap: Capture, f: IO[bytes]) -> int:
    now = datetime.now(UTC).strftime("%Y-%m-%d-%H-%M-%S")
    header = ["#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)",
              "#unset_field\t-", "#path\tdns", f"#open\t{now}",
              "#fields\t" + "\t".join(ZEEK_FIELDS), "#types\t" + "\t".join(ZEEK_TYPES)]
    f.write(("\n".join(header) + "\n").encode("ascii"))
    query, params = _zeek_sql(cap)
    n = 0
    for batch in cap.query_batches(query, params, rows=BATCH_ROWS):
        lines = [_zeek_line(r) for r in batch.to_pylist()]
        if lines:
            f.write(("\n".join(lines) + "\n").encode("ascii"))
        n += len(lines)
    f.write(f"#close\t{datetime.now(UTC).strftime('%Y-%m-%d-%H-%M-%S')}\n"
            .encode("ascii"))
    return n


# --- pcapng -------------------------------------------------------------------------------

_LINKTYPE_RAW = 101  # packets start with the IPv4 or IPv6 header
_PACKET_COLUMNS = ("msg_id", "node", "netns", "tgid", "tid", "uid", "comm", "container",
                   "namespace", "pod", "pod_uid", "syscall", "direction", "protocol",
                   "src_addr", "src_port", "dst_addr", "dst_port", "payload", "orig_len",
                   "truncated", "error", "txn_id")


def _interface_key(node: Any, netns: Any) -> tuple[str, int | None]:
    return (str(node) if node is not None else "", int(netns) if netns is not None else None)


def _interfaces(cap: Capture, msql: str, params: list[Any]) -> list[dict[str, Any]]:
    rows = cap.query_rows(
        "SELECT node, netns, count(*) AS n, "
        "list(DISTINCT namespace || '/' || pod ORDER BY namespace || '/' || pod) "
        "FILTER (WHERE pod IS NOT NULL) AS pods "
        f"FROM ({msql}) GROUP BY ALL ORDER BY node NULLS FIRST, netns NULLS FIRST", params)
    out = []
    for node, netns, n, pods in rows:
        node_s = printable(node)[:MAX_FIELD] if node is not None else ""
        name = f"{node_s} netns:{netns}" if netns is not None else f"{node_s} wire"
        pods = pods or []
        desc = (f"network namespace {netns}" if netns is not None else "seen on the wire") + (
            f" on {node_s}" if node_s else "") + f", {n} messages"
        if pods:
            shown = ", ".join(printable(p)[:MAX_FIELD] for p in pods[:10])
            desc += f"; pods: {shown}" + (f" and {len(pods) - 10} more" if len(pods) > 10
                                          else "")
        out.append({"key": _interface_key(node, netns), "name": name.strip(),
                    "description": desc})
    return out


def _comment(r: dict[str, Any]) -> str:
    parts = []
    if r.get("tgid") is not None:
        parts.append(f"pid={r['tgid']}")
    if r.get("tid") is not None and r.get("tid") != r.get("tgid"):
        parts.append(f"tid={r['tid']}")
    for key, label in (("comm", "process"), ("uid", "uid"), ("container", "container"),
                       ("pod", "pod"), ("namespace", "namespace"), ("pod_uid", "pod_uid"),
                       ("netns", "netns"), ("node", "node"), ("syscall", "syscall"),
                       ("direction", "direction"), ("txn_id", "txn")):
        v = r.get(key)
        if v is not None and v != "":
            parts.append(f"{label}={printable(v)[:MAX_FIELD]}")
    payload = r.get("payload") or b""
    orig = r.get("orig_len")
    if r.get("truncated") or (orig is not None and r.get("protocol") == "udp"
                              and orig > len(payload)):
        parts.append(f"truncated={len(payload)}/{orig} bytes")
    if r.get("error"):
        parts.append(f"decode_error={printable(r['error'])[:MAX_FIELD]}")
    for side in ("src", "dst"):
        if r.get(f"{side}_addr") is None:
            parts.append(f"{side}_addr=unknown")
    return " ".join(parts)


@functools.lru_cache(maxsize=65536)
def _address(text: str | None, v6: bool) -> bytes:
    """The packed address (an IPv4 one mapped into IPv6 in an IPv6 packet); zeros when
    unknown. Cached: a capture has few distinct addresses."""
    if text is None:
        return b"\0" * (16 if v6 else 4)
    try:
        ip = ipaddress.ip_address(str(text))
    except ValueError:
        return b"\0" * (16 if v6 else 4)
    if v6 and ip.version == 4:
        return ipaddress.IPv6Address(f"::ffff:{ip}").packed
    return ip.packed


def _is_v6(text: Any) -> bool:
    return text is not None and ":" in str(text)


class _TcpSeq:
    """Sequence and acknowledgement numbers per direction of a TCP flow, so Wireshark's
    stream analysis follows the segments (initial numbers from a hash of the flow)."""

    def __init__(self) -> None:
        self.next: dict[tuple[Any, ...], int] = {}

    def _get(self, key: tuple[Any, ...]) -> int:
        seq = self.next.get(key)
        if seq is None:
            if len(self.next) >= MAX_TCP_FLOWS:
                self.next.clear()
            seq = zlib.crc32(repr(key).encode())
            self.next[key] = seq
        return seq

    def segment(self, key: tuple[Any, ...], length: int) -> tuple[int, int]:
        seq = self._get(key)
        ack = self._get((key[2], key[3], key[0], key[1], *key[4:]))
        self.next[key] = (seq + length) & 0xFFFFFFFF
        return seq, ack


def _packet(r: dict[str, Any], tcp: _TcpSeq, dpkt: Any) -> bytes:
    payload = bytes(r.get("payload") or b"")
    v6 = _is_v6(r.get("src_addr")) or _is_v6(r.get("dst_addr"))
    src, dst = _address(r.get("src_addr"), v6), _address(r.get("dst_addr"), v6)
    sport, dport = int(r.get("src_port") or 0), int(r.get("dst_port") or 0)
    l4: Any
    if r.get("protocol") == "tcp":
        data = len(payload).to_bytes(2, "big") + payload
        seq, ack = tcp.segment((src, sport, dst, dport, r.get("node"), r.get("netns")),
                               len(data))
        l4 = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack,
                          flags=dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK, win=65535, data=data)
        proto = dpkt.ip.IP_PROTO_TCP
    else:
        l4 = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
        l4.ulen = len(l4)
        proto = dpkt.ip.IP_PROTO_UDP
    if v6:
        ip6 = dpkt.ip6.IP6(src=src, dst=dst, nxt=proto, hlim=64, data=l4)
        ip6.plen = len(l4)
        return bytes(ip6)
    return bytes(dpkt.ip.IP(src=src, dst=dst, p=proto, ttl=64, data=l4))


def _write_pcapng(cap: Capture, f: IO[bytes]) -> int:
    import dpkt
    from dpkt import pcapng as P

    msql, params = cap.table_sql("messages")
    interfaces = _interfaces(cap, msql, params)
    index = {iface["key"]: i for i, iface in enumerate(interfaces)}
    shb = P.SectionHeaderBlockLE(opts=[
        P.PcapngOptionLE(code=P.PCAPNG_OPT_SHB_USERAPPL, data=b"dnstrail export"),
        P.PcapngOptionLE(code=P.PCAPNG_OPT_ENDOFOPT)])
    idbs = [P.InterfaceDescriptionBlockLE(linktype=_LINKTYPE_RAW, snaplen=262144, opts=[
        P.PcapngOptionLE(code=P.PCAPNG_OPT_IF_NAME, data=iface["name"].encode()),
        P.PcapngOptionLE(code=P.PCAPNG_OPT_IF_DESCRIPTION,
                         data=iface["description"].encode()),
        P.PcapngOptionLE(code=P.PCAPNG_OPT_IF_TSRESOL, data=b"\x09"),  # nanoseconds
        P.PcapngOptionLE(code=P.PCAPNG_OPT_ENDOFOPT)]) for iface in interfaces]
    if not idbs:  # an empty capture is still a valid file
        idbs = [P.InterfaceDescriptionBlockLE(linktype=_LINKTYPE_RAW, snaplen=262144)]
    writer = P.Writer(f, shb=shb, idb=idbs)
    cols = ", ".join(f'"{c}"' for c in _PACKET_COLUMNS)
    query = f"SELECT epoch_ns(ts) AS ts_ns, {cols} FROM ({msql}) ORDER BY ts, msg_id"
    tcp = _TcpSeq()
    n = 0
    for batch in cap.query_batches(query, params, rows=BATCH_ROWS):
        for r in batch.to_pylist():
            raw = _packet(r, tcp, dpkt)
            payload_len = len(r.get("payload") or b"")
            missing = max(0, int(r.get("orig_len") or 0) - payload_len) \
                if r.get("protocol") == "udp" else 0
            ts = int(r["ts_ns"]) & 0xFFFFFFFFFFFFFFFF
            epb = P.EnhancedPacketBlockLE(
                iface_id=index.get(_interface_key(r.get("node"), r.get("netns")), 0),
                ts_high=ts >> 32, ts_low=ts & 0xFFFFFFFF, pkt_data=raw, caplen=len(raw),
                pkt_len=len(raw) + missing,
                opts=[P.PcapngOptionLE(code=P.PCAPNG_OPT_COMMENT, text=_comment(r)),
                      P.PcapngOptionLE(code=P.PCAPNG_OPT_ENDOFOPT)])
            writer.writepkt(epb)
            n += 1
    return n


_WRITERS: dict[str, Callable[[Capture, IO[bytes]], int]] = {
    "pcapng": _write_pcapng, "zeek": _write_zeek, "jsonl": _write_jsonl, "csv": _write_csv}


__all__ = ["COLUMNS", "FORMATS", "ZEEK_FIELDS", "BadOutput", "ExportError", "Exported", "UnknownFormat",
           "csv_cell", "export", "printable"]
