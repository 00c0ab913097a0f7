"""cache_miss: a client re-asks the same name far more often than the answer's TTL allows.

Per client and (name, type), over answered NOERROR transactions with a TTL: the median
interval between the client's queries against the smallest TTL it was given. A client that
re-asks well inside the TTL has no cache (every getaddrinfo() goes to the network); one that
re-asks about once per TTL caches correctly and raises nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from analyze.findings._common import Finding, txn_evidence
from analyze.findings._sql import Rows, client_key_sql, client_rows


@dataclass(frozen=True)
class Thresholds:
    min_queries: int = 5            #: queries of one name before intervals are judged
    min_ttl_s: int = 2              #: TTLs below this are not worth caching
    interval_ratio: float = 0.5     #: median interval below ratio x TTL = not cached
    low_saved_per_min: float = 6.0  #: queries/min a cache would save: low
    medium_saved_per_min: float = 60.0


#: Who a finding is about: the pod when attribution knows it, else the program (every process
#: of one command on a host: a cron job's short-lived curls are one workload), else the
#: client address. The intervals are still judged per process (each has its own cache).
_WORKLOAD = ("coalesce(CAST(node AS VARCHAR), '') || '|' || CASE "
             "WHEN pod IS NOT NULL THEN 'pod:' || coalesce(CAST(namespace AS VARCHAR), '') "
             "|| '/' || CAST(pod AS VARCHAR) "
             "WHEN tgid IS NOT NULL THEN 'comm:' || coalesce(CAST(comm AS VARCHAR), '') "
             "ELSE 'addr:' || coalesce(CAST(client_addr AS VARCHAR), '') END")


def detect(capture: Any, th: Thresholds | None = None, **_: Any) -> list[Finding]:
    th = th or Thresholds()
    rows = client_rows(capture).where(
        "rcode_name = 'NOERROR' AND min_ttl IS NOT NULL AND qname IS NOT NULL "
        "AND qtype IS NOT NULL")
    key = client_key_sql(by="process")
    # per process, name and type: the intervals between its queries, in the engine
    stats = _stats(rows, key, th)
    if stats.empty:
        return []
    stats = stats[(stats["ttl"] >= th.min_ttl_s)
                  & (stats["median"] < th.interval_ratio * stats["ttl"])].copy()
    if stats.empty:
        return []
    stats["span"] = (stats["last"] - stats["first"]).dt.total_seconds()
    stats["needed"] = (stats["span"] // stats["ttl"]).astype("int64") + 1
    stats["saved"] = (stats["queries"] - stats["needed"]).clip(lower=0)
    stats["per_min"] = stats["saved"] / stats["span"].clip(lower=1.0) * 60.0
    # one finding per workload, over the names its processes re-ask
    judged: list[tuple[pd.DataFrame, pd.DataFrame, float, str]] = []
    for _workload, st in stats.groupby("_workload", sort=False):
        per_min = float(st["per_min"].sum())
        if per_min >= th.medium_saved_per_min:
            severity = "medium"
        elif per_min >= th.low_saved_per_min:
            severity = "low"
        else:
            continue  # a few extra queries: not worth a finding
        judged.append((st, _by_name(st), per_min, severity))
    if not judged:
        return []
    # who each workload is (over its judged rows) and its evidence: two queries for all
    mine = pd.concat([st.assign(_g=i) for i, (st, *_) in enumerate(judged)])
    idents = rows.grouped(
        f"{key} || chr(0) || qname || chr(0) || qtype",
        [f"{c}\0{q}\0{t}" for c, q, t in zip(mine["_client"], mine["qname"], mine["qtype"])],
        mine["_g"].tolist()).identities()
    top3 = [(i, str(st["_workload"].iloc[0]), str(q))
            for i, (st, by_name, *_) in enumerate(judged) for q in by_name.index[:3]]
    evidence = rows.grouped(f"{_WORKLOAD} || chr(0) || qname",
                            [f"{w}\0{q}" for _i, w, q in top3],
                            [i for i, _w, _q in top3]).spreads("ts, qname, qtype, txn_id")
    return [_finding(st, by_name, idents[i], evidence.get(i, pd.DataFrame()), per_min,
                     severity)
            for i, (st, by_name, per_min, severity) in enumerate(judged)]


def _by_name(st: pd.DataFrame) -> pd.DataFrame:
    """One workload's names over its processes, worst first."""
    return st.groupby("qname", sort=False).agg(
        queries=("queries", "sum"), ttl=("ttl", "min"), median=("median", "min"),
        span=("span", "max"), saved=("saved", "sum"), per_min=("per_min", "sum"),
        processes=("_client", "nunique"),
        qtypes=("qtype", lambda q: "+".join(sorted({str(x) for x in q}))),
    ).sort_values(["per_min", "queries"], ascending=False, kind="stable")


