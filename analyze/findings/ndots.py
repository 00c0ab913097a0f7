"""ndots_amplification: lookups that walk the search list before the name the app meant;
unknown_service: a single-label name that never resolves.

With Kubernetes' default ``ndots:5`` a name with fewer than five dots is tried with every
search domain first (``api.example.com.default.svc.cluster.local``, ...), each an A and an
AAAA query that ends in NXDOMAIN. Per pod (or process), from the lookups table: queries and
NXDOMAINs per logical lookup, and the names that caused them.

A single-label name (``payments-api``) is meant to go through the search list: it names a
service of the pod's namespace. When every lookup of it fails, the search list is not what
is wrong and a trailing dot would not help: the name is a typo or the service is missing
(not deployed, another namespace). Those lookups are an ``unknown_service`` finding, with the
services of similar names that did resolve, not an ndots one.
"""

from __future__ import annotations

import difflib
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
    unknown_service_medium: int = 3  #: failed lookups of a single-label name: medium


#: A lookup of a single-label name that never resolved (``unknown_service``, not ndots).
_SINGLE_FAILED = "(base_name IS NOT NULL AND NOT contains(base_name, '.') AND final_name IS NULL)"


#: The workload of a lookup: namespace/pod, else the client (process, else address).
_GROUP = ("CASE WHEN pod IS NOT NULL THEN coalesce(CAST(namespace AS VARCHAR), 'nan') "
          f"|| '/' || CAST(pod AS VARCHAR) ELSE {client_key_sql()} END")


def detect(capture: Any, th: Thresholds | None = None, cluster_domain: str = "cluster.local",
           scope: Any | None = None, **_: Any) -> list[Finding]:
    th = th or Thresholds()
    # expanded lookups: two or more names tried, ending (if at all) at the name meant; a
    # single-label name that never resolved is unknown_service's
    lk = lookup_rows(capture).where(
        "len(names) >= 2 AND (final_name IS NULL OR base_name IS NULL "
        f"OR final_name = base_name) AND NOT {_SINGLE_FAILED}")
    group = _GROUP
    lk = Rows(capture, f"SELECT *, {group} AS _group, row_number() OVER "
              f"(ORDER BY ts, lookup_id) AS _pos FROM ({lk.sql})", lk.params, "lookups")
    with lk.materialized() as rows:
        out = _amplification(rows, th)
    whole = scope.capture if scope is not None else capture
    out.extend(_unknown_services(capture, th, cluster_domain, whole))
    return out


def _amplification(lk: Rows, th: Thresholds) -> list[Finding]:
    """The ndots findings of the expanded lookups ``lk`` (with ``_group`` and ``_pos``)."""
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
                "answer": _outcome(r),
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


def _outcome(r: Any) -> str:
    """How a lookup ended: ``NOERROR for api.example.com after 6 NXDOMAIN, 8 queries``, or
    ``NXDOMAIN for every name tried, 8 queries`` (never a name it did not reach)."""
    rcode = clean(r.get("rcode_name")) or "no answer"
    final = clean(r.get("final_name"))
    queries = clean(r.get("n_queries"))
    if final is None:
        return f"{rcode} for every name tried, {queries} queries"
    return f"{rcode} for {final} after {clean(r.get('n_nxdomain'))} NXDOMAIN, {queries} queries"


def _unknown_services(capture: Any, th: Thresholds, cluster_domain: str,
                      whole: Any) -> list[Finding]:
    """Per workload and single-label name: lookups of it that all failed (the similar
    services that resolved are looked up in the ``whole`` capture, not only this part)."""
    # only single-label names are judged here (positions keep their order among them)
    lk = lookup_rows(capture).where("base_name IS NOT NULL AND NOT contains(base_name, '.')")
    lk = Rows(capture, f"SELECT *, {_GROUP} AS _group, row_number() OVER "
              f"(ORDER BY ts, lookup_id) AS _pos FROM ({lk.sql})", lk.params, "lookups")
    with lk.materialized() as rows:
        return _unknown_services_of(rows, th, cluster_domain, whole)


