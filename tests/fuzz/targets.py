"""The fuzz targets and the property each one holds, shared by the hypothesis tests, the atheris
harnesses and the regression-corpus test.

Three entry points read attacker-controlled bytes:

- ``check_decode(payload)``: one DNS payload through ``decode_message``, ``decode_messages``
  and ``decode_table`` (the path ingest uses).
- ``check_tcp(data)``: the bytes are cut into TCP chunks of a few streams (``tcp_rows``) and
  reassembled with ``reassemble_table`` and ``reassemble``; every message that comes out is
  decoded.
- ``check_pcap(data, work)``: the bytes are a pcap/pcapng file given to ``import_pcap``; every
  row it writes is reassembled and decoded.

The property: no exception escapes (a file that is not a capture is a one-line
``AnalyzeError``); every input ends as rows, each decoded or carrying an error; decoded names
obey the wire limits (labels of 1..63 octets, 255 octets in all) and are printable ASCII;
output is bounded by the input and deterministic. A broken property raises ``PropertyBroken``
(an ``AssertionError``), which is what the fuzzers report as a crash.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from analyze.decode import MAX_RECORDS, decode_message, decode_messages, decode_table
from analyze.errors import AnalyzeError
from analyze.pcap import import_pcap
from analyze.tcp import (
    E_INCOMPLETE,
    E_OUT_OF_SYNC,
    E_TRUNCATED_CHUNK,
    reassemble,
    reassemble_table,
)
from capture.schema import MESSAGES_SCHEMA

#: Every ``error`` string the decoder may give (docs/decode.md, "Errors").
DECODE_ERRORS = frozenset((
    "empty payload", "truncated header", "count exceeds packet", "truncated name",
    "label past end", "bad label type", "name too long", "compression loop", "forward pointer",
    "too many compression pointers", "pointer into header", "truncated question", "truncated record",
    "truncated rdata", "bad rdata", "too many records", "trailing bytes",
))
STREAM_ERRORS = frozenset((E_TRUNCATED_CHUNK, E_OUT_OF_SYNC, E_INCOMPLETE))
#: Slowest one call may be (seconds). Real worst cases are a few ms; this is the alarm for a
#: loop or a blow-up, far above scheduling noise on a loaded machine.
MAX_SECONDS = 2.0
#: Longest presented name: 255 wire octets, each at most ``\DDD``.
MAX_NAME_CHARS = 4 * 255
_SECTIONS = ("answers", "authority", "additional")


class PropertyBroken(AssertionError):
    """An input broke the fuzz property (the message says which part)."""


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise PropertyBroken(what)


def _timed(what: str, fn: Any, *args: Any) -> Any:
    """fn(*args), and PropertyBroken if it took longer than MAX_SECONDS twice in a row."""
    start = time.perf_counter()
    out = fn(*args)
    if time.perf_counter() - start > MAX_SECONDS:
        start = time.perf_counter()  # once more: a preempted run is not the code's fault
        out = fn(*args)
        took = time.perf_counter() - start
        _require(took <= MAX_SECONDS, f"{what} took {took:.2f}s")
    return out


# --- names ------------------------------------------------------------------------------------

def parse_presented(name: str) -> list[bytes]:
    """Labels of a presented name (``a\\046b.example``), the inverse of present_labels."""
    if name == ".":
        return []
    labels: list[bytes] = []
    cur = bytearray()
    i = 0
    while i < len(name):
        ch = name[i]
        if ch == "\\":
            digits = name[i + 1 : i + 4]
            _require(len(digits) == 3 and digits.isdigit() and int(digits) < 256,
                     f"bad escape in name {name!r}")
            cur.append(int(digits))
            i += 4
            continue
        if ch == ".":
            labels.append(bytes(cur))
            cur = bytearray()
        else:
            _require(0x21 <= ord(ch) <= 0x7E, f"raw byte {ord(ch):#x} in name {name!r}")
            cur.append(ord(ch))
        i += 1
    labels.append(bytes(cur))
    return labels


def check_name(name: Any) -> None:
    """A decoded name obeys RFC 1035's limits and is printable ASCII."""
    _require(isinstance(name, str), f"name is {type(name).__name__}")
    _require(len(name) <= MAX_NAME_CHARS, f"name of {len(name)} characters")
    labels = parse_presented(name)
    _require(all(1 <= len(label) <= 63 for label in labels), f"bad label length in {name!r}")
    _require(sum(len(label) + 1 for label in labels) + 1 <= 255, f"name too long: {name!r}")


# --- decode -----------------------------------------------------------------------------------

