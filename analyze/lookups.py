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

from analyze.reconstruct import base_names, kubernetes_suffixes

_NS = 1_000_000_000
#: The process of a lookup: the node and tgid, or the client address on the wire.
PROC_SQL = ("hash(node, CASE WHEN side = 'wire' THEN NULL ELSE tgid END, "
            "CASE WHEN side = 'wire' THEN client_addr END)")
#: The transactions lookups are made of: a client's (or seen on the wire), with a query.
CLIENT_ROWS = "side <> 'server' AND status <> 'unsolicited'"
#: Transactions per batch of the per-lookup aggregates (lists per group do not spill).
AGG_ROWS = 250_000
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
    found, _ = kubernetes_suffixes(svc, present, namespaces)
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


def lookups_sql(con: Any, rows: str, out: str, *, gap_s: float, timeout_s: float) -> int:
    """COPY the lookups of the client and wire transactions of ``rows`` (a SELECT over
    transactions) to the Parquet file ``out``, in the order and schema of the stage table;
    returns how many.

    Each step is a narrow temp table (the engine spills them), so the windows carry a few
    numbers per transaction, not its strings and lists; the attributes and the answers of a
    lookup are joined back by transaction id at the end."""
    from analyze import stages

    src = f"SELECT * FROM ({rows}) WHERE {CLIENT_ROWS}"
    suffixes = _suffixes(con, src)
    con.register("_lk_base", _base_table(con, src, suffixes))
    gap = int(gap_s * _NS)
    tmo = int(timeout_s * _NS)
    key = "PARTITION BY proc, base"
    order = "ORDER BY t_ns, txn_id"
    big = 2**63 - 1
    first = ("ts", "node", "tgid", "comm", "process", "netns", "cgroup_id", "client_addr",
             "pod_uid", "namespace", "pod", "container", "container_id", "qos", "server_addr")
    special = {
        "end_ts": "make_timestamp_ns(a.end_ns)::TIMESTAMPTZ_NS",
        "base_name": (f"CASE WHEN len({_distinct('a.qn_all')}) > 1 THEN a.first_base "
                      "ELSE a.first_name END"),
        "names": _distinct("a.qn_all"),
        "qtypes": _distinct("a.qt_all"),
        "answer_ips": "coalesce(i.answer_ips, []::VARCHAR[])",
        "txn_ids": "a.txn_ids",
    }
    cols = ", ".join(special.get(c, f'{"f" if c in first else "a"}."{c}"') + f' AS "{c}"'
                     for c in stages.LOOKUPS.names if c != "lookup_id")
    steps = [
        # the transactions, narrow: names as they are, times as numbers
        f"""CREATE TEMP TABLE _lk0 AS
        SELECT t.txn_id, {PROC_SQL} AS proc, b.base AS base, t.qname, t.qtype,
               epoch_ns(t.ts) AS t_ns, epoch_ns(t.response_ts) AS resp_ns,
               t.status = 'answered' AS answered,
               CASE WHEN t.status = 'answered' THEN epoch_ns(t.response_ts)
                    ELSE epoch_ns(t.last_query_ts) + {tmo} END AS end_ns,
               coalesce(t.ancount, 0) > 0 AND t.status = 'answered' AS data,
               t.status = 'answered' AND t.rcode_name IN ('NOERROR', 'NXDOMAIN')
                   AND NOT coalesce(t.tc, false) AS final,
               t.retransmissions, t.rcode_name, t.status,
               CASE WHEN coalesce(t.ancount, 0) > 0 AND t.status = 'answered'
                    AND len(t.answer_ips) > 0 THEN t.answer_ips END AS answer_ips
        FROM ({src}) t LEFT JOIN _lk_base b ON t.qname = b.qname""",
        # re-asked: the same name and type was finally answered before this query was sent
        f"""CREATE TEMP TABLE _lk1 AS
        SELECT txn_id, coalesce(lag(CASE WHEN final THEN resp_ns END)
                    OVER (PARTITION BY proc, qname, qtype {order}) < t_ns, false) AS reask
        FROM _lk0""",
        f"""CREATE TEMP TABLE _lk2 AS
        WITH w AS (
            SELECT txn_id, proc, base, t_ns, end_ns, data, resp_ns, qname, reask,
                   row_number() OVER ({key} {order}) AS rk,
                   lag(reask) OVER ({key} {order}) AS p_ra,
                   lag(qname) OVER ({key} {order}) AS p_nm,
                   lag(qtype) OVER ({key} {order}) AS p_qt,
                   coalesce(lag(CASE WHEN answered THEN resp_ns END) OVER ({key} {order}),
                            {big}) AS p_open, qtype
            FROM _lk0 JOIN _lk1 USING (txn_id))
        SELECT txn_id, proc, base, t_ns, end_ns, data, resp_ns, rk,
               rk = 1 OR (reask AND NOT (coalesce(p_ra, false)
                   AND qname IS NOT DISTINCT FROM p_nm AND qtype IS DISTINCT FROM p_qt
                   AND p_open > t_ns)) AS new1,
               rk > 1 AND qname IS DISTINCT FROM p_nm AS name_change
        FROM w""",
        f"""CREATE TEMP TABLE _lk3 AS
        WITH w AS (
            SELECT *,
                   sum(new1::INTEGER) OVER ({key} {order} ROWS UNBOUNDED PRECEDING) AS seg1,
                   sum((rk = 1 OR name_change)::INTEGER)
                       OVER ({key} {order} ROWS UNBOUNDED PRECEDING) AS name_run
            FROM _lk2),
        v AS (
            SELECT *,
                   max(end_ns) OVER ({key}, seg1 {order} ROWS UNBOUNDED PRECEDING) AS run_end,
                   min(CASE WHEN data THEN resp_ns END)
                       OVER ({key}, name_run {order} ROWS UNBOUNDED PRECEDING) AS run_data
            FROM w)
        SELECT txn_id, proc, base, t_ns, rk,
               new1 OR coalesce(t_ns - lag(run_end) OVER ({key} {order}) > {gap}, false)
                    OR (name_change AND coalesce(lag(run_data) OVER ({key} {order}) < t_ns,
                                                 false)) AS new
        FROM v""",
        # the lookup of each transaction: (its first transaction, the position in it)
        f"""CREATE TEMP TABLE _lk4 AS
        WITH w AS (
            SELECT txn_id, proc, base, t_ns, rk, new,
                   max(CASE WHEN new THEN rk END)
                       OVER ({key} {order} ROWS UNBOUNDED PRECEDING) AS start_rk
            FROM _lk3)
        SELECT txn_id, first_value(txn_id) OVER (PARTITION BY proc, base, start_rk {order})
                   AS lookup, rk + 1 - start_rk AS r
        FROM w""",
        """SELECT s.lookup,
               max(t.end_ns) AS end_ns,
               first(t.qname) FILTER (WHERE s.r = 1) AS first_name,
               first(t.base) FILTER (WHERE s.r = 1) AS first_base,
               first(t.qname ORDER BY s.r) FILTER (WHERE t.data) AS final_name,
               list(t.qname ORDER BY s.r) AS qn_all,
               list(t.qtype ORDER BY s.r) AS qt_all,
               sum(t.retransmissions + 1)::BIGINT AS n_queries,
               count(*) FILTER (WHERE t.rcode_name = 'NXDOMAIN')::BIGINT AS n_nxdomain,
               count(*) FILTER (WHERE t.status = 'timeout')::BIGINT AS n_timeouts,
               sum(t.retransmissions)::BIGINT AS n_retransmissions,
               CASE WHEN bool_or(t.data)
                        THEN first(t.rcode_name ORDER BY s.r) FILTER (WHERE t.data)
                    WHEN first(t.status ORDER BY s.r DESC) = 'timeout' THEN 'TIMEOUT'
                    ELSE first(t.rcode_name ORDER BY s.r DESC) END AS rcode_name,
               list(t.txn_id ORDER BY s.r) AS txn_ids
        FROM _lk4 s JOIN _lk0 t USING (txn_id) WHERE {batch} GROUP BY s.lookup""",
        # the addresses of the final name (its data answers), in order, without repeats
        f"""WITH d AS (
            SELECT s.lookup, s.r, t.answer_ips
            FROM _lk4 s JOIN _lk0 t USING (txn_id) JOIN _lk5 a USING (lookup)
            WHERE {{batch}} AND t.answer_ips IS NOT NULL
              AND t.qname IS NOT DISTINCT FROM a.final_name),
        l AS (SELECT lookup, flatten(list(answer_ips ORDER BY r)) AS ips FROM d GROUP BY lookup)
        SELECT lookup, {_distinct('ips')} AS answer_ips FROM l""",
    ]
    number = """CREATE TEMP TABLE _lk7 AS
    SELECT a.lookup, (row_number() OVER (ORDER BY f.t_ns, a.lookup) - 1)::BIGINT AS lookup_id
    FROM (SELECT lookup FROM _lk5) a JOIN _lk0 f ON f.txn_id = a.lookup"""
    query = f"""
    SELECT n.lookup_id, {cols}
    FROM _lk5 a JOIN _lk7 n USING (lookup) JOIN ({src}) f ON f.txn_id = a.lookup
    LEFT JOIN _lk6 i USING (lookup)
    ORDER BY n.lookup_id"""
    from analyze.relate import quote

    try:
        for step in steps[:5]:
            con.execute(step).fetchall()
        # the aggregates hold lists per lookup (they do not spill): in batches of lookups
        ((n,),) = con.execute("SELECT count(*) FROM _lk4").fetchall()
        batches = max(1, -(-int(n) // AGG_ROWS))
        for b in range(batches):
            batch = f"hash(s.lookup) % {batches} = {b}"
            for table, step in (("_lk5", steps[5]), ("_lk6", steps[6])):
                verb = f"CREATE TEMP TABLE {table} AS" if b == 0 else f"INSERT INTO {table}"
                con.execute(f"{verb} {step.replace('{batch}', batch)}").fetchall()
        con.execute(number).fetchall()
        ((written,),) = con.execute(
            f"COPY ({query}) TO {quote(out)} (FORMAT parquet, ROW_GROUP_SIZE 131072)").fetchall()
        return int(written)
    finally:
        for t in ("_lk0", "_lk1", "_lk2", "_lk3", "_lk4", "_lk5", "_lk6", "_lk7"):
            con.execute(f"DROP TABLE IF EXISTS {t}").fetchall()
        con.unregister("_lk_base")


__all__ = ["PROC_SQL", "lookups_sql"]
