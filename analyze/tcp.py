"""Reassemble DNS over TCP: stream chunks in, one row per DNS message out.

A capture's ``messages`` table keeps TCP as the syscalls (or the wire) moved it: a row is a
chunk of a stream, and DNS messages, each behind a 2-byte length prefix (RFC 1035 4.2.2), may
span chunks or share one. ``reassemble`` groups the TCP rows by stream, walks each stream in
``seq`` order and emits one row per complete message: the payload without its prefix, with
``ts``/``seq``/``mono_ns`` (and every other column) of the chunk that completed it,
``orig_len`` the message length and ``truncated`` False. UDP rows pass through unchanged.

Damage is kept, never dropped (each case has a ``stream_error`` string, docs/decode.md):

- a chunk cut by the snaplen (``truncated``) ends the message it was in: that message is
  emitted with the bytes that were captured, ``truncated`` True and ``truncated TCP chunk``;
  the bytes the message still needs are skipped, so later messages keep their framing. When
  the lost bytes ran past that message (its successor's prefix is lost too), the stream is out
  of sync and each later chunk becomes one row of raw bytes with ``TCP stream out of sync``.
- bytes left over at the end of a stream become one row with ``incomplete TCP message``.

Memory per stream is bounded by one message (at most 65535 bytes) plus one chunk.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from analyze._frames import to_pandas

#: Columns that identify a stream, in this order, when present in the table.
STREAM_KEY_COLUMNS: tuple[str, ...] = (
    "node", "capture", "netns", "tgid", "fd", "sock_id", "direction",
    "src_addr", "src_port", "dst_addr", "dst_port",
)
#: Column added to the output: null, or why the row is not one clean DNS message.
ERROR_COLUMN = "stream_error"

E_TRUNCATED_CHUNK = "truncated TCP chunk"
E_OUT_OF_SYNC = "TCP stream out of sync"
E_INCOMPLETE = "incomplete TCP message"


@dataclass
class _Emit:
    """One output row built from the input row at ``pos``."""

    pos: int
    payload: bytes
    orig_len: int
    truncated: bool
    error: str | None


@dataclass
class _Stream:
    buf: bytearray = field(default_factory=bytearray)
    need: int = -1  # length of the message being assembled, -1 while reading the prefix
    skip: int = 0  # bytes still to drop from a message already emitted as truncated
    out_of_sync: bool = False
    last_pos: int = -1


def _feed(st: _Stream, pos: int, data: bytes, orig_len: int, out: list[_Emit]) -> None:
    st.last_pos = pos
    if st.out_of_sync:
        out.append(_Emit(pos, data, orig_len, len(data) < orig_len, E_OUT_OF_SYNC))
        return
    missing = orig_len - len(data) if orig_len > len(data) else 0  # bytes after this chunk
    if st.skip:
        dropped = min(st.skip, len(data))
        st.skip -= dropped
        data = data[dropped:]
    buf = st.buf
    buf += data
    start = 0
    end = len(buf)
    while True:
        if st.need < 0:
            if end - start < 2:
                break
            st.need = (buf[start] << 8) | buf[start + 1]
            start += 2
        if end - start < st.need:
            break
        out.append(_Emit(pos, bytes(buf[start : start + st.need]), st.need, False, None))
        start += st.need
        st.need = -1
    del buf[:start]
    if missing and not st.skip:
        if st.need >= 0:
            # The cut fell inside this message: emit what we have, skip the rest of it.
            remaining = st.need - len(buf)
            out.append(_Emit(pos, bytes(buf), st.need, True, E_TRUNCATED_CHUNK))
            buf.clear()
            st.need = -1
            if missing <= remaining:
                st.skip = remaining - missing
                return
        # Lost bytes include a length prefix: framing is gone for the rest of the stream.
        st.out_of_sync = True
        if buf:
            out.append(_Emit(pos, bytes(buf), len(buf), True, E_OUT_OF_SYNC))
            buf.clear()
    elif missing:
        # Still inside a message already emitted as truncated: its remaining bytes are lost.
        if missing <= st.skip:
            st.skip -= missing
        else:
            st.skip = 0
            st.out_of_sync = True


def _finish(st: _Stream, out: list[_Emit]) -> None:
    if st.out_of_sync or (not st.buf and st.need < 0):
        return
    if st.need >= 0:
        out.append(_Emit(st.last_pos, bytes(st.buf), st.need, True, E_INCOMPLETE))
    else:  # one byte of a length prefix
        out.append(_Emit(st.last_pos, bytes(st.buf), len(st.buf), True, E_INCOMPLETE))
    st.buf.clear()


def _plan(tcp_pos: np.ndarray, keys: list[tuple[Any, ...]], seqs: Sequence[Any],
          payloads: Sequence[bytes | None], orig_lens: Sequence[Any],
          truncs: Sequence[Any]) -> list[_Emit]:
    """Walk every stream; return the rows to emit in stream order."""
    order = sorted(range(len(tcp_pos)),
                   key=lambda i: (keys[i], -1 if seqs[i] is None else seqs[i], i))
    streams: dict[tuple[Any, ...], _Stream] = {}
    out: list[_Emit] = []
    for i in order:
        st = streams.get(keys[i])
        if st is None:
            st = streams[keys[i]] = _Stream()
        data = payloads[i] or b""
        orig = orig_lens[i]
        orig_len = len(data) if orig is None else int(orig)
        if truncs[i] and orig_len <= len(data):
            orig_len = len(data) + 1  # truncated, loss size unknown: at least one byte
        _feed(st, int(tcp_pos[i]), data, orig_len, out)
    for st in streams.values():
        _finish(st, out)
    return out


def _hashable(v: Any) -> Any:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


@dataclass
class _Layout:
    """Where each output row comes from: input positions, and which rows are rebuilt."""

    source: np.ndarray  # input row position of each output row
    emitted_rows: np.ndarray  # output rows that are reassembled messages
    emits: list[_Emit]  # the message of each of emitted_rows, same order


def _layout(n: int, is_tcp: np.ndarray, columns: dict[str, list[Any]]) -> _Layout:
    tcp_pos = np.flatnonzero(is_tcp)
    m = len(tcp_pos)
    key_cols = [columns[c] for c in STREAM_KEY_COLUMNS if c in columns]
    # Keys must sort: a null becomes (False, 0), a value (True, value).
    keys = [
        tuple((v is not None, 0 if v is None else v) for v in (_hashable(x) for x in row))
        for row in zip(*key_cols, strict=True)
    ] if key_cols else [() for _ in range(m)]

    def col(name: str) -> list[Any]:
        return columns.get(name) or [None] * m

    seqs = [_hashable(v) for v in col("seq")]
    truncs = [bool(_hashable(v)) for v in col("truncated")]
    origs = [_hashable(v) for v in col("orig_len")]
    emits = _plan(tcp_pos, keys, seqs, col("payload"), origs, truncs)
    udp_pos = np.flatnonzero(~is_tcp).astype(np.int64)
    emit_pos = np.fromiter((e.pos for e in emits), dtype=np.int64, count=len(emits))
    all_pos = np.concatenate([udp_pos, emit_pos])
    order = np.argsort(all_pos, kind="stable")  # rows of one chunk stay in stream order
    emitted_rows = np.flatnonzero(order >= len(udp_pos))
    ordered = [emits[i] for i in (order[emitted_rows] - len(udp_pos))]
    return _Layout(all_pos[order], emitted_rows, ordered)


_NEEDED = ("seq", "payload", "orig_len", "truncated")


def reassemble_table(table: pa.Table) -> pa.Table:
    """Arrow form of :func:`reassemble`: same rows and rules, returns a pyarrow Table."""
    n = table.num_rows
    names = table.column_names
    if "protocol" in names:
        proto = table.column("protocol").cast(pa.string()).to_numpy(zero_copy_only=False)
        is_tcp = np.asarray(proto == "tcp", dtype=bool)
    else:
        is_tcp = np.zeros(n, dtype=bool)
    if not is_tcp.any():
        return table.append_column(ERROR_COLUMN, pa.nulls(n, pa.string()))
    tcp = table.filter(pa.array(is_tcp))
    wanted = [c for c in STREAM_KEY_COLUMNS + _NEEDED if c in names]
    lay = _layout(n, is_tcp, {c: tcp.column(c).to_pylist() for c in wanted})
    identity = len(lay.source) == n and bool((lay.source == np.arange(n)).all())
    out = table if identity else table.take(pa.array(lay.source))
    mask = np.zeros(out.num_rows, dtype=bool)
    mask[lay.emitted_rows] = True
    amask = pa.array(mask)

    def patched(name: str, values: list[Any], typ: pa.DataType) -> pa.Array:
        if name in out.column_names:
            base = out.column(name).combine_chunks()
            typ = base.type
        else:
            base = pa.nulls(out.num_rows, typ)
        return pc.replace_with_mask(base, amask, pa.array(values, type=typ))

    replace = {
        "payload": patched("payload", [e.payload for e in lay.emits], pa.binary()),
        "orig_len": patched("orig_len", [e.orig_len for e in lay.emits], pa.uint32()),
        "truncated": patched("truncated", [e.truncated for e in lay.emits], pa.bool_()),
    }
    errors = pc.replace_with_mask(pa.nulls(out.num_rows, pa.string()), amask,
                                  pa.array([e.error for e in lay.emits], type=pa.string()))
    arrays: list[Any] = []
    fields = []
    for f in out.schema:
        arrays.append(replace.get(f.name, out.column(f.name)))
        fields.append(f)
    for name, arr in replace.items():
        if name not in names:
            arrays.append(arr)
            fields.append(pa.field(name, arr.type))
    arrays.append(errors)
    fields.append(pa.field(ERROR_COLUMN, pa.string()))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def reassemble(table: pa.Table | pd.DataFrame) -> pd.DataFrame:
    """One row per DNS message: TCP chunks reassembled, UDP rows unchanged.

    ``table`` has the capture ``messages`` columns (``capture/schema.py``), optionally with
    ``node``/``capture``. The result has the same columns plus ``stream_error`` (null for a
    clean message). Arrow input is converted with dictionary columns as strings, integers as
    nullable ``Int64`` (``UInt64`` for uint64) and booleans as ``boolean``; a DataFrame keeps
    its dtypes.
    """
    if not isinstance(table, pd.DataFrame):
        return to_pandas(reassemble_table(table))
    frame = table.reset_index(drop=True)
    n = len(frame)
    if "protocol" in frame.columns:
        is_tcp = np.asarray((frame["protocol"] == "tcp").fillna(False), dtype=bool)
    else:
        is_tcp = np.zeros(n, dtype=bool)
    if not is_tcp.any():
        frame = frame.copy()
        frame[ERROR_COLUMN] = pd.Series([None] * n, dtype="str")
        return frame
    tcp = frame[is_tcp]
    wanted = [c for c in STREAM_KEY_COLUMNS + _NEEDED if c in frame.columns]
    lay = _layout(n, is_tcp, {c: tcp[c].tolist() for c in wanted})
    out = frame.iloc[lay.source].reset_index(drop=True)
    rows = lay.emitted_rows
    payload = out["payload"].to_numpy(dtype=object, copy=True) if "payload" in out else (
        np.full(len(out), None, dtype=object))
    payload[rows] = [e.payload for e in lay.emits]
    out["payload"] = payload
    if "orig_len" in out:
        orig = out["orig_len"].astype("Int64").copy()
    else:
        orig = pd.Series(pd.array([None] * len(out), dtype="Int64"))
    orig.iloc[rows] = [e.orig_len for e in lay.emits]
    out["orig_len"] = orig
    trunc = out["truncated"].astype("boolean").copy() if "truncated" in out else pd.Series(
        pd.array([False] * len(out), dtype="boolean"))
    trunc.iloc[rows] = [e.truncated for e in lay.emits]
    out["truncated"] = trunc
    err = np.full(len(out), None, dtype=object)
    err[rows] = [e.error for e in lay.emits]
    out[ERROR_COLUMN] = pd.Series(err, dtype="str")
    return out


__all__ = [
    "ERROR_COLUMN",
    "E_INCOMPLETE",
    "E_OUT_OF_SYNC",
    "E_TRUNCATED_CHUNK",
    "STREAM_KEY_COLUMNS",
    "reassemble",
    "reassemble_table",
]
