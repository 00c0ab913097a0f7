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

from analyze.findings._common import Finding, clean
from analyze.findings._sql import Rows, client_key_sql, lookup_rows


@dataclass(frozen=True)
class Thresholds:
    min_lookups: int = 3            #: expanded lookups before a pod is judged
    low_queries_per_lookup: float = 3.0
    medium_queries_per_lookup: float = 5.0
    medium_wasted_per_min: float = 30.0


def detect(capture: Any, th: Thresholds | None = None, **_: Any) -> list[Finding]:
    th = th or Thresholds()
    # expanded lookups: two or more names tried, ending (if at all) at the name meant
    lk = lookup_rows(capture).where(
        "len(names) >= 2 AND (final_name IS NULL OR base_name IS NULL "
        "OR final_name = base_name)")
    group = ("CASE WHEN pod IS NOT NULL THEN coalesce(CAST(namespace AS VARCHAR), 'nan') "
             f"|| '/' || CAST(pod AS VARCHAR) ELSE {client_key_sql()} END")
    lk = Rows(capture, f"SELECT *, {group} AS _group, row_number() OVER "
              f"(ORDER BY ts, lookup_id) AS _pos FROM ({lk.sql})", lk.params, "lookups")
    groups = lk.arrow(
        "_group, count(*) AS n, sum(n_queries) AS queries, sum(n_nxdomain) AS nx, "
        "sum(len(names)) AS names, "
        "sum((len(names) - 1) * coalesce(greatest(len(qtypes), 1), 1)) AS wasted, "
        "epoch_ns(max(ts)) - epoch_ns(min(ts)) AS span_ns",
        f"GROUP BY 1 HAVING count(*) >= {int(th.min_lookups)} ORDER BY min(_pos)").to_pylist()
    out: list[Finding] = []
    for grp in groups:
        g = lk.where("_group = ?", grp["_group"])
        n = int(grp["n"])
        queries = int(grp["queries"] or 0)
        nx = int(grp["nx"] or 0)
        wasted = int(grp["wasted"] or 0)
        span = int(grp["span_ns"] or 0) / 1e9
        per_lookup = queries / n
        wasted_per_min = wasted / max(span, 60.0) * 60.0
        if per_lookup >= th.medium_queries_per_lookup or wasted_per_min >= th.medium_wasted_per_min:
            severity = "medium"
        elif per_lookup >= th.low_queries_per_lookup:
            severity = "low"
        else:
            severity = "info"
        top_t = g.where("base_name IS NOT NULL").frame(
            "CAST(base_name AS VARCHAR) AS name, count(*) AS c",
            "GROUP BY 1 ORDER BY c DESC, min(_pos) LIMIT 5")
        top = pd.Series(top_t["c"].to_numpy(), index=top_t["name"].astype(str), dtype="int64")
        example = str(top.index[0]) if len(top) else "the name"
        ident = g.identity()
        who = (f"{ident['namespace']}/{ident['pod']}" if ident["pod"]
               else ident["comm"] or ident["client"] or "a client")
        metrics = {
            "expanded_lookups": n,
            "queries": queries,
            "nxdomain": nx,
            "queries_per_lookup": round(per_lookup, 2),
            "wasted_queries": wasted,
            "wasted_queries_per_min": round(wasted_per_min, 1),
            "mean_names_tried": round(int(grp["names"]) / n, 2),
            "top_names": {str(k): int(v) for k, v in top.items()},
        }
        evidence = []
        for _, r in g.spread("_pos", count=n).iterrows():
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
                f"{who}: {n} lookups went through the search list before the name the "
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