def check_row(row: dict[str, Any], payload: bytes) -> None:
    """One decoded row: decoded or an error, names within limits, bounded by the payload."""
    n = len(payload)
    row = {k: [tuple(v.values()) if isinstance(v, dict) else v for v in value]
           if isinstance(value, list) else value for k, value in row.items()}
    error, offset = row["error"], row["error_offset"]
    if error is None:
        _require(offset is None, "error_offset without error")
        counts = [row[c] for c in ("qdcount", "ancount", "nscount", "arcount")]
        _require(None not in counts, "a decoded row without its header counts")
        _require(len(row["questions"]) == counts[0], "questions != qdcount")
        for section, count in zip(_SECTIONS, counts[1:], strict=True):
            # OPT records are not listed (their class is edns_udp_size)
            _require(len(row[section]) <= count, f"{section} > its count")
    else:
        _require(error in DECODE_ERRORS, f"unknown error {error!r}")
        _require(isinstance(offset, int) and 0 <= offset <= n,
                 f"error_offset {offset} outside 0..{n}")
    _require((row["dns_id"] is None) == (n < 2), "dns_id present iff 2 bytes")
    total = len(row["questions"]) + sum(len(row[s]) for s in _SECTIONS)
    _require(total <= MAX_RECORDS, f"{total} records")
    if row["qname"] is not None:
        check_name(row["qname"])
        _require(bool(row["questions"]) or error is not None, "qname without a question")
    for q in row["questions"]:
        check_name(q[0])
    for section in _SECTIONS:
        for rr in row[section]:
            check_name(rr[0])
            text = rr[3]
            _require(isinstance(text, str) and text.isascii() and text.isprintable(),
                     f"rdata text not printable ASCII: {text[:80]!r}")
            # rdata text is bounded by its bytes (escaped, at most 4 chars each) or by the
            # names it holds (SOA: two), never by the pointers a name follows
            _require(len(text) <= 4 * n + 2 * MAX_NAME_CHARS + 64, "rdata text too long")
    for ip in row["answer_ips"]:
        _require(isinstance(ip, str) and len(ip) <= 45, f"answer ip {ip!r}")


def _plain(value: Any) -> Any:
    """A decoded value in one comparable form (pandas/Arrow nulls -> None, records -> tuples)."""
    if value is None:
        return None
    if isinstance(value, dict):
        return [_plain(v) for v in value.values()]
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    if hasattr(value, "item"):
        return value.item()
    return value


def check_decode(payload: bytes) -> dict[str, Any]:
    """The decode property for one payload; returns the row."""
    row = _timed("decode_message", decode_message, payload)
    check_row(row, payload)
    again = decode_message(payload)
    _require(again == row, "decode_message is not deterministic")
    # The batch paths (distinct payloads decoded once, id set aside) give the same row, also
    # when the payload sits next to a copy of itself with another id.
    twin = (b"\xff\xff" + payload[2:]) if len(payload) >= 2 else payload
    table = _timed("decode_table", decode_table, [payload, twin]).to_pylist()
    frame = _timed("decode_messages", decode_messages, [payload, twin])
    for name, value in row.items():
        _require(_plain(table[0][name]) == _plain(value), f"decode_table differs in {name}")
        _require(_plain(frame[name].iloc[0]) == _plain(value),
                 f"decode_messages differs in {name}")
        if name != "dns_id":
            _require(_plain(table[1][name]) == _plain(value), f"the id changed {name}")
    return row


# --- TCP reassembly ---------------------------------------------------------------------------

def tcp_rows(data: bytes) -> list[dict[str, Any]]:
    """Cut fuzz bytes into capture rows: TCP chunks of up to 4 streams, and some UDP rows.

    Each chunk is a 4-byte control word then its bytes: stream (2 bits; stream 3 has null
    tgid/fd/sock_id), UDP (1 bit), truncated (1 bit), a seq shuffle (4 bits: 15 a null seq,
    14 the previous row's), the chunk length (16 bits) and the bytes lost
    after it (8 bits: 0..127 bytes, or 1..128 times 64 KiB). A chunk takes the bytes that
    follow, up to its length.
    """
    rows: list[dict[str, Any]] = []
    pos = 0
    index = 0
    while pos + 4 <= len(data) and len(rows) < 256:
        ctl, length, lost = data[pos], struct.unpack_from("!H", data, pos + 1)[0], data[pos + 3]
        pos += 4
        chunk = data[pos : pos + length]
        pos += len(chunk)
        stream, udp, cut = ctl & 3, bool(ctl & 4), bool(ctl & 8)
        # bytes lost: 0..127, or whole multiples of 64 KiB (past any message) up to 8 MiB
        lost = (lost if lost < 128 else (lost - 127) << 16) if cut else 0
        # seq: shuffled within 16 slots, or null (shuffle 15), or the previous row's (14)
        shuffle = ctl >> 4
        seq = None if shuffle == 15 else (rows[-1]["seq"] if shuffle == 14 and rows
                                          else index * 16 + shuffle)
        known = stream != 3  # stream 3 has null process columns, as a pcap's streams do
        rows.append({
            "ts": 1_700_000_000_000_000_000 + index, "seq": seq,
            "msg_index": index, "protocol": "udp" if udp else "tcp", "family": "inet",
            "syscall": "read", "tgid": 10 if known else None, "fd": 5 + stream if known else None,
            "sock_id": stream if known else None,
            "direction": "recv", "src_addr": "10.0.0.53", "src_port": 53,
            "dst_addr": "10.0.0.1", "dst_port": 40000 + stream, "payload": chunk,
            "orig_len": len(chunk) + lost, "truncated": cut,
        })
        index += 1
    return rows


