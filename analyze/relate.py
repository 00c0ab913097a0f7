"""Relate: ingested messages -> transactions, the message -> transaction map, and lookups.

The stage reads the ingest entries of one or more captures through an embedded DuckDB (a
Parquet scan with the columns it needs, spilling to the work directory) and writes the
``transactions``, ``message_txn`` and ``lookups`` stage tables (``analyze.stages``) into its
own cache entry, keyed by the ingest keys and the matching parameters.

Matching is ``analyze.reconstruct.match_transactions``, unchanged, applied to one partition
of the messages at a time: a query and its response have the same question name, and the
name is part of the conversation key, so partitions by a hash of the name never split a
transaction. Each partition's transactions are numbered afterwards in DuckDB by time and
first message, exactly as one pass over everything would number them; so memory is bounded by
a partition, not by the capture.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from analyze import stages
from analyze._frames import to_pandas
from analyze.cache import WorkDir, digest, is_disk_full
from analyze.ingest import Ingested
from analyze.reconstruct import (
    _FROM_RESPONSE,
    DEFAULT_GAP_S,
    DEFAULT_SKEW_S,
    DEFAULT_TIMEOUT_S,
    build_lookups,
    match_transactions,
)

#: Eligible messages per matching partition (the pandas matcher holds one at a time).
PART_ROWS = 600_000
#: Client transactions the lookups build holds in memory; more are grouped in the engine.
LOOKUP_PART_ROWS = 250_000
#: Transactions joined to their messages at a time (``_join_transactions``).
TXN_JOIN_ROWS = 1_000_000
#: DuckDB's memory limit unless the caller gives one.
MEMORY_LIMIT = "1GB"

#: What the matcher reads of each message: the conversation key, the time, and the payload
#: of wire messages (identical copies are duplicates). The columns a transaction takes from
#: its query and response are joined afterwards in the engine, by message id.
_MATCH_INPUT = ("msg_id", "role", "dns_id", "src_addr", "dst_addr", "src_port", "dst_port",
                "sock_id", "fd", "tgid", "node", "protocol", "qname", "qtype", "ts")
#: The columns the matcher itself computes (the rest come from the query or the response).
_CORE = ("side", "status", "ts", "response_ts", "last_query_ts", "latency_s",
         "retransmissions", "query_msg_id", "response_msg_id", "client_addr", "client_port",
         "server_addr", "server_port")


@dataclass(frozen=True)
class Related:
    """Where the relate stage's tables of a set of captures are."""

    key: str
    entry: Path
    transactions: int
    lookups: int

    def file(self, table: str) -> str:
        return str(self.entry / f"{table}.parquet")


