"""Decode DNS wire messages into the columns of the analyzer's ``messages`` table.

Everything here reads attacker-controlled bytes. The parser is a bounded scan written for that:
it never raises, never loops (compression pointers must point strictly before the label run
that holds them, at most ``MAX_POINTER_HOPS`` hops per name), never allocates more than the
payload allows (at most ``MAX_RECORDS`` records per message, rdata text capped), and turns a
damaged payload into a row with ``error`` (a short reason) and ``error_offset`` (where decoding
stopped), keeping every field it read before that point. dnslib renders the rdata of the less
common record types (CAA, DNSKEY, DS, HTTPS, LOC, NAPTR, NSEC, RP, RRSIG, SSHFP, TLSA) once the
scan has bounded them; the scan itself decodes the header, names and the common types.

Speed: traffic repeats itself (a benchmark or a retrying client sends the same question again
and again with a new transaction id), so each distinct payload is decoded once with its first
two bytes (the id) set aside, and the id column is read with one vectorized pass.
See docs/decode.md for the rules and the error strings.
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from dnslib import QTYPE, RDMAP, DNSBuffer, DNSLabel

from analyze.names import registered_domain

#: Column names of the DataFrame decode_messages returns, in order (docs/api.md, ``messages``).
DECODED_COLUMNS: tuple[str, ...] = (
    "dns_id", "qr", "opcode", "rcode", "rcode_name", "aa", "tc", "rd", "ra",
    "qdcount", "ancount", "nscount", "arcount", "qname", "qtype", "qclass",
    "questions", "answers", "authority", "additional", "answer_ips", "min_ttl",
    "edns_udp_size", "registered_domain", "error", "error_offset",
)

#: Most compression pointers followed while reading one name.
MAX_POINTER_HOPS = 64
#: Most records (questions included) decoded from one message; the rest is an error.
MAX_RECORDS = 4096
#: Longest rdata rendered in full as text; longer rdata is cut and marked.
MAX_RDATA_TEXT = 1024
#: Names of the DNS header length.
HEADER_LEN = 12

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")
_U16 = struct.Struct("!H")
_SOA_TAIL = struct.Struct("!IIIII")
_SRV_HEAD = struct.Struct("!HHH")

_RCODE_NAMES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 11: "DSOTYPENI",
    16: "BADVERS", 17: "BADKEY", 18: "BADTIME", 19: "BADMODE", 20: "BADNAME", 21: "BADALG",
    22: "BADTRUNC", 23: "BADCOOKIE",
}
#: Response codes by number (the names the ``rcode_name`` column holds).
RCODE_NAMES = _RCODE_NAMES
_CLASS_NAMES = {1: "IN", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}
_TYPE_NAMES: dict[int, str] = {
    int(k): str(v) for k, v in QTYPE.forward.items()  # type: ignore[attr-defined]
}
_TYPE_NAMES.setdefault(10, "NULL")

# Types whose rdata is one domain name.
_NAME_TYPES = frozenset((2, 3, 4, 5, 7, 8, 9, 12, 39))
_T_A, _T_NS, _T_SOA, _T_MX, _T_TXT, _T_AAAA, _T_SRV, _T_OPT = 1, 2, 6, 15, 16, 28, 33, 41

# Bytes that may stand for themselves in a presented name: printable ASCII except '\' (a '.'
# inside a label is caught by counting the dots of the joined labels).
_UNSAFE_NAME = re.compile(rb"[^\x21-\x5b\x5d-\x7e]")
_SAFE_CHARS: tuple[str, ...] = tuple(
    (chr(b).lower() if (0x21 <= b <= 0x7E and b not in (0x2E, 0x5C)) else f"\\{b:03d}")
    for b in range(256)
)
# TXT character-strings: printable ASCII except '"' and '\' stand for themselves.
_TXT_CHARS: tuple[str, ...] = tuple(
    (chr(b) if (0x20 <= b <= 0x7E and b not in (0x22, 0x5C)) else f"\\{b:03d}")
    for b in range(256)
)
_UNSAFE_TXT = re.compile(rb'[^\x20\x21\x23-\x5b\x5d-\x7e]')


class _Stop(Exception):
    """Internal: decoding stopped at ``offset`` for ``reason``."""

    def __init__(self, reason: str, offset: int) -> None:
        self.reason = reason
        self.offset = offset


def type_name(qtype: int) -> str:
    """Mnemonic of a record type (``A``, ``NULL``) or ``TYPE65399`` for an unknown one."""
    return _TYPE_NAMES.get(qtype) or f"TYPE{qtype}"


def class_name(qclass: int) -> str:
    """Mnemonic of a class (``IN``, ``CH``) or ``CLASS77``."""
    return _CLASS_NAMES.get(qclass) or f"CLASS{qclass}"


def rcode_name(rcode: int) -> str:
    """Mnemonic of a response code, extended bits included (``NXDOMAIN``, ``RCODE42``)."""
    return _RCODE_NAMES.get(rcode) or f"RCODE{rcode}"


def present_labels(labels: Sequence[bytes]) -> str:
    """Presentation form of a name: lower-case, no trailing dot, root is ``.``.

    Bytes outside printable ASCII, and ``.`` or ``\\`` inside a label, become ``\\DDD``.
    """
    if not labels:
        return "."
    joined = b".".join(labels)
    if _UNSAFE_NAME.search(joined) is None and joined.count(b".") == len(labels) - 1:
        return joined.lower().decode("ascii")
    chars = _SAFE_CHARS
    return ".".join("".join([chars[b] for b in label]) for label in labels)


def _read_labels(data: bytes, pos: int, end: int) -> tuple[list[bytes], int]:
    """Read the name at ``pos``; return its labels and the offset after it in place.

    ``end`` bounds the bytes of the name read in place (pointer targets may lie anywhere
    after the header and before the run that points at them).
    """
    n = len(data)
    labels: list[bytes] = []
    wire_len = 1  # the root octet
    after = -1
    run_start = pos
    hops = 0
    limit = end
    while True:
        if pos >= limit:
            raise _Stop("truncated name", min(pos, n))
        length = data[pos]
        if length == 0:
            if after < 0:
                after = pos + 1
            break
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= limit:
                raise _Stop("truncated name", pos)
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if after < 0:
                after = pos + 2
            if target > pos:
                raise _Stop("forward pointer", pos)
            if target >= run_start:
                raise _Stop("compression loop", pos)
            if target < HEADER_LEN:
                # No name starts in the header; and what the id bytes would spell must not
                # matter (the batch decoders decode each payload once, its id set aside).
                raise _Stop("pointer into header", pos)
            hops += 1
            if hops > MAX_POINTER_HOPS:
                raise _Stop("too many compression pointers", pos)
            pos = run_start = target
            limit = n
            continue
        if kind:
            raise _Stop("bad label type", pos)
        wire_len += length + 1
        if wire_len > 255:
            raise _Stop("name too long", pos)
        if pos + 1 + length > limit:
            raise _Stop("label past end", pos)
        labels.append(data[pos + 1 : pos + 1 + length])
        pos += 1 + length
    return labels, after


def _read_name(data: bytes, pos: int, end: int) -> tuple[str, int]:
    """_read_labels, the name in presentation form."""
    labels, after = _read_labels(data, pos, end)
    return present_labels(labels), after


def _read_owner(data: bytes, pos: int, n: int, seen: dict[int, str]) -> tuple[str, int]:
    """_read_name for question and record owners, with the names read so far remembered.

    Owners are usually one pointer to the question name (``c0 0c``): that is answered from
    ``seen`` (the names read so far, by the offset they start at), which is what following
    the pointer would read (the pointer rules are checked from that offset either way; only
    the hop count differs by one).
    """
    first = data[pos]
    if first >= 0xC0 and pos + 1 < n:
        target = ((first & 0x3F) << 8) | data[pos + 1]
        cached = seen.get(target)
        if cached is not None and target < pos:
            return cached, pos + 2
        return _read_name(data, pos, n)
    name, after = _read_name(data, pos, n)
    seen[pos] = name
    return name, after


def _txt_text(data: bytes, pos: int, end: int) -> str:
    parts = []
    while pos < end:
        length = data[pos]
        if pos + 1 + length > end:
            raise _Stop("bad rdata", pos)
        s = data[pos + 1 : pos + 1 + length]
        if _UNSAFE_TXT.search(s) is None:
            parts.append('"' + s.decode("ascii") + '"')
        else:
            chars = _TXT_CHARS
            parts.append('"' + "".join([chars[b] for b in s]) + '"')
        pos += 1 + length
    return " ".join(parts)


def _generic_text(rdata: bytes) -> str:
    """RFC 3597 form ``\\# LEN HEX``, cut after MAX_RDATA_TEXT bytes."""
    if len(rdata) > MAX_RDATA_TEXT:
        return f"\\# {len(rdata)} {rdata[:MAX_RDATA_TEXT].hex()}..."
    return f"\\# {len(rdata)} {rdata.hex()}" if rdata else "\\# 0"


