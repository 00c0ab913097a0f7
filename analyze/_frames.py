"""Arrow tables -> pandas the one way the analyzer wants them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from analyze.stages import ATTR_COLUMNS, ROLES

_MAPPER: dict[pa.DataType, Any] = {
    pa.binary(): pd.ArrowDtype(pa.binary()),
    pa.large_binary(): pd.ArrowDtype(pa.large_binary()),
    pa.int8(): pd.Int64Dtype(), pa.int16(): pd.Int64Dtype(),
    pa.int32(): pd.Int64Dtype(), pa.int64(): pd.Int64Dtype(),
    pa.uint8(): pd.Int64Dtype(), pa.uint16(): pd.Int64Dtype(),
    pa.uint32(): pd.Int64Dtype(), pa.uint64(): pd.UInt64Dtype(),
    pa.bool_(): pd.BooleanDtype(),
}


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """Dictionary columns as strings, integers and booleans nullable, binary kept in Arrow."""
    cols = [c.cast(pa.string()) if pa.types.is_dictionary(c.type) else c
            for c in table.columns]
    plain = pa.Table.from_arrays(cols, names=table.column_names)
    return plain.to_pandas(types_mapper=_MAPPER.get)


#: Columns with few distinct values, materialized as pandas categoricals (as matching
#: always made them).
_CATEGORICAL = ("node", "capture")
#: Columns read dictionary-encoded from the stage tables (few distinct, long values), then
#: made plain strings one column at a time (pandas shares one object per distinct value).
DICTIONARY_COLUMNS = _CATEGORICAL + ("cgroup_path", "comm", "process") + ATTR_COLUMNS
_FIXED_CATEGORIES = {"role": list(ROLES), "side": ["client", "server", "wire"],
                     "status": ["answered", "timeout", "unsolicited"]}


#: Record lists stay in Arrow (``pd.ArrowDtype``): an element reads as a list of
#: ``{name, type, ttl, data}`` dicts, but no Python object is made per row until then.
_RECORD_LISTS = ("questions", "answers", "authority", "additional")


def stage_frame(table: pa.Table, name: str) -> pd.DataFrame:
    """A stage table as the analyzer's pandas frame: low-cardinality text as categoricals
    (encoded in Arrow, so no Python string is made per row)."""
    # transactions feed the detectors' group-bys: attribution as categoricals there; the
    # messages, the notebook's raw table, keep plain strings (fillna("host") works)
    categorical = _CATEGORICAL if name == "messages" else DICTIONARY_COLUMNS
    cats = [c for c in table.column_names
            if c in categorical or (c in _FIXED_CATEGORIES and name != "lookups")]
    kept = [c for c in table.column_names if c in _RECORD_LISTS]
    texts = [c for c in table.column_names if c in DICTIONARY_COLUMNS and c not in cats]
    special = cats + kept + texts
    plain = to_pandas(table.drop_columns(special)) if special else to_pandas(table)
    if not special:
        return plain
    out: dict[str, Any] = {}
    for col in table.column_names:
        if col in texts:
            out[col] = pd.Series(to_pandas(table.select([col]))[col].array, index=plain.index,
                                 name=col)
            continue
        if col in kept:
            column = table.column(col)
            out[col] = pd.Series(pd.arrays.ArrowExtensionArray(column), index=plain.index,
                                 name=col)
            continue
        if col not in cats:
            out[col] = plain[col]
            continue
        column = table.column(col)
        if col in _FIXED_CATEGORIES:
            arr = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
            if pa.types.is_dictionary(arr.type):
                arr = arr.cast(pa.string())
            values = pd.Categorical.from_codes(
                _codes_of(arr, _FIXED_CATEGORIES[col]), categories=_FIXED_CATEGORIES[col])
        else:
            if not pa.types.is_dictionary(column.type):
                column = column.dictionary_encode()
            values = pa.table({col: column}).to_pandas()[col].array
        out[col] = pd.Series(values, index=plain.index, name=col)
    return pd.DataFrame(out, index=plain.index)


def declared_types(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with every column the stage declares in its declared type (the engine
    hands back its own: microsecond ``Etc/UTC`` timestamps, for one)."""
    for i, f in enumerate(table.schema):
        j = schema.get_field_index(f.name)
        if j >= 0 and schema.field(j).type != f.type:
            table = table.set_column(i, f.name, table.column(i).cast(schema.field(j).type))
    return table


def _codes_of(arr: pa.Array, categories: list[str]) -> np.ndarray:
    import pyarrow.compute as pc

    idx = pc.index_in(arr, value_set=pa.array(categories, pa.string()))
    return np.asarray(idx.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)