def _unknown_services_of(lk: Rows, th: Thresholds, cluster_domain: str,
                         whole: Any) -> list[Finding]:
    groups = lk.arrow(
        "_group, CAST(base_name AS VARCHAR) AS name, count(*) AS n, "
        f"count(*) FILTER (WHERE {_SINGLE_FAILED}) AS failed, sum(n_queries) AS queries, "
        "sum(n_nxdomain) AS nx, sum(n_timeouts) AS timeouts, max(len(names)) AS tried",
        "WHERE base_name IS NOT NULL AND NOT contains(base_name, '.') "
        "GROUP BY 1, 2 HAVING count(*) FILTER (WHERE final_name IS NOT NULL) = 0 "
        "ORDER BY min(_pos)").to_pylist()
    if not groups:
        return []
    services = _services(whole, cluster_domain)
    out: list[Finding] = []
    for grp in groups:
        name, n = str(grp["name"]), int(grp["n"])
        g = lk.where("_group = ? AND base_name = ?", grp["_group"], name)
        ident = g.identity()
        who = (f"{ident['namespace']}/{ident['pod']}" if ident["pod"]
               else ident["comm"] or ident["client"] or "a client")
        where = (f"namespace {ident['namespace']}" if ident["namespace"]
                 else "the client's search domains")
        similar = difflib.get_close_matches(name.lower(), sorted(services), n=3, cutoff=0.75)
        timeouts = int(grp["timeouts"] or 0)
        metrics = {
            "lookups": n,
            "queries": int(grp["queries"] or 0),
            "nxdomain": int(grp["nx"] or 0),
            "timeouts": timeouts,
            "names_tried": int(grp["tried"] or 0),
            "similar_services": [f"{svc}.{services[svc]}" for svc in similar],
        }
        hint = (" Services of similar names that did resolve: "
                + ", ".join(f"{svc} (namespace {services[svc]})" for svc in similar) + "."
                if similar else "")
        evidence = [{"ts": clean(r.get("ts")), "query": " -> ".join(str(x) for x in r["names"]),
                     "answer": _outcome(r)}
                    for _, r in g.spread("_pos", count=n).iterrows()]
        out.append(Finding(
            kind="unknown_service",
            severity="medium" if n >= th.unknown_service_medium else "low",
            explanation=(
                f"{who} looked up '{name}' {n} times and it never resolved: every name of "
                f"the search list ({int(grp['tried'] or 0)} names, {int(grp['queries'] or 0)} "
                f"queries) ended in NXDOMAIN" + (f" or a timeout ({timeouts})" if timeouts
                                                   else "")
                + f". A single-label name is a Kubernetes service of {where}: '{name}' is a "
                "typo in the application's configuration, or the service is missing (not "
                "deployed yet, deleted, or in another namespace: then write "
                f"'{name}.NAMESPACE'). A trailing dot or a lower ndots would not make it "
                "resolve." + hint
            ),
            domain=name,
            registered_domain=None,
            metrics=metrics,
            evidence=evidence,
            **ident,
        ))
    return out


#: Service names read back for the similar-name hint (at most).
_MAX_SERVICES = 5000


def _services(capture: Any, cluster_domain: str) -> dict[str, str]:
    """Services that resolved in the capture: ``{name: namespace}`` from the answered
    ``NAME.NAMESPACE.svc.CLUSTER`` queries (one aggregate query)."""
    from analyze.findings._sql import client_rows

    suffix = f".svc.{cluster_domain.strip('.').lower()}"
    rows = client_rows(capture).where(
        "rcode_name = 'NOERROR' AND qname IS NOT NULL AND ends_with(lower(qname), ?)", suffix)
    table = rows.arrow(
        "split_part(lower(qname), '.', 1) AS svc, split_part(lower(qname), '.', 2) AS ns",
        f"WHERE len(string_split(qname, '.')) = {len(suffix.split('.')) + 1} "
        f"GROUP BY 1, 2 ORDER BY 1, 2 LIMIT {_MAX_SERVICES}").to_pylist()
    return {str(r["svc"]): str(r["ns"]) for r in table if r["svc"]}