def _stats(rows: Rows, key: str, th: Thresholds) -> pd.DataFrame:
    """Per (process, name, type) asked at least ``min_queries`` times: its workload, count,
    first and last time, the lowest TTL, the median and least interval between queries (s)."""
    gaps = Rows(rows.capture,
                f"SELECT {key} AS _client, {_WORKLOAD} AS _workload, qname, qtype, ts, "
                "txn_id, min_ttl, registered_domain, (epoch_ns(ts) - lag(epoch_ns(ts)) OVER "
                f"(PARTITION BY {key}, qname, qtype ORDER BY ts, txn_id)) / 1e9 AS _gap "
                f"FROM ({rows.sql})",
                rows.params)
    return gaps.frame(
        "_client, any_value(_workload) AS _workload, qname, qtype, count(*) AS queries, "
        "min(ts) AS first, max(ts) AS last, "
        "min(min_ttl) AS ttl, median(_gap) AS median, min(_gap) AS min_gap, "
        "any_value(registered_domain) FILTER (WHERE registered_domain IS NOT NULL) AS rd",
        f"GROUP BY _client, qname, qtype HAVING count(*) >= {int(th.min_queries)} "
        "ORDER BY _workload, _client, qname, qtype")


#: Names a finding lists in its ``per_name`` table (the metrics count them all).
PER_NAME = 20


def _finding(st: pd.DataFrame, by_name: pd.DataFrame, ident: dict[str, Any],
             ev_rows: pd.DataFrame, per_min: float, severity: str) -> Finding:
    """One finding per workload: every name its processes re-asked inside the TTL, worst
    first, in a table."""
    top = by_name.index[0]
    t = by_name.iloc[0]
    who = ident["pod"] or ident["comm"] or ident["client"] or "a client"
    n_names = len(by_name)
    processes = int(st["_client"].nunique())
    metrics = {
        "names": n_names,
        "processes": processes,
        "queries": int(by_name["queries"].sum()),
        "saved_queries": int(by_name["saved"].sum()),
        "saved_queries_per_min": round(per_min, 1),
        "ttl_s": int(t["ttl"]),
        "median_interval_s": round(float(t["median"]), 3),
        "span_s": round(float(t["span"]), 3),
        "per_name": {
            str(n): {"types": str(r["qtypes"]), "queries": int(r["queries"]),
                     "ttl_s": int(r["ttl"]), "median_interval_s": round(float(r["median"]), 3),
                     "saved_queries_per_min": round(float(r["per_min"]), 1)}
            for n, r in by_name.head(PER_NAME).iterrows()
        },
    }
    names = (f"{n_names} names it could have cached (the worst: {top}, "
             if n_names > 1 else f"{top} (")
    return Finding(
        kind="cache_miss",
        severity=severity,
        explanation=(
            f"{who} re-asked {names}{t['qtypes']}, {int(t['queries'])} times in "
            f"{float(t['span']):.1f} s, every {float(t['median']):.3g} s at the median, "
            f"although the answer may be cached for {int(t['ttl'])} s)"
            + (f", from {processes} processes" if processes > 1 else "")
            + ". Nothing caches its lookups (every getaddrinfo() goes to the resolver); a "
            "cache (nscd, a node-local DNS cache, or caching in the application) would save "
            f"about {per_min:,.0f} queries per minute."
            + (f" The first {PER_NAME} names are in the table." if n_names > PER_NAME else "")
        ),
        domain=str(top),
        registered_domain=_rd(st[st["qname"] == top]),
        metrics=metrics,
        evidence=txn_evidence(ev_rows),
        **ident,
    )


def _rd(st: pd.DataFrame) -> str | None:
    rd = st["rd"].dropna()
    return str(rd.iloc[0]) if len(rd) else None
