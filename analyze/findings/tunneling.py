"""tunneling: names that carry data (DNS tunnels, exfiltration) per client and registered domain.

Features per (client, ICANN registered domain), over the client's own queries:

* distinct subdomains and the share of queries that ask a new name (tunnels never repeat);
* the longest label of each name: encoders fill labels up to 63 bytes, hostnames rarely pass 30;
* Shannon entropy of the pooled subdomain characters (encoded data: 4-6 bits per character);
* record types: TXT, NULL, MX, CNAME, KEY, ANY or numeric types carry bigger answers;
* bytes of distinct subdomain text per minute (the tunnel's upstream bandwidth).

A pair is a tunnel candidate only when its names carry data (long, random-looking labels in
many distinct names) or when it asks bulk record types for many distinct random-looking names.
Busy ordinary traffic (CDN host names, cloud host names, service discovery, reverse lookups)
has short or templated labels and A/AAAA/SRV/PTR types, so it stays at most `low`.

Per client and public suffix, many distinct long random second-level labels (payload moved into
the registered domain itself) are reported as tunneling with domain ``*.<suffix>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pandas as pd

from analyze.findings._common import (
    Finding,
    client_queries,
    group_identity,
    identity,
    shannon,
    spread,
    txn_evidence,
    with_client_key,
)
from analyze.findings._names import is_internal, public_suffix, registered_domain, subdomain

#: Record types whose answers can carry a tunnel's downstream data.
BULK_TYPES = frozenset({"TXT", "NULL", "MX", "CNAME", "KEY", "ANY", "SRV", "PRIVATE"})
#: SRV is normal inside clusters; it only counts outside internal zones (those are skipped).


@dataclass(frozen=True)
class Thresholds:
    min_distinct: int = 6          #: distinct subdomains before anything is judged
    long_label: int = 30           #: a label this long looks like encoded data
    long_share: float = 0.3        #: share of distinct names with such a label
    long_mean: float = 40.0        #: or: mean subdomain length (many medium labels)
    entropy: float = 3.5           #: pooled bits/char of subdomain text
    bulk_share: float = 0.5        #: share of queries with bulk record types
    unique_share: float = 0.5      #: distinct names / queries
    template_share: float = 0.3    #: distinct shapes (digits set aside) / distinct names
    high_distinct: int = 50        #: this many data-carrying names is high on its own
    high_bytes_per_min: float = 3000.0
    sld_min_distinct: int = 20     #: distinct random second-level labels under one suffix
    sld_min_len: int = 20


_DIGITS = re.compile(r"[0-9]+")


def _max_label(sub: str) -> int:
    return max((len(x) for x in sub.split(".")), default=0) if sub else 0


def _is_bulk(qtype: Any) -> bool:
    q = str(qtype or "")
    return q in BULK_TYPES or q.startswith("TYPE")


def _prepared(capture: Any, cluster_domain: str) -> pd.DataFrame:
    """Client queries outside internal zones with _client, _rd (registered domain), _sub."""
    tx = client_queries(capture)
    if tx.empty or "qname" not in tx.columns:
        return pd.DataFrame()
    tx = tx[tx["qname"].notna()]
    tx = tx[[not is_internal(str(q), cluster_domain) for q in tx["qname"]]]
    if tx.empty:
        return pd.DataFrame()
    tx = with_client_key(tx).sort_values("ts")
    tx["_rd"] = [registered_domain(str(q)) for q in tx["qname"]]
    tx = tx[tx["_rd"].notna()]
    tx["_sub"] = [subdomain(str(q), str(r)) for q, r in zip(tx["qname"], tx["_rd"])]
    return tx


def detect(capture: Any, th: Thresholds | None = None, cluster_domain: str = "cluster.local",
           **_: Any) -> list[Finding]:
    th = th or Thresholds()
    tx = _prepared(capture, cluster_domain)
    if tx.empty:
        return []
    findings: list[Finding] = []
    for (_client, rd), g in tx.groupby(["_client", "_rd"], sort=False):
        f = _judge_pair(g, str(rd), th)
        if f is not None:
            findings.append(f)
    findings.extend(_second_level(tx, th))
    return findings


def pair_table(capture: Any, cluster_domain: str = "cluster.local") -> pd.DataFrame:
    """Features of every (client, registered domain) pair, flagged or not (for plots)."""
    tx = _prepared(capture, cluster_domain)
    rows = []
    if not tx.empty:
        for (_client, rd), g in tx.groupby(["_client", "_rd"], sort=False):
            m = pair_features(g)
            m.pop("_labels_max")
            ident = group_identity(g)
            rows.append({"client": ident["client"], "pid": ident["pid"],
                         "registered_domain": rd, **m})
    cols = ["client", "pid", "registered_domain", "distinct_subdomains",
            "entropy_bits_per_char"]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=cols)


def pair_features(g: pd.DataFrame) -> dict[str, Any]:
    """The tunneling features of one client's queries under one registered domain."""
    subs = g["_sub"].astype(str)
    distinct = subs[subs != ""].drop_duplicates()
    n_q = len(g)
    n_d = len(distinct)
    span = (g["ts"].max() - g["ts"].min()).total_seconds() if n_q > 1 else 0.0
    minutes = max(span, 60.0) / 60.0
    labels_max = [_max_label(s) for s in distinct]
    pooled = "".join(s.replace(".", "") for s in distinct)
    templates = {_DIGITS.sub("0", x) for x in distinct}
    qtypes = g["qtype"].astype(str).value_counts()
    bulk = int(sum(c for t, c in qtypes.items() if _is_bulk(t)))
    return {
        "queries": n_q,
        "distinct_subdomains": n_d,
        "unique_share": round(n_d / n_q, 3) if n_q else 0.0,
        "distinct_templates": len(templates),
        "template_share": round(len(templates) / n_d, 3) if n_d else 0.0,
        "entropy_bits_per_char": round(shannon(pooled), 3),
        "mean_name_length": round(float(g["qname"].astype(str).str.len().mean()), 1),
        "mean_subdomain_length": round(float(distinct.str.len().mean()), 1) if n_d else 0.0,
        "max_label_length": max(labels_max, default=0),
        "_labels_max": labels_max,
        "record_types": {str(t): int(c) for t, c in qtypes.items()},
        "bulk_type_share": round(bulk / n_q, 3) if n_q else 0.0,
        "span_s": round(span, 3),
        "name_bytes_per_min": round(sum(len(s) for s in distinct) / minutes, 1),
    }


