"""The detectors' reads in the engine: client transactions as a query, never a whole table.

``client_rows(capture)`` is a ``Rows``: the capture's client transactions (a process's own
queries, or a pcap's) as SQL. A detector aggregates over it (``frame``), narrows it to one
group (``where``) and reads back only what a finding shows: who (``identity``) and a few
sample rows (``spread``). ``client_key_sql`` is the one definition of a client: the pod when
attribution knows it, else the process, else the client address.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd

from analyze.findings._common import MAX_EVIDENCE

#: Client transactions: the rows the detectors judge.
CLIENT_SIDES = "side IN ('client', 'wire')"


def client_key_sql(by: str = "pod", addr: str = "client_addr") -> str:
    """One string per client: ``node|pod:NS/POD`` (``by="pod"`` and the pod is known), else
    ``node|pid:TGID|COMM``, else ``node|addr:ADDRESS``."""
    pod = ("WHEN pod IS NOT NULL THEN 'pod:' || coalesce(CAST(namespace AS VARCHAR), '') "
           "|| '/' || CAST(pod AS VARCHAR) ") if by == "pod" else ""
    return (
        "coalesce(CAST(node AS VARCHAR), '') || '|' || CASE " + pod
        + "WHEN tgid IS NOT NULL THEN 'pid:' || CAST(CAST(tgid AS BIGINT) AS VARCHAR) || '|' "
        "|| coalesce(CAST(comm AS VARCHAR), '') "
        f"ELSE 'addr:' || coalesce(CAST({addr} AS VARCHAR), '') END")


def _one(column: str) -> str:
    """The column's value when every row that has one agrees, else NULL."""
    return f"CASE WHEN count(DISTINCT {column}) = 1 THEN any_value({column}) END"


def positions(count: int, limit: int = MAX_EVIDENCE) -> list[int]:
    """The row positions ``_common.spread`` keeps of ``count`` rows."""
    if count <= limit:
        return list(range(count))
    step = (count - 1) / (limit - 1)
    return sorted({round(i * step) for i in range(limit)})


#: The column that names one row of a stage table.
_ID = {"transactions": "txn_id", "lookups": "lookup_id"}


