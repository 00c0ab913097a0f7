"""Arrow arrays built from buffers, for the recording process.

``pa.array()``, ``pa.Table.from_pydict`` and friends consult pandas, and so import it (~30 MB
resident for the life of a recording) into the recorder; these build the same arrays from
numpy buffers and Python values without it (``tests/test_record_memory.py`` compares them
with ``pa.array`` and checks a running recorder's memory map).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from capture.schema import TS

__all__ = ["arrow_array", "arrow_table", "bools", "numeric", "validity"]

_NP_DTYPES: dict[pa.DataType, np.dtype[Any]] = {
    pa.int8(): np.dtype(np.int8), pa.int16(): np.dtype(np.int16),
    pa.int32(): np.dtype(np.int32), pa.int64(): np.dtype(np.int64),
    pa.uint8(): np.dtype(np.uint8), pa.uint16(): np.dtype(np.uint16),
    pa.uint32(): np.dtype(np.uint32), pa.uint64(): np.dtype(np.uint64),
    TS: np.dtype(np.int64),
}


def validity(null: np.ndarray | None) -> pa.Buffer | None:
    """Arrow validity bitmap for a null mask (None when nothing is null)."""
    if null is None or not null.any():
        return None
    return pa.py_buffer(np.packbits(~null, bitorder="little"))


def numeric(values: np.ndarray, typ: pa.DataType, null: np.ndarray | None = None) -> pa.Array:
    """A numpy array (any layout) as a fixed-width Arrow array; True in ``null`` = null."""
    data = np.ascontiguousarray(values, dtype=_NP_DTYPES[typ])
    return pa.Array.from_buffers(typ, len(data), [validity(null), pa.py_buffer(data)])


def bools(values: np.ndarray) -> pa.Array:
    """A numpy bool array as an Arrow boolean array (no nulls)."""
    return pa.Array.from_buffers(pa.bool_(), len(values), [
        None, pa.py_buffer(np.packbits(values, bitorder="little"))])


def arrow_array(values: Sequence[Any], typ: pa.DataType) -> pa.Array:
    """Python values (None = null) as an Arrow array of type ``typ`` (integers, timestamps as
    int ns, floats, booleans, strings, dictionaries of strings), built from buffers:
    ``pa.array()`` would import pandas."""
    n = len(values)
    nulls = validity(np.fromiter((v is None for v in values), dtype=bool, count=n))
    if pa.types.is_dictionary(typ):
        return arrow_array(values, typ.value_type).dictionary_encode().cast(typ)
    if pa.types.is_string(typ) or pa.types.is_binary(typ):
        parts = [b"" if v is None else v if isinstance(v, bytes)
                 else str(v).encode("utf-8", "backslashreplace") for v in values]
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(np.fromiter(map(len, parts), dtype=np.int64, count=n), out=offsets[1:])
        return pa.Array.from_buffers(typ, n, [nulls, pa.py_buffer(offsets),
                                              pa.py_buffer(b"".join(parts))])
    if pa.types.is_boolean(typ):
        bits = np.fromiter((bool(v) for v in values), dtype=bool, count=n)
        return pa.Array.from_buffers(typ, n, [nulls, pa.py_buffer(
            np.packbits(bits, bitorder="little"))])
    if pa.types.is_floating(typ):
        dtype = np.dtype(f"f{typ.bit_width // 8}")
    elif pa.types.is_integer(typ) or pa.types.is_timestamp(typ):
        signed = pa.types.is_timestamp(typ) or pa.types.is_signed_integer(typ)
        dtype = np.dtype(f"{'i' if signed else 'u'}{typ.bit_width // 8}")
    else:
        raise TypeError(f"arrow_array: unsupported type {typ}")
    data = np.fromiter((0 if v is None else v for v in values), dtype=dtype, count=n)
    return pa.Array.from_buffers(typ, n, [nulls, pa.py_buffer(data)])


def arrow_table(columns: Mapping[str, Sequence[Any]], schema: pa.Schema) -> pa.Table:
    """``pa.Table.from_pydict(columns, schema=schema)`` without pandas (see arrow_array)."""
    return pa.Table.from_arrays([arrow_array(columns[f.name], f.type) for f in schema],
                                schema=schema)
