"""What-if: the queries a node-local cache or a lower ``ndots`` would have saved, from a capture.

``node_cache(capture)`` replays the clients' queries (transactions of side ``client`` or
``wire``) through a simulated cache per node that honours TTLs: an answer with records is kept
for its smallest TTL, an NXDOMAIN or no-data answer for its SOA's negative TTL (the smaller of
the SOA record's TTL and its MINIMUM, RFC 2308), from the moment the response arrived; a query
for the same name and type on the same node while that holds is a hit, one the cache would
have answered without asking anyone. SERVFAIL, timeouts and answers without a TTL are not
kept. A timed-out query that falls in a kept answer's lifetime counts as a hit too (and among
``timeouts_answered``: the cache would have answered what the network lost). A query sent
while an earlier one was in flight is a miss (no coalescing): the figures are a lower bound.

``lower_ndots(capture)`` reads the lookups stage (the search-list walks): a lookup of a name
with ``d`` dots that walked the search list before trying the name as given would, with
``ndots`` at most ``d``, try the name first. When the name as given is what answered, the
queries for the suffixed names before it are saved; when a suffixed name answered, the first
try of the bare name costs one query per type (``extra_queries``); a lookup where nothing
answered asks as many either way.
"""

from __future__ import annotations

import heapq
from typing import Any

#: The ``ndots`` values ``lower_ndots`` evaluates (Kubernetes' default is 5).
NDOTS = (1, 2, 3, 4)
#: Names listed by saved queries.
TOP_NAMES = 10

_CLIENT = "side IN ('client', 'wire')"


def node_cache(capture: Any, *, top: int = TOP_NAMES) -> dict[str, Any]:
    """The queries a TTL-honouring cache on each node would have answered (module doc)."""
    tx, tparams = capture.table_sql("transactions")
    msgs, mparams = capture.table_sql("messages", with_txn=False)
    key = "hash(coalesce(node, ''), qname, qtype)"
    sql = f"""
        WITH t AS (
            SELECT {key} AS k, ts, response_ts, status, rcode_name, min_ttl, response_msg_id
            FROM ({tx}) WHERE {_CLIENT} AND status IN ('answered', 'timeout')
              AND qname IS NOT NULL AND qtype IS NOT NULL),
        neg AS (
            SELECT msg_id, list_min(list_transform(
                       list_filter(authority, lambda r: r.type = 'SOA'),
                       lambda r: least(r.ttl, coalesce(
                           try_cast(string_split(r.data, ' ')[-1] AS BIGINT), r.ttl))))
                       AS neg_ttl
            FROM ({msgs})
            WHERE msg_id IN (SELECT response_msg_id FROM t
                             WHERE min_ttl IS NULL AND rcode_name IN ('NXDOMAIN', 'NOERROR')))
        SELECT t.k, epoch_ns(t.ts) AS ts_ns, epoch_ns(t.response_ts) AS resp_ns,
               t.status = 'timeout' AS timed_out,
               CASE WHEN t.status <> 'answered' THEN NULL
                    WHEN t.rcode_name = 'NOERROR' AND t.min_ttl IS NOT NULL THEN t.min_ttl
                    WHEN t.rcode_name IN ('NXDOMAIN', 'NOERROR') THEN neg.neg_ttl
               END AS ttl
        FROM t LEFT JOIN neg ON neg.msg_id = t.response_msg_id
        ORDER BY t.k, ts_ns"""
    queries = hits = timeouts_answered = 0
    best: list[tuple[int, int]] = []  # a heap of (hits, key): the names with the most hits
    current: int | None = None
    key_hits = expiry = inserted = 0

    def close(k: int | None, n: int) -> None:
        if k is not None and n:
            (heapq.heappush if len(best) < top else heapq.heappushpop)(best, (n, k))

    for batch in capture.query_batches(sql, [*tparams, *mparams]):
        cols = batch.to_pydict()  # plain ints and bools: the loop below stays cheap
        queries += batch.num_rows
        for k, ts, resp, timed_out, ttl in zip(cols["k"], cols["ts_ns"], cols["resp_ns"],
                                               cols["timed_out"], cols["ttl"]):
            if k != current:
                close(current, key_hits)
                current, key_hits, expiry, inserted = k, 0, 0, 0
            if inserted <= ts < expiry:
                hits += 1
                key_hits += 1
                timeouts_answered += bool(timed_out)
            elif ttl is not None and ttl > 0 and resp is not None:
                inserted, expiry = resp, resp + int(ttl) * 1_000_000_000
    close(current, key_hits)
    names: dict[int, tuple[str, str]] = {}
    if best:
        for k, qname, qtype in capture.query_rows(
                f"SELECT DISTINCT {key}, qname, qtype FROM ({tx}) WHERE {_CLIENT} "
                f"AND {key} IN (SELECT unnest(?::UBIGINT[]))", [*tparams, [k for _, k in best]]):
            names[int(k)] = (str(qname), str(qtype))
    ranked = sorted(((n, *names.get(k, ("?", "?"))) for n, k in best),
                    key=lambda x: (-x[0], x[1], x[2]))
    return {
        "queries": queries,
        "saved": hits,
        "saved_share": round(hits / queries, 4) if queries else 0.0,
        "timeouts_answered": timeouts_answered,
        "top_names": [{"qname": q, "qtype": t, "saved": n} for n, q, t in ranked],
    }