def tcp_input(chunks: Sequence[tuple[int, bytes]], *, cut: Sequence[int] = (),
              udp: Sequence[int] = ()) -> bytes:
    """The tcp_rows bytes of ``(stream, bytes)`` chunks in order; chunks whose index is in
    ``cut`` lose 100 bytes after them, those in ``udp`` are UDP rows."""
    out = bytearray()
    for i, (stream, data) in enumerate(chunks):
        ctl = (stream & 3) | (4 if i in udp else 0) | (8 if i in cut else 0)
        out += bytes([ctl]) + struct.pack("!H", len(data)) + bytes([100 if i in cut else 0])
        out += data
    return bytes(out)


def _stream_order(rows: Sequence[dict[str, Any]]) -> dict[int | None, list[dict[str, Any]]]:
    """TCP rows by stream, in the order reassembly walks them (seq, null first; row order)."""
    streams: dict[int | None, list[dict[str, Any]]] = {}
    order = sorted(range(len(rows)), key=lambda i: (
        -1 if rows[i]["sock_id"] is None else rows[i]["sock_id"],
        -1 if rows[i]["seq"] is None else rows[i]["seq"], i))
    for i in order:
        if rows[i]["protocol"] == "tcp":
            streams.setdefault(rows[i]["sock_id"], []).append(rows[i])
    return streams


def check_reassembled(rows: list[dict[str, Any]], out: list[dict[str, Any]]) -> None:
    """Reassembly output against its input rows."""
    udp_in = [r["payload"] for r in rows if r["protocol"] == "udp"]
    udp_out = [r["payload"] for r in out if r["protocol"] == "udp"]
    _require(udp_in == udp_out, "UDP rows were not passed through unchanged")
    _require(all(r["stream_error"] is None for r in out if r["protocol"] == "udp"),
             "stream_error on a UDP row")
    bytes_in = sum(len(r["payload"]) for r in rows if r["protocol"] == "tcp")
    bytes_out = sum(len(r["payload"]) for r in out if r["protocol"] == "tcp")
    _require(bytes_out <= bytes_in, f"{bytes_out} bytes out of {bytes_in} in")
    longest = max((len(r["payload"]) for r in rows), default=0)
    for r in out:
        if r["protocol"] != "tcp":
            continue
        err = r["stream_error"]
        _require(err is None or err in STREAM_ERRORS, f"unknown stream_error {err!r}")
        _require(len(r["payload"]) <= max(65535, longest), "message longer than 65535")
        if err is None:
            _require(len(r["payload"]) == r["orig_len"] and not r["truncated"],
                     "a clean message is cut")
    # A stream with no loss comes out as its bytes, reframed: nothing lost, nothing added.
    # Output rows sit at the place of the chunk that completed them; put each stream's back in
    # the order its chunks were walked (tcp_rows puts a chunk's input position in msg_index).
    by_stream_out: dict[int | None, list[dict[str, Any]]] = {}
    walk = sorted((r for r in out if r["protocol"] == "tcp"),
                  key=lambda r: (-1 if r["seq"] is None else r["seq"], r["msg_index"]))
    for r in walk:
        by_stream_out.setdefault(r["sock_id"], []).append(r)
    for sid, chunks in _stream_order(rows).items():
        if any(c["truncated"] for c in chunks):
            continue
        original = b"".join(c["payload"] for c in chunks)
        rebuilt = bytearray()
        for r in by_stream_out.get(sid, []):
            p = r["payload"]
            _require(r["stream_error"] in (None, E_INCOMPLETE), "error in a loss-free stream")
            rebuilt += (struct.pack("!H", r["orig_len"]) + p) if r["orig_len"] > len(p) or (
                r["stream_error"] is None) else p
        _require(bytes(rebuilt) == original, f"stream {sid} does not rebuild to its bytes")


