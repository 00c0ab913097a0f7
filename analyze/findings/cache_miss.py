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
    groups = stats[["_client", "qname", "qtype"]].copy()
    stats = stats[(stats["ttl"] >= th.min_ttl_s)
                  & (stats["median"] < th.interval_ratio * stats["ttl"])].copy()
    if stats.empty:
        return []
    stats["span"] = (stats["last"] - stats["first"]).dt.total_seconds()
    stats["needed"] = (stats["span"] // stats["ttl"]).astype("int64") + 1
    stats["saved"] = (stats["queries"] - stats["needed"]).clip(lower=0)
    stats["per_min"] = stats["saved"] / stats["span"].clip(lower=1.0) * 60.0
    judged: list[tuple[pd.DataFrame, pd.DataFrame, float, str]] = []
    for client, st in stats.groupby("_client", sort=False):
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
    # who each process is (over its judged names) and its evidence: two queries for all
    clients = [str(st["_client"].iloc[0]) for st, *_ in judged]
    mine = groups[groups["_client"].isin(clients)]
    gid = {c: i for i, c in enumerate(clients)}
    idents = rows.grouped(
        f"{key} || chr(0) || qname || chr(0) || qtype",
        [f"{c}\0{q}\0{t}" for c, q, t in zip(mine["_client"], mine["qname"], mine["qtype"])],
        [gid[c] for c in mine["_client"]]).identities()
    top3 = [(i, c, str(q)) for i, (c, (_st, by_name, *_)) in enumerate(zip(clients, judged))
            for q in by_name.index[:3]]
    evidence = rows.grouped(f"{key} || chr(0) || qname", [f"{c}\0{q}" for _i, c, q in top3],
                            [i for i, _c, _q in top3]).spreads("ts, qname, qtype, txn_id")
    return [_finding(st, by_name, idents[i], evidence.get(i, pd.DataFrame()), per_min,
                     severity)
            for i, (st, by_name, per_min, severity) in enumerate(judged)]


def _by_name(st: pd.DataFrame) -> pd.DataFrame:
    """One process's names, worst first."""
    return st.groupby("qname", sort=False).agg(
        queries=("queries", "sum"), ttl=("ttl", "min"), median=("median", "min"),
        span=("span", "max"), saved=("saved", "sum"), per_min=("per_min", "sum"),
    ).sort_values("per_min", ascending=False, kind="stable")


def _stats(rows: Rows, key: str, th: Thresholds) -> pd.DataFrame:
    """Per (process, name, type) asked at least ``min_queries`` times: count, first and last
    time, the lowest TTL, the median and least interval between queries (s)."""
    gaps = Rows(rows.capture,
                f"SELECT {key} AS _client, qname, qtype, ts, txn_id, min_ttl, "
                "registered_domain, (epoch_ns(ts) - lag(epoch_ns(ts)) OVER (PARTITION BY "
                f"{key}, qname, qtype ORDER BY ts, txn_id)) / 1e9 AS _gap FROM ({rows.sql})",
                rows.params)
    return gaps.frame(
        "_client, qname, qtype, count(*) AS queries, min(ts) AS first, max(ts) AS last, "
        "min(min_ttl) AS ttl, median(_gap) AS median, min(_gap) AS min_gap, "
        "any_value(registered_domain) FILTER (WHERE registered_domain IS NOT NULL) AS rd",
        f"GROUP BY ALL HAVING count(*) >= {int(th.min_queries)} "
        "ORDER BY _client, qname, qtype")


def _finding(st: pd.DataFrame, by_name: pd.DataFrame, ident: dict[str, Any],
             ev_rows: pd.DataFrame, per_min: float, severity: str) -> Finding:
    """One finding per process: every name it re-asked inside the TTL, worst first."""
    top = by_name.index[0]
    t = by_name.iloc[0]
    qtypes = [str(q) for q in st.loc[st["qname"] == top, "qtype"]]
    who = ident["pod"] or ident["comm"] or ident["client"] or "a client"
    more = len(by_name) - 1
    metrics = {
        "names": len(by_name),
        "queries": int(by_name["queries"].sum()),
        "saved_queries": int(by_name["saved"].sum()),
        "saved_queries_per_min": round(per_min, 1),
        "ttl_s": int(t["ttl"]),
        "median_interval_s": round(float(t["median"]), 3),
        "span_s": round(float(t["span"]), 3),
        "per_name": {
            str(n): {"queries": int(r["queries"]), "ttl_s": int(r["ttl"]),
                     "median_interval_s": round(float(r["median"]), 3),
                     "saved_queries_per_min": round(float(r["per_min"]), 1)}
            for n, r in by_name.head(20).iterrows()
        },
    }
    return Finding(
        kind="cache_miss",
        severity=severity,
        explanation=(
            f"{who} asked {top} ({'+'.join(qtypes)}) {int(t['queries'])} times in "
            f"{float(t['span']):.1f} s, every {float(t['median']):.3g} s (median), although "
            f"the answer may be cached for {int(t['ttl'])} s"
            + (f"; {more} other names likewise" if more else "")
            + ". Nothing caches its lookups (every getaddrinfo() goes to the resolver); a "
            "cache (nscd, a node-local DNS cache, or caching in the application) would save "
            f"about {per_min:.0f} queries per minute."
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