def _rdata_text(data: bytes, rtype: int, pos: int, rdlen: int) -> str:
    end = pos + rdlen
    if rtype == _T_A:
        if rdlen != 4:
            raise _Stop("bad rdata", pos)
        return socket.inet_ntop(socket.AF_INET, data[pos:end])
    if rtype == _T_AAAA:
        if rdlen != 16:
            raise _Stop("bad rdata", pos)
        return socket.inet_ntop(socket.AF_INET6, data[pos:end])
    if rtype in _NAME_TYPES:
        name, after = _read_name(data, pos, end)
        if after != end:
            raise _Stop("bad rdata", after)
        return name
    if rtype == _T_TXT:
        return _txt_text(data, pos, end)
    if rtype == _T_MX:
        if rdlen < 3:
            raise _Stop("bad rdata", pos)
        name, after = _read_name(data, pos + 2, end)
        if after != end:
            raise _Stop("bad rdata", after)
        return f"{_U16.unpack_from(data, pos)[0]} {name}"
    if rtype == _T_SRV:
        if rdlen < 7:
            raise _Stop("bad rdata", pos)
        prio, weight, port = _SRV_HEAD.unpack_from(data, pos)
        name, after = _read_name(data, pos + 6, end)
        if after != end:
            raise _Stop("bad rdata", after)
        return f"{prio} {weight} {port} {name}"
    if rtype == _T_SOA:
        mname, p = _read_name(data, pos, end)
        rname, p = _read_name(data, p, end)
        if p + 20 != end:
            raise _Stop("bad rdata", p)
        nums = _SOA_TAIL.unpack_from(data, p)
        return f"{mname} {rname} " + " ".join(str(x) for x in nums)
    tname = _TYPE_NAMES.get(rtype)
    if tname is not None and tname in RDMAP and rdlen <= MAX_RDATA_TEXT:
        text = _dnslib_text(data, tname, pos, rdlen)
        if text is not None:
            return text
    return _generic_text(data[pos:end])


