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
    tx = with_client_key(tx, by="process")
    keys = ["_client", "qname", "qtype"]
    tx = tx.sort_values([*keys, "ts"], kind="stable")
    sizes = tx.groupby(keys, sort=False)["ts"].transform("size")
    tx = tx[sizes >= th.min_queries].copy()
    if tx.empty:
        return []
    tx["_gap"] = tx.groupby(keys, sort=False)["ts"].diff().dt.total_seconds()
    tx["_ttl"] = tx["min_ttl"].astype("int64")
    stats = tx.groupby(keys, sort=False).agg(
        queries=("ts", "size"), first=("ts", "min"), last=("ts", "max"),
        ttl=("_ttl", "min"), median=("_gap", "median"), min_gap=("_gap", "min"),
    ).reset_index()
    stats = stats[(stats["ttl"] >= th.min_ttl_s)
                  & (stats["median"] < th.interval_ratio * stats["ttl"])]
    if stats.empty:
        return []
    stats["span"] = (stats["last"] - stats["first"]).dt.total_seconds()
    stats["needed"] = (stats["span"] // stats["ttl"]).astype("int64") + 1
    stats["saved"] = (stats["queries"] - stats["needed"]).clip(lower=0)
    stats["per_min"] = stats["saved"] / stats["span"].clip(lower=1.0) * 60.0
    rows_of = dict(tuple(tx.groupby("_client", sort=False)))
    out: list[Finding] = []
    for client, st in stats.groupby("_client", sort=False):
        per_min = float(st["per_min"].sum())
        if per_min >= th.medium_saved_per_min:
            severity = "medium"
        elif per_min >= th.low_saved_per_min:
            severity = "low"
        else:
            continue  # a few extra queries: not worth a finding
        out.append(_finding(st, rows_of[client], per_min, severity))
    return out


def _finding(st: pd.DataFrame, rows: pd.DataFrame, per_min: float, severity: str) -> Finding:
    """One finding per process: every name it re-asked inside the TTL, worst first."""
    by_name = st.groupby("qname", sort=False).agg(
        queries=("queries", "sum"), ttl=("ttl", "min"), median=("median", "min"),
        span=("span", "max"), saved=("saved", "sum"), per_min=("per_min", "sum"),
    ).sort_values("per_min", ascending=False, kind="stable")
    top = by_name.index[0]
    t = by_name.iloc[0]
    qtypes = [str(q) for q in st.loc[st["qname"] == top, "qtype"]]
    ident = group_identity(rows)
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
    ev_rows = rows[rows["qname"].isin(by_name.index[:3])].sort_values("ts", kind="stable")
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
        registered_domain=_rd(rows[rows["qname"] == top]),
        metrics=metrics,
        evidence=txn_evidence(spread(ev_rows)),
        **ident,
    )


def _rd(g: pd.DataFrame) -> str | None:
    if "registered_domain" in g.columns and g["registered_domain"].notna().any():
        return str(g["registered_domain"].dropna().iloc[0])
    return None
