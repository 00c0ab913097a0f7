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

from analyze.findings._common import (
    Finding,
    client_queries,
    group_identity,
    spread,
    txn_evidence,
    with_client_key,
)


@dataclass(frozen=True)
class Thresholds:
    min_queries: int = 5            #: queries of one name before intervals are judged
    min_ttl_s: int = 2              #: TTLs below this are not worth caching
    interval_ratio: float = 0.5     #: median interval below ratio x TTL = not cached
    low_saved_per_min: float = 6.0  #: queries/min a cache would save: low
    medium_saved_per_min: float = 60.0


def detect(capture: Any, th: Thresholds | None = None, **_: Any) -> list[Finding]:
    th = th or Thresholds()
    tx = client_queries(capture)
    needed = {"qname", "qtype", "min_ttl", "rcode_name", "ts"}
    if tx.empty or not needed <= set(tx.columns):
        return []
    tx = tx[tx["rcode_name"].eq("NOERROR") & tx["min_ttl"].notna() & tx["qname"].notna()]
    if tx.empty:
        return []
    tx = with_client_key(tx, by="process").sort_values("ts")
    out: list[Finding] = []
    for (_client, qname), g in tx.groupby(["_client", "qname"], sort=False):
        f = _judge(str(qname), g, th)
        if f is not None:
            out.append(f)
    return out


def _judge(qname: str, g: pd.DataFrame, th: Thresholds) -> Finding | None:
    """One finding per process and name; each query type (A, AAAA) is measured on its own."""
    per_type = []
    for qtype, q in g.groupby("qtype", sort=False):
        if len(q) < th.min_queries:
            continue
        ttl = int(q["min_ttl"].astype("int64").min())
        if ttl < th.min_ttl_s:
            continue
        intervals = q["ts"].diff().dropna().dt.total_seconds()
        median = float(intervals.median())
        if median >= th.interval_ratio * ttl:
            continue
        span = float((q["ts"].iloc[-1] - q["ts"].iloc[0]).total_seconds())
        needed = int(span // ttl) + 1
        per_type.append((str(qtype), len(q), ttl, median, float(intervals.min()), span,
                         needed, max(len(q) - needed, 0)))
    if not per_type:
        return None
    queries = sum(p[1] for p in per_type)
    ttl = min(p[2] for p in per_type)
    median = min(p[3] for p in per_type)
    span = max(p[5] for p in per_type)
    needed = sum(p[6] for p in per_type)
    saved = sum(p[7] for p in per_type)
    per_min = saved / max(span, 1.0) * 60.0
    if per_min >= th.medium_saved_per_min:
        severity = "medium"
    elif per_min >= th.low_saved_per_min:
        severity = "low"
    else:
        severity = "info"
    rows = g[g["qtype"].isin([p[0] for p in per_type])]
    ident = group_identity(rows)
    who = ident["pod"] or ident["comm"] or ident["client"] or "a client"
    types = "+".join(p[0] for p in per_type)
    metrics = {
        "queries": queries,
        "record_types": {p[0]: p[1] for p in per_type},
        "span_s": round(span, 3),
        "ttl_s": ttl,
        "median_interval_s": round(median, 3),
        "min_interval_s": round(min(p[4] for p in per_type), 3),
        "queries_with_cache": needed,
        "saved_queries": saved,
        "saved_queries_per_min": round(per_min, 1),
    }
    return Finding(
        kind="cache_miss",
        severity=severity,
        explanation=(
            f"{who} asked {qname} ({types}) {queries} times in {span:.1f} s, every "
            f"{median:.3g} s (median), although the answer may be cached for {ttl} s. "
            f"Nothing caches its lookups (every getaddrinfo() goes to the resolver); a "
            f"cache (nscd, a node-local DNS cache, or caching in the application) would "
            f"save about {per_min:.0f} queries per minute."
        ),
        domain=qname,
        registered_domain=_rd(rows),
        metrics=metrics,
        evidence=txn_evidence(spread(rows)),
        **ident,
    )


def _rd(g: pd.DataFrame) -> str | None:
    if "registered_domain" in g.columns and g["registered_domain"].notna().any():
        return str(g["registered_domain"].dropna().iloc[0])
    return None