def quote(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def connect(work: WorkDir, *, memory_limit: str | None = None,
            threads: int | None = None) -> Any:
    """A DuckDB connection of its own (no process-wide state) that spills into ``work``."""
    import duckdb

    spill = work.temp()
    con = duckdb.connect(config={
        "memory_limit": memory_limit or MEMORY_LIMIT,
        "threads": threads or os.cpu_count() or 1,
        "temp_directory": str(spill),
        "preserve_insertion_order": False,
        "enable_external_access": True,
    })
    try:  # a library prints nothing of its own
        con.execute("SET enable_progress_bar = false")
    except duckdb.Error:
        pass  # in Jupyter without ipywidgets DuckDB refuses to touch the setting at all
    return con


def run(con: Any, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    """Execute a statement and fetch its (small) result, so the connection is free again."""
    rows: list[tuple[Any, ...]] = con.execute(sql, params or []).fetchall()
    return rows


def arrow(con: Any, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
    """The result of a query as an Arrow table."""
    rel = con.sql(sql, params=list(params)) if params else con.sql(sql)
    fetch = getattr(rel, "to_arrow_table", None) or rel.arrow  # DuckDB 2 / 1
    table = fetch()
    return table.read_all() if hasattr(table, "read_all") else table


def files_sql(paths: Sequence[str]) -> str:
    return "[" + ", ".join(quote(p) for p in paths) + "]"


def messages_sql(ingested: Sequence[Ingested], work: WorkDir,
                 labels: Sequence[str] | None = None) -> str:
    """A query over every capture's ingested messages: ``msg_id`` numbered across captures,
    with ``node`` and ``capture`` columns."""
    parts = []
    offset = 0
    for i, ing in enumerate(ingested):
        label = labels[i] if labels is not None else ing.evidence
        files = ing.files("messages") or [str(work.empty("messages", stages.MESSAGES))]
        parts.append(
            f"SELECT * REPLACE (msg_id + {offset} AS msg_id), {quote(ing.node)} AS node, "
            f"{quote(label)} AS capture FROM read_parquet({files_sql(files)})")
        offset += ing.messages
    if not parts:
        files = [str(work.empty("messages", stages.MESSAGES))]
        return (f"SELECT *, NULL::VARCHAR AS node, NULL::VARCHAR AS capture "
                f"FROM read_parquet({files_sql(files)})")
    return " UNION ALL BY NAME ".join(f"({p})" for p in parts)


def relate(ingested: Sequence[Ingested], *, work: WorkDir, labels: Sequence[str] | None = None,
           timeout_s: float = DEFAULT_TIMEOUT_S, skew_s: float = DEFAULT_SKEW_S,
           lookup_gap_s: float = DEFAULT_GAP_S, dns_ports: Sequence[int] = (53,),
           memory_limit: str | None = None, threads: int | None = None) -> Related:
    """Match the messages of ``ingested`` into transactions and lookups (or reuse the entry)."""
    labels = list(labels) if labels is not None else [i.evidence for i in ingested]
    key = digest({"stage": "relate", "version": stages.RELATE_VERSION,
                  "ingest": [i.key for i in ingested], "labels": labels,
                  "timeout": timeout_s, "skew": skew_s, "gap": lookup_gap_s,
                  "ports": sorted(int(p) for p in dns_ports)})
    info = work.lookup("relate", key)
    if info is None:
        tmp = work.building("relate", key)
        try:
            info = _build(tmp, ingested, labels, work=work, timeout_s=timeout_s, skew_s=skew_s,
                          lookup_gap_s=lookup_gap_s, dns_ports=dns_ports,
                          memory_limit=memory_limit, threads=threads)
        except Exception as exc:  # OSError, or the engine's own I/O error
            import duckdb

            if isinstance(exc, OSError) or (isinstance(exc, duckdb.Error)
                                            and is_disk_full(exc)):
                raise work.error(exc) from None
            raise
        work.publish(tmp, "relate", key, info)
    return Related(key=key, entry=work.entry("relate", key),
                   transactions=int(info["transactions"]), lookups=int(info["lookups"]))


def _build(tmp: Path, ingested: Sequence[Ingested], labels: Sequence[str], *, work: WorkDir,
           timeout_s: float, skew_s: float, lookup_gap_s: float, dns_ports: Sequence[int],
           memory_limit: str | None, threads: int | None) -> dict[str, Any]:
    con = connect(work, memory_limit=memory_limit, threads=threads)
    try:
        run(con, f"CREATE TEMP VIEW messages AS {messages_sql(ingested, work, labels)}")
        cols = ", ".join(f'"{c}"' for c in _MATCH_INPUT) + (
            ", CASE WHEN role IN ('query', 'response') THEN payload END AS payload")
        eligible = "role IS NOT NULL AND dns_id IS NOT NULL"
        ((n,),) = run(con, f"SELECT count(*) FROM messages WHERE {eligible}")
        parts = max(1, math.ceil(n / PART_ROWS))
        txn_files, map_files = [], []
        next_id = 0
        for p in range(parts):
            # name and id are both in the conversation key, so a query and its answer fall
            # in one partition; with the id in the hash a name as busy as the node (the
            # node's hottest service) is spread over every partition instead of filling one
            where = (eligible if parts == 1
                     else f"{eligible} AND hash(qname, dns_id) % {parts} = {p}")
            table = arrow(con, f"SELECT {cols} FROM messages WHERE {where} ORDER BY msg_id")
            if table.num_rows == 0:
                continue
            frame = to_pandas(table)
            del table
            frame["role"] = pd.Categorical(frame["role"], categories=list(stages.ROLES))
            txns, txn_of_msg = match_transactions(frame, timeout_s=timeout_s, skew_s=skew_s,
                                                  dns_ports=dns_ports)
            if txns.empty:
                continue
            tmp_id = txns["txn_id"].to_numpy() + next_id
            has = txn_of_msg >= 0
            pq.write_table(pa.table({
                "msg_id": pa.array(frame["msg_id"].to_numpy()[has], pa.int64()),
                "tmp_id": pa.array(txn_of_msg[has] + next_id, pa.int64())}),
                tmp / f"map-{p:05d}.parquet")
            base = txns["query_msg_id"].fillna(txns["response_msg_id"])
            out = _arrow_transactions(txns)
            out = out.append_column("tmp_id", pa.array(tmp_id, pa.int64()))
            out = out.append_column("base_msg_id", pa.array(base.to_numpy(dtype=np.int64)))
            pq.write_table(out, tmp / f"txn-{p:05d}.parquet", row_group_size=131_072)
            txn_files.append(str(tmp / f"txn-{p:05d}.parquet"))
            map_files.append(str(tmp / f"map-{p:05d}.parquet"))
            next_id += len(txns)
            del frame, txns, txn_of_msg, out
        n_txn = next_id
        def source(c: str) -> str:
            if c in _CORE:
                return f't."{c}"'
            if c in _FROM_RESPONSE:
                return f'p."{c}"'
            return f'q."{c}"'

        tx_cols = ", ".join(source(c) for c in stages.TRANSACTIONS.names if c != "txn_id")
        if txn_files:
            run(con, "CREATE TEMP TABLE ren AS SELECT tmp_id, (row_number() OVER "
                        "(ORDER BY ts, base_msg_id) - 1)::BIGINT AS txn_id "
                        f"FROM read_parquet({files_sql(txn_files)})")
            _join_transactions(con, tmp / "transactions.parquet", txn_files, tx_cols, n_txn)
            run(
                con, f"COPY (SELECT m.msg_id, r.txn_id FROM read_parquet({files_sql(map_files)}) m "
                "JOIN ren r USING (tmp_id) ORDER BY m.msg_id) "
                f"TO {quote(str(tmp / 'message_txn.parquet'))} "
                "(FORMAT parquet, ROW_GROUP_SIZE 131072)")
            run(con, "DROP TABLE ren")
            for f in txn_files + map_files:
                os.unlink(f)
        else:
            pq.write_table(stages.TRANSACTIONS.empty_table(), tmp / "transactions.parquet")
            pq.write_table(stages.MESSAGE_TXN.empty_table(), tmp / "message_txn.parquet")
        check_file(tmp / "transactions.parquet", "transactions")
        check_file(tmp / "message_txn.parquet", "message_txn")
        n_lookups = _lookups(con, tmp, gap_s=lookup_gap_s, timeout_s=timeout_s)
    finally:
        con.close()
    return {"transactions": n_txn, "lookups": n_lookups}


def _join_transactions(con: Any, out: Path, txn_files: Sequence[str], tx_cols: str,
                       n_txn: int) -> None:
    """The transactions with their query's and response's columns, in txn_id order, joined
    TXN_JOIN_ROWS transactions at a time, so that the engine's hash tables hold one batch of
    transactions, never the messages: one joined pass over 24M transactions and 48M messages
    ran out of its 1 GB. The join order is pinned (each batch on the build side, the messages
    streamed past it, each batch reading only the messages of its msg_id range: txn_id follows
    time); left to the optimizer, an estimate made it hash the messages. Each batch is written
    by the engine (a COPY streams), then the parts are streamed into one file."""
    txn = f"read_parquet({files_sql(txn_files)})"
    parts: list[Path] = []
    for a in range(0, max(n_txn, 1), TXN_JOIN_ROWS):
        b = a + TXN_JOIN_ROWS
        run(con, "CREATE OR REPLACE TEMP TABLE txn_batch AS SELECT r.txn_id AS final_txn_id, "
                 f"t.* FROM {txn} t JOIN ren r USING (tmp_id) "
                 f"WHERE r.txn_id >= {a} AND r.txn_id < {b}")
        ((lo, hi),) = run(con, "SELECT min(least(base_msg_id, coalesce(response_msg_id, "
                               "base_msg_id))), max(greatest(base_msg_id, coalesce("
                               "response_msg_id, base_msg_id))) FROM txn_batch")
        if lo is None:
            continue
        near = f"(SELECT * FROM messages WHERE msg_id BETWEEN {int(lo)} AND {int(hi)})"
        part = out.with_name(f"_txn-part-{len(parts):05d}.parquet")
        run(con, "SET disabled_optimizers = 'join_order'")
        try:
            # written order is the plan: the right side of each join is hashed
            run(con,
                f"COPY (SELECT t.final_txn_id AS txn_id, {tx_cols} FROM {near} p RIGHT JOIN "
                f"({near} q JOIN txn_batch t ON q.msg_id = t.base_msg_id) "
                "ON p.msg_id = t.response_msg_id ORDER BY t.final_txn_id) "
                f"TO {quote(str(part))} (FORMAT parquet, ROW_GROUP_SIZE 131072)")
        finally:
            run(con, "RESET disabled_optimizers")
        parts.append(part)
    run(con, "DROP TABLE IF EXISTS txn_batch")
    if len(parts) == 1:
        os.replace(parts[0], out)
        return
    writer: pq.ParquetWriter | None = None
    try:
        for part in parts:
            f = pq.ParquetFile(part)
            if writer is None:
                writer = pq.ParquetWriter(out, f.schema_arrow, compression="snappy")
            for batch in f.iter_batches(batch_size=131_072):
                writer.write_batch(batch, row_group_size=131_072)
            del f
            part.unlink()
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # no transaction at all
        pq.write_table(stages.TRANSACTIONS.empty_table(), out)


def check_file(path: Path, stage: str) -> None:
    """The contract at the boundary, for a file the engine wrote: the declared columns, in
    order, of the declared types (ContractError otherwise)."""
    got = pq.read_schema(path)
    want = stages.STAGES[stage]
    if got.names != want.names:
        raise stages.ContractError(f"stage {stage!r}: {path.name} has columns {got.names}, "
                                   f"declared {want.names}")
    for g, w in zip(got, want, strict=True):
        if g.type != w.type:
            raise stages.ContractError(f"stage {stage!r}: column {g.name!r} is {g.type}, "
                                       f"declared {w.type}")


def _arrow_transactions(txns: pd.DataFrame) -> pa.Table:
    """The matcher's own columns of its transactions, in the declared types."""
    arrays = []
    fields = []
    for f in stages.TRANSACTIONS:
        if f.name not in _CORE:
            continue
        s = txns[f.name]
        if isinstance(s.dtype, pd.CategoricalDtype):
            s = s.astype(object)
        arr = pa.array(s, from_pandas=True)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if arr.type != f.type:
            arr = arr.cast(f.type)
        arrays.append(arr)
        fields.append(f)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


_LOOKUP_INPUT = ("ts", "node", "tgid", "comm", "process", "netns", "cgroup_id", "client_addr",
                 "pod_uid", "namespace", "pod", "container", "container_id", "qos", "server_addr",
                 "qname", "qtype", "txn_id", "rcode_name", "status", "answer_ips",
                 "retransmissions", "side", "response_ts", "last_query_ts", "ancount", "tc")


def _lookups(con: Any, tmp: Path, *, gap_s: float, timeout_s: float) -> int:
    """Build the lookups from the transactions file: up to ``LOOKUP_PART_ROWS`` client
    transactions in memory (``reconstruct.build_lookups``), more in the engine
    (``analyze.lookups``: the same rules as window queries, out of core, so one process as
    large as the capture fits)."""
    from analyze._frames import DICTIONARY_COLUMNS, declared_types, stage_frame
    from analyze.lookups import CLIENT_ROWS, lookups_sql

    src = f"SELECT * FROM read_parquet({quote(str(tmp / 'transactions.parquet'))})"
    rows = f"SELECT * FROM ({src}) WHERE {CLIENT_ROWS}"
    ((n,),) = run(con, f"SELECT count(*) FROM ({rows})")
    out = tmp / "lookups.parquet"
    if n > LOOKUP_PART_ROWS:
        return lookups_sql(con, src, str(out), gap_s=gap_s, timeout_s=timeout_s)
    cols = ", ".join(f'"{c}"' for c in _LOOKUP_INPUT)
    table = declared_types(arrow(con, f"SELECT {cols} FROM ({rows}) ORDER BY txn_id"),
                           stages.TRANSACTIONS)
    table = pa.Table.from_arrays(
        [c.dictionary_encode() if name in DICTIONARY_COLUMNS and
         not pa.types.is_dictionary(c.type) else c
         for name, c in zip(table.column_names, table.columns)],
        names=table.column_names)
    lk = build_lookups(stage_frame(table, "transactions"), gap_s=gap_s, timeout_s=timeout_s)
    table = lookups_arrow(lk)
    pq.write_table(table, out, row_group_size=131_072)
    return table.num_rows


def lookups_arrow(lk: pd.DataFrame) -> pa.Table:
    arrays = []
    for f in stages.LOOKUPS:
        if f.name not in lk.columns or lk.empty:
            arrays.append(pa.nulls(len(lk), f.type) if f.name not in lk.columns
                          else pa.array([], f.type))
            continue
        s = lk[f.name]
        if isinstance(s.dtype, pd.CategoricalDtype):
            s = s.astype(object)
        arr = pa.array(s, from_pandas=True)
        if arr.type != f.type:
            arr = arr.cast(f.type)
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=stages.LOOKUPS)


__all__ = ["MEMORY_LIMIT", "PART_ROWS", "Related", "connect", "messages_sql", "quote",
           "relate"]