def check_tcp(data: bytes) -> list[dict[str, Any]]:
    """The reassembly property for fuzz bytes; every message that comes out is decoded."""
    rows = tcp_rows(data)
    table = pa.Table.from_pylist(rows, schema=MESSAGES_SCHEMA)
    out = _timed("reassemble_table", reassemble_table, table).to_pylist()
    check_reassembled(rows, out)
    again = reassemble_table(table).to_pylist()
    _require(again == out, "reassemble_table is not deterministic")
    frame = _timed("reassemble", reassemble, table.to_pandas())
    _require(list(frame["payload"]) == [r["payload"] for r in out], "reassemble differs")
    _require([_plain(e) for e in frame["stream_error"]] == [r["stream_error"] for r in out],
             "reassemble differs in stream_error")
    _check_decoded([r["payload"] for r in out], [r["stream_error"] for r in out])
    return out


def _check_decoded(payloads: list[bytes], stream_errors: list[str | None]) -> None:
    """Every message row becomes a decoded row, or one with an error (ingest's merge)."""
    decoded = _timed("decode_table", decode_table, payloads).to_pylist()
    _require(len(decoded) == len(payloads), "decode lost rows")
    for payload, row, stream_error in zip(payloads, decoded, stream_errors, strict=True):
        check_row(row, payload)
        if stream_error is not None:
            _require((row["error"] or stream_error) is not None, "stream damage not an error")


# --- pcap import ------------------------------------------------------------------------------

def _capture_digest(directory: Path) -> tuple[list[dict[str, Any]], str]:
    manifest = json.loads((directory / "manifest.json").read_text())
    _require(manifest["status"] == "complete", f"status {manifest['status']}")
    for entry in manifest["files"]:
        path = directory / entry["name"]
        _require(hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"],
                 f"{entry['name']} does not match the manifest")
    names = sorted(e["name"] for e in manifest["files"] if e["kind"] == "messages")
    rows: list[dict[str, Any]] = []
    for name in names:
        rows += pq.read_table(directory / name).to_pylist()
    _require(sum(e["rows"] for e in manifest["files"] if e["kind"] == "messages") == len(rows),
             "manifest row count differs")
    summary = {k: v for k, v in manifest["import"].items() if k != "file"}
    return rows, json.dumps(summary, sort_keys=True)


def check_pcap(data: bytes, work: Path) -> list[dict[str, Any]] | None:
    """The import property for one file's bytes; None when the file is refused cleanly."""
    work.mkdir(parents=True, exist_ok=True)
    src = work / "input.pcap"
    src.write_bytes(data)
    results = []
    for attempt in ("a", "b"):
        out = work / f"cap-{attempt}"
        try:
            _timed("import_pcap", import_pcap, src, out, (53, 5353), False, ["fuzz"])
        except AnalyzeError as exc:
            text = str(exc)
            _require("\n" not in text and bool(text), f"refusal is not one line: {text!r}")
            _require(not out.exists() or not any(out.iterdir()), "a refused file wrote files")
            results.append(None)
        else:
            results.append(_capture_digest(out))
        shutil.rmtree(out, ignore_errors=True)
    _require(results[0] == results[1], "import_pcap is not deterministic")
    if results[0] is None:
        return None
    rows, summary_json = results[0]
    summary = json.loads(summary_json)
    # Nothing dropped silently: every packet is a row or counted where it went.
    accounted = sum(summary[k] for k in ("udp", "tcp", "skipped_non_dns", "skipped_malformed",
                                         "skipped_fragments", "skipped_link_type",
                                         "tcp_duplicates"))
    _require(accounted == summary["packets"], f"{summary['packets']} packets, {accounted} "
             "accounted for")
    _require(summary["messages"] == len(rows) == summary["udp"] + summary["tcp"],
             "messages count differs")
    for r in rows:
        _require(r["src_port"] in (53, 5353) or r["dst_port"] in (53, 5353), "non-DNS port")
        _require(len(r["payload"]) <= r["orig_len"] or not r["truncated"], "truncated flag")
    table = pa.Table.from_pylist(rows, schema=MESSAGES_SCHEMA)
    out_rows = _timed("reassemble_table", reassemble_table, table).to_pylist()
    _require(len([r for r in out_rows if r["protocol"] == "udp"])
             == len([r for r in rows if r["protocol"] == "udp"]), "UDP rows lost")
    _check_decoded([r["payload"] for r in out_rows], [r["stream_error"] for r in out_rows])
    return rows


def corpus_files(target: str) -> Iterator[Path]:
    """The regression corpus of one target (tests/fuzz/corpus/<target>/)."""
    yield from sorted((Path(__file__).parent / "corpus" / target).iterdir())


__all__ = [
    "DECODE_ERRORS",
    "PropertyBroken",
    "check_decode",
    "check_name",
    "check_pcap",
    "check_row",
    "check_tcp",
    "corpus_files",
    "parse_presented",
    "tcp_input",
    "tcp_rows",
]