class _BoundedBuffer(DNSBuffer):  # type: ignore[misc]
    """dnslib's buffer with names read by _read_labels: dnslib's own decode_name follows
    pointers by recursion, lets them point into the run that led to them and does not cap a
    name's length, so a message of looping labels took seconds per record."""

    def __init__(self, data: bytes, end: int) -> None:
        super().__init__(data)
        self._end = end

    def decode_name(self, last: int = -1) -> DNSLabel:
        start: int = self.offset  # type: ignore[has-type]
        labels, after = _read_labels(self.data, start, self._end)
        self.offset = after
        return DNSLabel(labels)


def _dnslib_text(data: bytes, tname: str, pos: int, rdlen: int) -> str | None:
    """dnslib's zone text of one rdata, or None when dnslib cannot read it exactly."""
    try:
        buf = _BoundedBuffer(data, pos + rdlen)
        buf.offset = pos
        rd = RDMAP[tname].parse(buf, rdlen)
        text = str(rd.toZone())
    except Exception:  # noqa: BLE001 - dnslib raises many types on bad rdata
        return None  # the caller keeps the bytes in RFC 3597 form
    if buf.offset != pos + rdlen or len(text) > 4 * MAX_RDATA_TEXT:
        return None
    if not (text.isascii() and text.isprintable()):
        # dnslib writes the bytes of CAA, NAPTR... strings as they are (a NUL, an escape
        # sequence); the RFC 3597 form keeps them exact and inert
        return None
    return text


#: One decoded message without its id: the columns of DECODED_COLUMNS after dns_id.
_Row = tuple[Any, ...]