def _judge_pair(g: pd.DataFrame, rd: str, th: Thresholds) -> Finding | None:
    m = pair_features(g)
    labels_max = m.pop("_labels_max")
    n_d = m["distinct_subdomains"]
    if n_d < th.min_distinct:
        return None
    long_names = sum(1 for x in labels_max if x >= th.long_label)
    m["long_label_names"] = long_names
    m["long_label_share"] = round(long_names / n_d, 3)
    random_looking = m["entropy_bits_per_char"] >= th.entropy
    fresh = (
        m["unique_share"] >= th.unique_share
        and m["distinct_templates"] >= th.min_distinct
        and (m["template_share"] >= th.template_share
             or m["distinct_templates"] >= th.high_distinct)
    )
    data_names = random_looking and fresh and (
        m["long_label_share"] >= th.long_share or m["mean_subdomain_length"] >= th.long_mean
    )
    bulk = random_looking and fresh and m["bulk_type_share"] >= th.bulk_share and \
        m["mean_subdomain_length"] >= 6
    volume = n_d >= th.high_distinct or m["name_bytes_per_min"] >= th.high_bytes_per_min
    reasons: list[str] = []
    if data_names:
        reasons.append(
            f"{long_names} of {n_d} distinct names have a label of {th.long_label}+ characters "
            f"(longest {m['max_label_length']}), the shape of encoded data"
        )
    if bulk:
        types = ", ".join(f"{t} {c}" for t, c in m["record_types"].items())
        reasons.append(
            f"{m['bulk_type_share']:.0%} of queries ask record types that carry bulk answers "
            f"({types})"
        )
    if random_looking:
        reasons.append(
            f"the subdomain text has {m['entropy_bits_per_char']:.2f} bits of entropy per "
            f"character (random-looking)"
        )
    if fresh:
        reasons.append(
            f"{m['unique_share']:.0%} of queries ask a name never asked before, and the "
            f"names do not follow a template ({m['distinct_templates']} distinct shapes once "
            "digits are set aside)"
        )
    if (data_names and (bulk or volume)) or (bulk and volume):
        severity = "high"
    elif data_names or bulk:
        severity = "medium"
    elif random_looking and fresh and n_d >= th.high_distinct and \
            m["mean_subdomain_length"] >= 20:
        severity = "low"
    else:
        return None
    first = g.iloc[0]
    ident = identity(first)
    who = ident["pod"] or ident["comm"] or ident["client"] or "a client"
    explanation = (
        f"{who} sent {m['queries']} queries for {n_d} distinct subdomains of {rd} "
        f"({m['name_bytes_per_min']:.0f} bytes of name text per minute): "
        + "; ".join(reasons)
        + ". DNS tunnels and exfiltration tools encode data in query names this way; "
        "ordinary clients repeat a few short host names."
    )
    ev_rows = g.drop_duplicates("_sub")
    return Finding(
        kind="tunneling",
        severity=severity,
        explanation=explanation,
        domain=rd,
        registered_domain=rd,
        metrics=m,
        evidence=txn_evidence(spread(ev_rows)),
        **ident,
    )


def _second_level(tx: pd.DataFrame, th: Thresholds) -> list[Finding]:
    """Payload in the registered domain itself: many distinct long random second-level labels."""
    out: list[Finding] = []
    rows = tx.assign(_ps=[public_suffix(str(q)) for q in tx["qname"]])
    rows = rows[rows["_ps"].notna()]
    for (client, ps), g in rows.groupby(["_client", "_ps"], sort=False):
        labels = pd.Series([str(r)[: -len(str(ps)) - 1] for r in g["_rd"]]).drop_duplicates()
        long = labels[labels.str.len() >= th.sld_min_len]
        if len(long) < th.sld_min_distinct:
            continue
        ent = shannon("".join(long))
        if ent < th.entropy:
            continue
        nx = g["rcode_name"].eq("NXDOMAIN").mean() if "rcode_name" in g.columns else 0.0
        severity = "medium" if len(long) >= 2 * th.sld_min_distinct else "low"
        metrics = {
            "queries": len(g),
            "distinct_registered_domains": int(g["_rd"].nunique()),
            "long_random_second_level_labels": len(long),
            "entropy_bits_per_char": round(ent, 3),
            "nxdomain_share": round(float(nx), 3),
        }
        ident = group_identity(g)
        out.append(Finding(
            kind="tunneling",
            severity=severity,
            explanation=(
                f"{ident['pod'] or ident['comm'] or ident['client'] or 'a client'} asked "
                f"{len(long)} distinct registered domains under .{ps} whose second-level label "
                f"is {th.sld_min_len}+ random-looking characters ({ent:.2f} bits/char): data "
                "can be carried in the registered domain itself (or the names come from a "
                "domain generation algorithm)."
            ),
            domain=f"*.{ps}",
            registered_domain=None,
            metrics=metrics,
            evidence=txn_evidence(spread(g.drop_duplicates("_rd"))),
            **ident,
        ))
    return out