def lower_ndots(capture: Any, *, values: tuple[int, ...] = NDOTS) -> list[dict[str, Any]]:
    """For each ``ndots`` in ``values``: the queries saved and added (module doc)."""
    lk, lparams = capture.table_sql("lookups")
    tx, tparams = capture.table_sql("transactions")
    rows = capture.query_rows(f"""
        WITH l AS (
            SELECT lookup_id, base_name, txn_ids,
                   length(base_name) - length(replace(base_name, '.', '')) AS dots,
                   len(list_distinct(qtypes)) AS n_types,
                   CASE WHEN final_name = base_name THEN 'as_given'
                        WHEN final_name IS NULL THEN 'none' ELSE 'suffixed' END AS answered_by
            FROM ({lk})
            WHERE len(names) > 1 AND first_name <> base_name AND base_name IS NOT NULL),
        walk AS (
            SELECT x.lookup_id, count(*) AS walk
            FROM (SELECT lookup_id, base_name, unnest(txn_ids) AS txn_id FROM l) x
            JOIN (SELECT txn_id, qname FROM ({tx})) t USING (txn_id)
            WHERE t.qname <> x.base_name GROUP BY x.lookup_id)
        SELECT dots, answered_by, count(*) AS lookups, sum(coalesce(walk.walk, 0)) AS walk,
               sum(n_types) AS types
        FROM l LEFT JOIN walk USING (lookup_id) GROUP BY ALL""", [*lparams, *tparams])
    out = []
    for n in values:
        saved = extra = shortened = lengthened = 0
        for dots, answered_by, lookups, walk, types in rows:
            if dots is None or dots < n:
                continue
            if answered_by == "as_given":
                saved += int(walk or 0)
                shortened += int(lookups)
            elif answered_by == "suffixed":  # the bare name is tried first, once per type
                extra += int(types or 0)
                lengthened += int(lookups)
        out.append({"ndots": n, "saved_queries": saved, "extra_queries": extra,
                    "net_saved": saved - extra, "lookups_shortened": shortened,
                    "lookups_lengthened": lengthened})
    return out


def whatif(capture: Any) -> dict[str, Any]:
    """Both what-ifs, as plain values (the report's ``whatif`` section)."""
    return {"node_cache": node_cache(capture), "ndots": lower_ndots(capture)}


__all__ = ["NDOTS", "lower_ndots", "node_cache", "whatif"]