def _decode_one(data: bytes) -> _Row:
    """Decode one payload (the id bytes are ignored). Never raises."""
    n = len(data)
    qr = opcode = rcode = aa = tc = rd = ra = None
    qd = an = ns = ar = None
    qname = qtype = qclass = None
    questions: list[tuple[str, str, str]] = []
    sections: list[list[tuple[str, str, int, str]]] = [[], [], []]
    answer_ips: list[str] = []
    min_ttl = None
    edns = None
    error = None
    error_offset = None
    ext_rcode = 0
    try:
        if n == 0:
            raise _Stop("empty payload", 0)
        if n >= 4:
            flags = _U16.unpack_from(data, 2)[0]
            qr = bool(flags & 0x8000)
            opcode = (flags >> 11) & 0xF
            aa = bool(flags & 0x0400)
            tc = bool(flags & 0x0200)
            rd = bool(flags & 0x0100)
            ra = bool(flags & 0x0080)
            rcode = flags & 0xF
        if n < HEADER_LEN:
            raise _Stop("truncated header", n)
        _, _, qd, an, ns, ar = _HEADER.unpack_from(data, 0)
        pos = HEADER_LEN
        budget = MAX_RECORDS
        seen: dict[int, str] = {}
        for _ in range(qd):
            if pos >= n:
                raise _Stop("count exceeds packet", pos)
            budget -= 1
            if budget < 0:
                raise _Stop("too many records", pos)
            name, pos = _read_owner(data, pos, n, seen)
            if pos + 4 > n:
                if qname is None:
                    qname = name  # the name was read whole; its type and class were not
                raise _Stop("truncated question", pos)
            t, c = _U16.unpack_from(data, pos)[0], _U16.unpack_from(data, pos + 2)[0]
            pos += 4
            tn = _TYPE_NAMES.get(t) or f"TYPE{t}"
            cn = _CLASS_NAMES.get(c) or f"CLASS{c}"
            if qname is None:
                qname, qtype, qclass = name, tn, cn
            questions.append((name, tn, cn))
        for si, count in enumerate((an, ns, ar)):
            section = sections[si]
            for _ in range(count):
                if pos >= n:
                    raise _Stop("count exceeds packet", pos)
                budget -= 1
                if budget < 0:
                    raise _Stop("too many records", pos)
                name, pos = _read_owner(data, pos, n, seen)
                if pos + 10 > n:
                    raise _Stop("truncated record", pos)
                rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, pos)
                pos += 10
                if pos + rdlen > n:
                    raise _Stop("truncated rdata", pos)
                if rtype == _T_OPT:
                    if edns is None:
                        edns = rclass
                        ext_rcode = (ttl >> 24) & 0xFF
                    pos += rdlen
                    continue
                try:
                    text = _rdata_text(data, rtype, pos, rdlen)
                except _Stop as bad:
                    # Keep the record with its raw bytes; remember the first damage.
                    text = _generic_text(data[pos : pos + rdlen])
                    if error is None:
                        error, error_offset = bad.reason, bad.offset
                tn = _TYPE_NAMES.get(rtype) or f"TYPE{rtype}"
                section.append((name, tn, ttl, text))
                if si == 0:
                    if (rtype == _T_A and rdlen == 4) or (rtype == _T_AAAA and rdlen == 16):
                        answer_ips.append(text)
                    if min_ttl is None or ttl < min_ttl:
                        min_ttl = ttl
                pos += rdlen
        if pos < n and error is None:
            error, error_offset = "trailing bytes", pos
    except _Stop as stop:
        error, error_offset = stop.reason, stop.offset
    if rcode is not None and ext_rcode:
        rcode |= ext_rcode << 4
    return (
        qr, opcode, rcode, None if rcode is None else rcode_name(rcode), aa, tc, rd, ra,
        qd, an, ns, ar, qname, qtype, qclass, questions, sections[0], sections[1], sections[2],
        answer_ips, min_ttl, edns, None if qname is None else registered_domain(qname),
        error, error_offset,
    )


def decode_message(payload: bytes) -> dict[str, Any]:
    """Decode one DNS message (no TCP length prefix) into a dict keyed by DECODED_COLUMNS."""
    row = _decode_one(bytes(payload))
    dns_id = _U16.unpack_from(payload, 0)[0] if len(payload) >= 2 else None
    return dict(zip(DECODED_COLUMNS, (dns_id,) + row, strict=True))


# Column kinds of the rows _decode_one returns (DECODED_COLUMNS[1:]).
_INT, _BOOL, _STR, _OBJ = "int", "bool", "str", "obj"
_KINDS: dict[str, str] = {
    "qr": _BOOL, "opcode": _INT, "rcode": _INT, "rcode_name": _STR, "aa": _BOOL, "tc": _BOOL,
    "rd": _BOOL, "ra": _BOOL, "qdcount": _INT, "ancount": _INT, "nscount": _INT,
    "arcount": _INT, "qname": _STR, "qtype": _STR, "qclass": _STR, "questions": _OBJ,
    "answers": _OBJ, "authority": _OBJ, "additional": _OBJ, "answer_ips": _OBJ,
    "min_ttl": _INT, "edns_udp_size": _INT, "registered_domain": _STR, "error": _STR,
    "error_offset": _INT,
}
_ARROW_TYPES = {_INT: pa.int64(), _BOOL: pa.bool_(), _STR: pa.string()}
_PANDAS_TYPES = {_INT: pd.Int64Dtype(), _BOOL: pd.BooleanDtype()}


