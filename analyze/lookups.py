"""Lookups of any size in the engine: the rules of ``reconstruct.build_lookups`` as window
queries over a transactions relation, out of core (DuckDB sorts and spills; nothing of a
process is held in Python).

The relate stage uses it when a capture has more client transactions than one in-memory
build holds (``relate.LOOKUP_PART_ROWS``): one busy process (a load generator, a node-local
cache) is as large as the capture. ``tests/test_lookups_sql.py`` holds it to the in-memory
build on real captures.

Every rule is a window over rows in (process, base name) order, then (ts, txn_id):
re-asked names, the run of a lookup so far (idle gaps), the run of one name ("another name
after a data answer"); no step depends on its own output, so each is one window.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from analyze.reconstruct import _infer_suffixes, base_names

_NS = 1_000_000_000
#: The process of a lookup: the node and tgid, or the client address on the wire.
PROC_SQL = ("hash(node, CASE WHEN side = 'wire' THEN NULL ELSE tgid END, "
            "CASE WHEN side = 'wire' THEN client_addr END)")
#: Bounds of the suffix inference, as in ``reconstruct._infer_suffixes``.
_MAX_SVC = 100_000
_MAX_SUFFIXES = 256


def _suffixes(con: Any, rows: str) -> set[str]:
    """The search suffixes of ``reconstruct._infer_suffixes``: Kubernetes ones from the
    ``.svc.`` names and the pods' namespaces, host ones from a name followed by itself with a
    suffix in one process (consecutive in time)."""
    svc = [r[0] for r in con.execute(
        f"SELECT qname FROM (SELECT DISTINCT qname FROM ({rows}) WHERE contains(qname, '.svc.')) "
        f"LIMIT {_MAX_SVC}").fetchall()]
    namespaces = {r[0] for r in con.execute(
        f"SELECT DISTINCT namespace FROM ({rows}) WHERE namespace IS NOT NULL").fetchall()}
    # the names the .svc. rule asks about: x.svc.<dom>, x.<dom>, x
    wanted: set[str] = set()
    for name in svc:
        head, dom = name.rsplit(".svc.", 1)
        if "." in head and dom:
            x = head.rsplit(".", 1)[0]
            wanted.update((f"{x}.svc.{dom}", f"{x}.{dom}", x))
    present = set(svc)
    if wanted:
        con.register("_lk_wanted", pa.table({"qname": pa.array(sorted(wanted), pa.string())}))
        try:
            present |= {r[0] for r in con.execute(
                f"SELECT DISTINCT w.qname FROM _lk_wanted w JOIN ({rows}) t "
                "ON t.qname = w.qname").fetchall()}
        finally:
            con.unregister("_lk_wanted")
    import pandas as pd

    names = pd.Series(sorted(present), dtype=object)
    found, _ = _infer_suffixes(names, _no_pairs(len(names)), namespaces)
    pairs = con.execute(f"""
        WITH t AS (
            SELECT qname, lag(qname) OVER (PARTITION BY {PROC_SQL} ORDER BY ts, txn_id) AS prev
            FROM ({rows}))
        SELECT DISTINCT CASE
            WHEN length(qname) > length(prev) AND starts_with(qname, prev || '.')
                THEN qname[length(prev) + 2:]
            ELSE prev[length(qname) + 2:] END AS s
        FROM t
        WHERE prev IS NOT NULL AND qname IS NOT NULL AND qname <> prev
          AND ((length(qname) > length(prev) AND starts_with(qname, prev || '.'))
            OR (length(prev) > length(qname) AND starts_with(prev, qname || '.')))
        LIMIT {_MAX_SUFFIXES}""").fetchall()
    found |= {r[0] for r in pairs if r[0]}
    return found


def _no_pairs(n: int) -> Any:
    """A process code per name that makes no two neighbours one process (the pairs are
    found in the engine)."""
    import numpy as np

    return np.arange(n, dtype=np.int64)


def _base_table(con: Any, rows: str, suffixes: set[str]) -> pa.Table:
    """qname -> base name (``reconstruct.base_names``) over the distinct names."""
    import pandas as pd

    from analyze.relate import arrow

    uniq = arrow(con, f"SELECT DISTINCT qname FROM ({rows}) WHERE qname IS NOT NULL")
    names = uniq.column(0).to_pandas()
    base = base_names(pd.Series(names, dtype=object), suffixes)
    return pa.table({"qname": pa.array(names, pa.string()),
                     "base": pa.array(base.to_numpy(dtype=object, na_value=None), pa.string())})


def _distinct(name: str) -> str:
    """The list ``name`` without repeats, in first-seen order."""
    return f"list_filter({name}, lambda x, i: list_position({name}, x) = i)"


def lookups_sql(con: Any, rows: str, out: str, *, gap_s: float, timeout_s: float) -> None:
    """COPY the lookups of the client and wire transactions of ``rows`` (a SELECT over
    transactions) to the Parquet file ``out``, in the order and schema of the stage table."""
    from analyze import stages

    src = f"SELECT * FROM ({rows}) WHERE side <> 'server' AND status <> 'unsolicited'"
    suffixes = _suffixes(con, src)
    con.register("_lk_base", _base_table(con, src, suffixes))
    gap = int(gap_s * _NS)
    tmo = int(timeout_s * _NS)
    key = "PARTITION BY proc, base"
    order = "ORDER BY t_ns, txn_id"
    big = 2**63 - 1
    first = ("node", "tgid", "comm", "process", "netns", "cgroup_id", "client_addr",
             "pod_uid", "namespace", "pod", "container", "container_id", "qos", "server_addr")
    firsts = ",\n".join(f'first("{c}") FILTER (WHERE r = 1) AS "{c}"' for c in first)
    special = {
        "base_name": "CASE WHEN len(names) > 1 THEN first_base ELSE first_name END",
        "answer_ips": f"coalesce({_distinct('ips_all')}, []::VARCHAR[])",
    }
    cols = ", ".join(f'{special.get(c, chr(34) + c + chr(34))} AS "{c}"'
                     for c in stages.LOOKUPS.names if c != "lookup_id")
    query = f"""
    WITH r0 AS (
        SELECT t.*, {PROC_SQL} AS proc, b.base AS base,
               epoch_ns(t.ts) AS t_ns,
               epoch_ns(t.response_ts) AS resp_ns,
               t.status = 'answered' AS answered,
               CASE WHEN t.status = 'answered' THEN epoch_ns(t.response_ts)
                    ELSE epoch_ns(t.last_query_ts) + {tmo} END AS end_ns,
               coalesce(t.ancount, 0) > 0 AND t.status = 'answered' AS data,
               t.status = 'answered' AND t.rcode_name IN ('NOERROR', 'NXDOMAIN')
                   AND NOT coalesce(t.tc, false) AS final
        FROM ({src}) t LEFT JOIN _lk_base b ON t.qname = b.qname),
    r1 AS (
        SELECT *, coalesce(lag(CASE WHEN final THEN resp_ns END)
                    OVER (PARTITION BY proc, qname, qtype {order}) < t_ns, false) AS reask
        FROM r0),
    r2 AS (
        SELECT *, row_number() OVER ({key} {order}) AS rk,
               lag(reask) OVER ({key} {order}) AS p_ra,
               lag(qname) OVER ({key} {order}) AS p_nm,
               lag(qtype) OVER ({key} {order}) AS p_qt,
               coalesce(lag(CASE WHEN answered THEN resp_ns END) OVER ({key} {order}),
                        {big}) AS p_open
        FROM r1),
    r3 AS (
        SELECT *,
               rk = 1 OR (reask AND NOT (coalesce(p_ra, false)
                   AND qname IS NOT DISTINCT FROM p_nm AND qtype IS DISTINCT FROM p_qt
                   AND p_open > t_ns)) AS new1,
               rk > 1 AND qname IS DISTINCT FROM p_nm AS name_change
        FROM r2),
    r4 AS (
        SELECT *,
               sum(new1::INTEGER) OVER ({key} {order} ROWS UNBOUNDED PRECEDING) AS seg1,
               sum((rk = 1 OR name_change)::INTEGER)
                   OVER ({key} {order} ROWS UNBOUNDED PRECEDING) AS name_run
        FROM r3),
    r5 AS (
        SELECT *,
               max(end_ns) OVER ({key}, seg1 {order} ROWS UNBOUNDED PRECEDING) AS run_end,
               min(CASE WHEN data THEN resp_ns END)
                   OVER ({key}, name_run {order} ROWS UNBOUNDED PRECEDING) AS run_data
        FROM r4),
    r6 AS (
        SELECT *,
               new1 OR coalesce(t_ns - lag(run_end) OVER ({key} {order}) > {gap}, false)
                    OR (name_change AND coalesce(lag(run_data) OVER ({key} {order}) < t_ns,
                                                 false)) AS new
        FROM r5),
    r7 AS (
        SELECT *, sum(new::INTEGER) OVER ({key} {order} ROWS UNBOUNDED PRECEDING) AS lk,
               rk + 1 - max(CASE WHEN new THEN rk END)
                   OVER ({key} {order} ROWS UNBOUNDED PRECEDING) AS r
        FROM r6),
    agg AS (
        SELECT first(ts) FILTER (WHERE r = 1) AS ts,
               make_timestamp_ns(max(end_ns))::TIMESTAMPTZ_NS AS end_ts,
               {firsts},
               first(qname) FILTER (WHERE r = 1) AS first_name,
               first(qname ORDER BY r) FILTER (WHERE data) AS final_name,
               first(base) FILTER (WHERE r = 1) AS first_base,
               list(qname ORDER BY r) AS qn_all,
               list(qtype ORDER BY r) AS qt_all,
               sum(retransmissions + 1)::BIGINT AS n_queries,
               count(*) FILTER (WHERE rcode_name = 'NXDOMAIN')::BIGINT AS n_nxdomain,
               count(*) FILTER (WHERE status = 'timeout')::BIGINT AS n_timeouts,
               sum(retransmissions)::BIGINT AS n_retransmissions,
               CASE WHEN bool_or(data) THEN first(rcode_name ORDER BY r) FILTER (WHERE data)
                    WHEN first(status ORDER BY r DESC) = 'timeout' THEN 'TIMEOUT'
                    ELSE first(rcode_name ORDER BY r DESC) END AS rcode_name,
               list({{'n': qname, 'ips': answer_ips}} ORDER BY r)
                   FILTER (WHERE data AND answer_ips IS NOT NULL) AS data_ips,
               list(txn_id ORDER BY r) AS txn_ids
        FROM r7 GROUP BY proc, base, lk),
    fin AS (
        SELECT *, {_distinct('qn_all')} AS names, {_distinct('qt_all')} AS qtypes,
               flatten(list_transform(list_filter(coalesce(data_ips, []),
                   lambda s: s.n IS NOT DISTINCT FROM final_name), lambda s: s.ips)) AS ips_all
        FROM agg)
    SELECT (row_number() OVER (ORDER BY ts, txn_ids[1]) - 1)::BIGINT AS lookup_id,
           {cols}
    FROM fin ORDER BY lookup_id"""
    try:
        from analyze.relate import quote

        con.execute(f"COPY ({query}) TO {quote(out)} (FORMAT parquet, ROW_GROUP_SIZE 131072)")
    finally:
        con.unregister("_lk_base")


__all__ = ["PROC_SQL", "lookups_sql"]