class Rows:
    """A query over a capture's stage table (with its parameters)."""

    def __init__(self, capture: Any, sql: str, params: Sequence[Any],
                 table: str = "transactions") -> None:
        self.capture = capture
        self.sql = sql
        self.params = list(params)
        self.table = table  #: the stage table the rows are of (their types when read back)

    def where(self, condition: str, *params: Any) -> Rows:
        return Rows(self.capture, f"SELECT * FROM ({self.sql}) WHERE {condition}",
                    [*self.params, *params], self.table)

    @contextmanager
    def materialized(self) -> Iterator[Rows]:
        """These rows computed once into an engine table (dropped on leaving the block), for
        a detector that reads them many times: a window over the whole part (a row
        position) is then not recomputed by every query of every group."""
        import uuid

        name = f"_rows_{uuid.uuid4().hex[:12]}"
        self.capture.query_rows(f"CREATE TABLE {name} AS {self.sql}", self.params)
        try:
            yield Rows(self.capture, f"SELECT * FROM {name}", [], self.table)
        finally:
            self.capture.query_rows(f"DROP TABLE IF EXISTS {name}")

    def arrow(self, select: str, tail: str = "") -> Any:
        """``SELECT {select} FROM (rows) {tail}`` (tail: GROUP BY, ORDER BY ...)."""
        return self.capture.query(f"SELECT {select} FROM ({self.sql}) _r {tail}",
                                  self.params)

    def frame(self, select: str, tail: str = "") -> pd.DataFrame:
        """The query's result as pandas: columns named like the stage table's in their
        declared types, every other time in the stage's (nanoseconds, UTC)."""
        import pyarrow as pa

        from analyze import stages
        from analyze._frames import declared_types, to_pandas

        table = declared_types(self.arrow(select, tail), stages.STAGES[self.table])
        ts = stages.TRANSACTIONS.field("ts").type
        for i, f in enumerate(table.schema):
            if pa.types.is_timestamp(f.type) and f.type != ts:
                table = table.set_column(i, f.name, table.column(i).cast(ts))
        return to_pandas(table)

    def count(self) -> int:
        return int(self.arrow("count(*) AS n").column(0)[0].as_py())

    def identity(self) -> dict[str, Any]:
        """``_common.group_identity`` of the rows: each field every row agrees on, else None."""
        t = self.arrow(", ".join([
            *(f"{_one(c)} AS {c}" for c in ("namespace", "pod", "container", "comm")),
            f"{_one('tgid')} AS pid", f"{_one('client_addr')} AS client"])).to_pylist()[0]
        ident: dict[str, Any] = {c: (str(t[c]) if t[c] is not None else None)
                                 for c in ("namespace", "pod", "container", "comm", "client")}
        ident["pid"] = int(t["pid"]) if t["pid"] is not None else None
        return ident

    def spread(self, order: str = "txn_id", *, first_of: str | None = None,
               count: int | None = None, limit: int = MAX_EVIDENCE) -> pd.DataFrame:
        """``_common.spread`` of the rows in ``order`` (``first_of``: only the first row, in
        that order, of each value of this column), as transaction rows."""
        from analyze._frames import stage_frame

        rows = self
        if first_of is not None:
            rows = Rows(self.capture, f"SELECT * FROM ({self.sql}) QUALIFY row_number() OVER "
                        f"(PARTITION BY {first_of} ORDER BY {order}) = 1", self.params,
                        self.table)
        n = rows.count() if count is None else count
        if n <= 0:
            return pd.DataFrame()
        keep = ", ".join(str(p) for p in positions(n, limit))
        ident = _ID.get(self.table)
        if ident is None:
            table = self.capture.query(
                f"SELECT * FROM ({rows.sql}) QUALIFY row_number() OVER (ORDER BY {order}) - 1 "
                f"IN ({keep}) ORDER BY {order}", rows.params)
        else:
            # the positions from the order's columns and the row's id only; then the few
            # whole rows (sorting every whole row of a busy client took seconds)
            table = self.capture.query(
                f"SELECT * FROM ({rows.sql}) WHERE {ident} IN (SELECT {ident} FROM ("
                f"SELECT {ident}, row_number() OVER (ORDER BY {order}) - 1 AS _rn FROM "
                f"({rows.sql})) WHERE _rn IN ({keep})) ORDER BY {order}",
                [*rows.params, *rows.params])
        return stage_frame(table, self.table)

    def grouped(self, key: str, keys: Sequence[Any], groups: Sequence[int],
                key_type: str = "VARCHAR") -> Rows:
        """The rows whose ``key`` (an SQL expression) is one of ``keys``, with a column
        ``_g``: the group given for that key (many findings' rows, read in one query)."""
        return Rows(self.capture,
                    f"SELECT _r.*, _m._g FROM ({self.sql}) _r JOIN (SELECT "
                    f"unnest(?::{key_type}[]) AS _k, unnest(?::BIGINT[]) AS _g) _m "
                    f"ON {key} = _m._k",
                    [*self.params, list(keys), [int(g) for g in groups]], self.table)

    def identities(self) -> dict[int, dict[str, Any]]:
        """``identity`` of each group of ``grouped`` rows."""
        out: dict[int, dict[str, Any]] = {}
        for t in self.arrow(", ".join([
                "_g", *(f"{_one(c)} AS {c}" for c in ("namespace", "pod", "container", "comm")),
                f"{_one('tgid')} AS pid", f"{_one('client_addr')} AS client"]),
                "GROUP BY _g").to_pylist():
            ident: dict[str, Any] = {c: (str(t[c]) if t[c] is not None else None)
                                     for c in ("namespace", "pod", "container", "comm",
                                               "client")}
            ident["pid"] = int(t["pid"]) if t["pid"] is not None else None
            out[int(t["_g"])] = ident
        return out

    def spreads(self, order: str, limit: int = MAX_EVIDENCE) -> dict[int, pd.DataFrame]:
        """``spread`` of each group of ``grouped`` rows, in ``order`` (one query)."""
        from analyze._frames import stage_frame

        pick = " OR ".join(f"_rn = round({i} * (_cnt - 1) / {limit - 1}.0)"
                           for i in range(limit))
        table = self.capture.query(
            f"SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY _g ORDER BY {order}) "
            f"- 1 AS _rn, count(*) OVER (PARTITION BY _g) AS _cnt FROM ({self.sql})) "
            f"WHERE _cnt <= {limit} OR {pick} ORDER BY _g, _rn", self.params)
        groups = table.column("_g").to_pylist()
        frame = stage_frame(table.drop_columns(["_rn", "_cnt"]), self.table)
        return {int(g): part.drop(columns="_g").reset_index(drop=True)
                for g, part in frame.groupby(pd.Series(groups, index=frame.index),
                                             sort=False)}

    def by_ids(self, ids: Sequence[int]) -> pd.DataFrame:
        """The full rows of these transactions, in the order given."""
        from analyze._frames import stage_frame

        if not len(ids):
            return pd.DataFrame()
        table = self.capture.query(
            f"SELECT r.* FROM ({self.sql}) r JOIN (SELECT unnest(?::BIGINT[]) AS txn_id, "
            "generate_subscripts(?::BIGINT[], 1) AS _pos) k USING (txn_id) ORDER BY k._pos",
            [*self.params, [int(i) for i in ids], [int(i) for i in ids]])
        return stage_frame(table.drop_columns(["_pos"]) if "_pos" in table.column_names
                           else table, "transactions")


def lookup_rows(capture: Any) -> Rows:
    """The capture's lookups."""
    sql, params = capture.table_sql("lookups")
    return Rows(capture, sql, params, "lookups")


def client_rows(capture: Any) -> Rows:
    """The capture's client transactions."""
    sql, params = capture.table_sql("transactions")
    return Rows(capture, f"SELECT * FROM ({sql}) WHERE {CLIENT_SIDES}", params)