def _as_binary_array(payloads: Any) -> pa.LargeBinaryArray:
    if isinstance(payloads, pa.ChunkedArray):
        arr = payloads.combine_chunks() if payloads.num_chunks else pa.array([], pa.binary())
    elif isinstance(payloads, pa.Array):
        arr = payloads
    else:
        if isinstance(payloads, pd.Series):
            try:
                arr = pa.array(payloads, type=pa.large_binary(), from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                arr = pa.array(list(payloads), type=pa.large_binary())
        else:
            arr = pa.array(list(payloads) if not isinstance(payloads, list) else payloads,
                           type=pa.large_binary())
    if arr.type != pa.large_binary():
        arr = arr.cast(pa.large_binary())
    if arr.null_count:
        arr = pc.fill_null(arr, pa.scalar(b"", pa.large_binary()))
    return arr  # type: ignore[return-value]


def _without_id(arr: pa.LargeBinaryArray) -> pa.Array:
    """Each payload from byte 2 on (the whole rest: two payloads that differ late must not
    share a key)."""
    longest = pc.max(pc.binary_length(arr)).as_py() or 0
    return pc.binary_slice(arr, 2, max(longest, 2))


def decode_messages(payloads: Iterable[bytes] | pa.Array | pa.ChunkedArray) -> pd.DataFrame:
    """Decode DNS payloads (no TCP length prefix): one row per payload, DECODED_COLUMNS.

    Never raises on payload content: a damaged payload gives a row with ``error`` and
    ``error_offset`` and whatever fields were read before the damage.
    """
    arr = _as_binary_array(payloads)
    count = len(arr)
    # Lengths and ids straight from the Arrow buffers.
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + count + 1]
    data_buf = arr.buffers()[2]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(
        0, np.uint8)
    starts = offsets[:-1]
    lengths = offsets[1:] - starts
    has_id = lengths >= 2
    ids = np.zeros(count, dtype=np.int64)
    if has_id.any():
        s = starts[has_id]
        ids[has_id] = data[s].astype(np.int64) * 256 + data[s + 1]
    dns_id = pd.arrays.IntegerArray(ids, ~has_id)

    # Distinct payloads with the id set aside; short payloads (no full header) each alone.
    if count:
        encoded = pc.dictionary_encode(_without_id(arr))
        keys = encoded.dictionary.to_pylist()
        index = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        keys, index = [], np.zeros(0, np.int64)
    rows: list[_Row] = []
    for key in keys:
        rows.append(_decode_one(b"\0\0" + key))  # short ones are redone below
    short = np.flatnonzero(lengths < HEADER_LEN)
    if len(short):
        short_payloads = arr.take(pa.array(short)).to_pylist()
        base = len(rows)
        rows.extend(_decode_one(p) for p in short_payloads)
        index[short] = np.arange(base, base + len(short))

    columns: dict[str, Any] = {"dns_id": dns_id}
    objects: dict[str, np.ndarray] = {}
    names = DECODED_COLUMNS[1:]
    transposed = list(zip(*rows, strict=True)) if rows else [()] * len(names)
    take = pa.array(index, type=pa.int64())
    for name, values in zip(names, transposed, strict=True):
        kind = _KINDS[name]
        if kind == _OBJ:
            # fromiter keeps each list whole (slice assignment would let numpy broadcast them)
            uniq = np.fromiter(values, dtype=object, count=len(values))
            objects[name] = uniq[index] if count else np.empty(0, dtype=object)
        elif kind == _STR:
            if all(v is None for v in values):
                columns[name] = pa.nulls(count, pa.string()).to_pandas()
            else:
                columns[name] = pa.array(values, type=pa.string()).take(take).to_pandas()
        else:
            columns[name] = _expand_scalar(values, kind, index, count)
    frame = pd.DataFrame(columns, copy=False)
    # Object columns are added one by one: passing them to the constructor would stack them
    # into one 2-D block (a full copy).
    for name, arr in objects.items():
        frame.insert(DECODED_COLUMNS.index(name), name, pd.Series(arr, copy=False))
    return frame


