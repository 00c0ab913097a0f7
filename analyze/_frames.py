"""Arrow tables -> pandas the one way the analyzer wants them."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa

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
