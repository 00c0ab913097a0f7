"""ndots_amplification: lookups that walk the search list before the name the app meant.

With Kubernetes' default ``ndots:5`` a name with fewer than five dots is tried with every
search domain first (``api.example.com.default.svc.cluster.local``, ...), each an A and an
AAAA query that ends in NXDOMAIN. Per pod (or process), from the lookups table: queries and
NXDOMAINs per logical lookup, and the names that caused them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from analyze.findings._common import (
    Finding,
    clean,
    col,
    group_identity,
    spread,
    table,
    with_client_key,
)


@dataclass(frozen=True)
class Thresholds:
    min_lookups: int = 3            #: expanded lookups before a pod is judged
    low_queries_per_lookup: float = 3.0
    medium_queries_per_lookup: float = 5.0
    medium_wasted_per_min: float = 30.0


def detect(capture: Any, th: Thresholds | None = None, **_: Any) -> list[Finding]:
    th = th or Thresholds()
    lk = table(capture, "lookups")
    if lk.empty or "names" not in lk.columns or "n_queries" not in lk.columns:
        return []
    n_names = lk["names"].map(lambda v: 0 if isinstance(v, str) or not hasattr(v, "__len__")
                              else len(v))
    final = col(lk, "final_name")
    base = col(lk, "base_name")
    lk = lk[(n_names >= 2) & (final.isna() | base.isna() | (final == base)).fillna(True)]
    if lk.empty:
        return []
    lk = with_client_key(lk).sort_values("ts", kind="stable")
    if "pod" in lk.columns:
        pod_key = lk["namespace"].astype(str) + "/" + lk["pod"].astype(str)
        lk["_group"] = pod_key.where(lk["pod"].notna(), lk["_client"])
    else:
        lk["_group"] = lk["_client"]
    out: list[Finding] = []
    for _key, g in lk.groupby("_group", sort=False):
        if len(g) < th.min_lookups:
            continue
        queries = int(g["n_queries"].sum())
        nx = int(g["n_nxdomain"].sum()) if "n_nxdomain" in g.columns else 0
        names_per = [len(n) for n in g["names"]]
        qtypes_per = [max(len(q), 1) if hasattr(q, "__len__") else 1
                      for q in g.get("qtypes", pd.Series([["A"]] * len(g)))]
        wasted = int(sum((n - 1) * q for n, q in zip(names_per, qtypes_per)))
        span = float((g["ts"].max() - g["ts"].min()).total_seconds())
        per_lookup = queries / len(g)
        wasted_per_min = wasted / max(span, 60.0) * 60.0
        if per_lookup >= th.medium_queries_per_lookup or wasted_per_min >= th.medium_wasted_per_min:
            severity = "medium"
        elif per_lookup >= th.low_queries_per_lookup:
            severity = "low"
        else:
            severity = "info"
        bases = g["base_name"].dropna().astype(str) if "base_name" in g.columns else pd.Series()
        top = bases.value_counts().head(5)
        example = str(top.index[0]) if len(top) else "the name"
        ident = group_identity(g)
        who = (f"{ident['namespace']}/{ident['pod']}" if ident["pod"]
               else ident["comm"] or ident["client"] or "a client")
        metrics = {
            "expanded_lookups": len(g),
            "queries": queries,
            "nxdomain": nx,
            "queries_per_lookup": round(per_lookup, 2),
            "wasted_queries": wasted,
            "wasted_queries_per_min": round(wasted_per_min, 1),
            "mean_names_tried": round(sum(names_per) / len(names_per), 2),
            "top_names": {str(k): int(v) for k, v in top.items()},
        }
        evidence = []
        for _, r in spread(g).iterrows():
            names = [str(n) for n in r["names"]]
            evidence.append({
                "ts": clean(r.get("ts")),
                "query": " -> ".join(names),
                "answer": f"{clean(r.get('rcode_name'))} for {clean(r.get('final_name'))}"
                          f" after {clean(r.get('n_nxdomain'))} NXDOMAIN, "
                          f"{clean(r.get('n_queries'))} queries",
            })
        out.append(Finding(
            kind="ndots_amplification",
            severity=severity,
            explanation=(
                f"{who}: {len(g)} lookups went through the search list before the name the "
                f"application meant: {queries} queries ({per_lookup:.1f} per lookup), {nx} of "
                f"them NXDOMAIN, about {wasted} wasted. Fix: write external names fully "
                f"qualified with a trailing dot ('{example}.'), or lower ndots in the pod spec "
                "(spec.dnsConfig.options: [{name: ndots, value: \"2\"}], or \"1\"), so names "
                "with dots are tried as-is first."
            ),
            domain=example if len(top) else None,
            registered_domain=None,
            metrics=metrics,
            evidence=evidence,
            **ident,
        ))
    return out