def _expand_scalar(values: Sequence[Any], kind: str, index: np.ndarray,
                   count: int) -> pd.api.extensions.ExtensionArray:
    """Nullable Int64/boolean column of ``count`` rows: values[index], constants without take."""
    is_int = kind == _INT
    dtype = np.int64 if is_int else np.bool_
    if values and list(values).count(values[0]) == len(values):
        only = values[0]
        data: np.ndarray = np.full(count, 0 if only is None else only, dtype=dtype)
        mask: np.ndarray = np.full(count, only is None, dtype=np.bool_)
    else:
        arr = pa.array(values, type=_ARROW_TYPES[kind])
        filled = pc.fill_null(arr, pa.scalar(0 if is_int else False, arr.type))
        uniq: np.ndarray = np.asarray(filled.to_numpy(zero_copy_only=False), dtype=dtype)
        umask = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=np.bool_)
        data, mask = uniq[index], umask[index]
    if is_int:
        return pd.arrays.IntegerArray(data, mask)
    return pd.arrays.BooleanArray(data, mask)


#: Arrow types of the record lists: questions, and answer/authority/additional records.
QUESTION_TYPE = pa.struct([("name", pa.string()), ("type", pa.string()), ("class", pa.string())])
RECORD_TYPE = pa.struct([("name", pa.string()), ("type", pa.string()), ("ttl", pa.int64()),
                         ("data", pa.string())])
#: Arrow type of every DECODED_COLUMNS column in the table decode_table returns.
DECODED_ARROW_TYPES: dict[str, pa.DataType] = {
    "dns_id": pa.int64(),
    **{name: (_ARROW_TYPES[kind] if kind != _OBJ else
              pa.list_(QUESTION_TYPE) if name == "questions" else
              pa.list_(pa.string()) if name == "answer_ips" else pa.list_(RECORD_TYPE))
       for name, kind in _KINDS.items()},
}


def decode_table(payloads: Iterable[bytes] | pa.Array | pa.ChunkedArray) -> pa.Table:
    """Arrow form of :func:`decode_messages`: the same rows and rules, typed columns.

    Record lists are ``list<struct>`` (``questions``: name, type, class; ``answers``,
    ``authority``, ``additional``: name, type, ttl, data), ``answer_ips`` ``list<string>``; no
    Python objects. Each distinct payload is decoded once (its id set aside) and its values
    are taken for every row that carries it.
    """
    arr = _as_binary_array(payloads)
    count = len(arr)
    if count:
        encoded = pc.dictionary_encode(_without_id(arr))
        keys = encoded.dictionary.to_pylist()
        index = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        keys, index = [], np.zeros(0, np.int64)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + count + 1]
    lengths = offsets[1:] - offsets[:-1]
    rows: list[_Row] = [_decode_one(b"\0\0" + key) for key in keys]
    short = np.flatnonzero(lengths < HEADER_LEN)
    if len(short):
        base = len(rows)
        rows.extend(_decode_one(p) for p in arr.take(pa.array(short)).to_pylist())
        index = index.copy()
        index[short] = np.arange(base, base + len(short))
    has_id = lengths >= 2
    ids = np.zeros(count, dtype=np.int64)
    if count:
        data_buf = arr.buffers()[2]
        data = (np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None
                else np.zeros(0, np.uint8))
        s = offsets[:-1][has_id]
        ids[has_id] = data[s].astype(np.int64) * 256 + data[s + 1]
    columns: dict[str, pa.Array] = {"dns_id": pa.array(ids, pa.int64(), mask=~has_id)}
    take = pa.array(index, type=pa.int64())
    transposed = list(zip(*rows, strict=True)) if rows else [()] * len(_KINDS)
    for name, values in zip(DECODED_COLUMNS[1:], transposed, strict=True):
        columns[name] = pa.array(values, type=DECODED_ARROW_TYPES[name]).take(take)
    return pa.table(columns)


__all__ = [
    "DECODED_COLUMNS",
    "MAX_POINTER_HOPS",
    "MAX_RECORDS",
    "RCODE_NAMES",
    "class_name",
    "decode_message",
    "decode_messages",
    "decode_table",
    "present_labels",
    "rcode_name",
    "record_text",
    "type_name",
]


def record_text(rr: Any) -> str:
    """``TYPE data`` of one answer record: a ``{name, type, ttl, data}`` mapping (the stage
    tables) or a ``(name, type, ttl, data)`` tuple (``decode_messages``)."""
    try:
        if isinstance(rr, dict):
            return f"{rr['type']} {rr['data']}"
        return f"{rr[1]} {rr[3]}"
    except (IndexError, TypeError, KeyError):
        return str(rr)
