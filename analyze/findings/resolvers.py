"""Nameserver health per address: resolver_unreachable and resolver_errors.

Per nameserver (the server address of client transactions; a loopback stub is split by
network namespace, because 127.0.0.53 inside a pod is not the node's systemd-resolved):
queries, answers, timeouts, SERVFAIL/REFUSED, latency percentiles.

* resolver_unreachable: a nameserver that never (or rarely) answers, typically a stale
  resolv.conf entry; queries to a 127.0.0.53 stub from a network namespace that is not the
  host's (the stub only listens in the host namespace).
* resolver_errors: a nameserver answering SERVFAIL/REFUSED to a share of queries, or slowly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from analyze.findings._common import (
    Finding,
    clean,
    client_queries,
    col,
    group_identity,
    present,
    quantile,
    spread,
    table,
    txn_evidence,
)

STUB_ADDRS = frozenset({"127.0.0.53", "127.0.0.54"})


@dataclass(frozen=True)
class Thresholds:
    min_queries: int = 3
    unreachable_answer_share: float = 0.5   #: below this share answered = unreachable
    error_share_low: float = 0.05
    error_share_medium: float = 0.2
    slow_p95_low_s: float = 0.2
    slow_p95_medium_s: float = 1.0


def host_netns(capture: Any) -> int | None:
    """The host's network namespace: that of pid 1 in the processes table, when known."""
    pr = table(capture, "processes")
    if pr.empty or "tgid" not in pr.columns or "netns" not in pr.columns:
        return None
    init = pr[(pr["tgid"] == 1) & pr["netns"].notna()]
    if init.empty:
        return None
    return int(init["netns"].iloc[0])


def detect(capture: Any, th: Thresholds | None = None, **_: Any) -> list[Finding]:
    th = th or Thresholds()
    tx = client_queries(capture)
    if tx.empty or "server_addr" not in tx.columns or "status" not in tx.columns:
        return []
    tx = tx[tx["server_addr"].notna() & tx["status"].isin(["answered", "timeout"])].copy()
    if tx.empty:
        return []
    hostns = host_netns(capture)
    netns = col(tx, "netns")
    loop = tx["server_addr"].astype(str).str.startswith("127.") | tx["server_addr"].eq("::1")
    # Int64: a list of ints and Nones would become floats (a netns printed as 4026532174.0)
    tx["_ns"] = pd.array([int(n) if (lp and present(n)) else None
                          for lp, n in zip(loop, netns)], dtype="Int64")
    out: list[Finding] = []
    for (server, ns), g in tx.groupby(["server_addr", "_ns"], sort=False, dropna=False):
        out.extend(_judge(str(server), clean(ns), g, hostns, th))
    return out


def _judge(server: str, ns: Any, g: pd.DataFrame, hostns: int | None,
           th: Thresholds) -> list[Finding]:
    n = len(g)
    answered = g[g["status"] == "answered"]
    timeouts = int((g["status"] == "timeout").sum())
    rcodes = answered["rcode_name"].astype(str).value_counts() if "rcode_name" in g else {}
    servfail = int(rcodes.get("SERVFAIL", 0))
    refused = int(rcodes.get("REFUSED", 0))
    lat = answered["latency_s"].dropna().astype(float) if "latency_s" in g else pd.Series()
    metrics = {
        "queries": n,
        "answered": len(answered),
        "timeouts": timeouts,
        "servfail": servfail,
        "refused": refused,
        "latency_p50_ms": _ms(quantile(lat, 0.5)),
        "latency_p95_ms": _ms(quantile(lat, 0.95)),
        "latency_p99_ms": _ms(quantile(lat, 0.99)),
        "clients": int(col(g, "tgid").nunique() or col(g, "client_addr").nunique()),
        "netns": ns,
    }
    ident = group_identity(g)
    out: list[Finding] = []
    label = server + (f" (netns {ns})" if ns is not None else "")
    if server in STUB_ADDRS and ns is not None and (
        (hostns is not None and ns != hostns) or (hostns is None and ident["pod"])
    ):
        out.append(Finding(
            kind="resolver_unreachable",
            severity="high" if len(answered) == 0 else "medium",
            explanation=(
                f"{n} queries went to the systemd-resolved stub {server} from network namespace "
                f"{ns}, which is not the host's ({hostns if hostns is not None else 'unknown'}). "
                "The stub only listens in the host namespace: the pod's resolv.conf was copied "
                "from a host using systemd-resolved. Point the kubelet's --resolv-conf at "
                "/run/systemd/resolve/resolv.conf."
            ),
            domain=None,
            metrics=metrics,
            evidence=txn_evidence(spread(g)),
            **ident,
        ))
        return out
    if n < th.min_queries:
        return out
    share = len(answered) / n
    if share < th.unreachable_answer_share:
        out.append(Finding(
            kind="resolver_unreachable",
            severity="high" if share == 0 else "medium",
            explanation=(
                f"Nameserver {label} answered {len(answered)} of {n} queries; {timeouts} timed "
                "out. A nameserver that does not answer is usually a stale resolv.conf entry "
                "or a blocked path; each timeout stalls the client for the resolver timeout "
                "(glibc: 5 s) before it tries the next server."
            ),
            metrics=metrics,
            evidence=txn_evidence(spread(g[g["status"] == "timeout"])),
            **ident,
        ))
        return out
    errors = servfail + refused
    err_share = errors / n
    p95 = quantile(lat, 0.95)
    severity = None
    reasons = []
    if errors >= th.min_queries and err_share >= th.error_share_low:
        severity = "medium" if err_share >= th.error_share_medium else "low"
        reasons.append(f"{errors} of {n} queries ({err_share:.0%}) got SERVFAIL ({servfail}) "
                       f"or REFUSED ({refused})")
    if timeouts and timeouts / n >= th.error_share_low:
        severity = severity or "low"
        reasons.append(f"{timeouts} queries timed out")
    if p95 is not None and len(lat) >= th.min_queries and p95 >= th.slow_p95_low_s:
        slow = "medium" if p95 >= th.slow_p95_medium_s else "low"
        severity = slow if severity is None or slow == "medium" else severity
        reasons.append(f"95% of answers took up to {p95 * 1000:.0f} ms "
                       f"(median {(quantile(lat, 0.5) or 0.0) * 1000:.0f} ms)")
    if severity is None:
        return out
    bad = g[(g["status"] == "timeout") | g["rcode_name"].isin(["SERVFAIL", "REFUSED"])]
    ev = bad if len(bad) else g.sort_values("latency_s", ascending=False)
    out.append(Finding(
        kind="resolver_errors",
        severity=severity,
        explanation=f"Nameserver {label}: " + "; ".join(reasons) + ".",
        metrics=metrics,
        evidence=txn_evidence(spread(ev)),
        **ident,
    ))
    return out


def _ms(v: float | None) -> float | None:
    return round(v * 1000, 3) if v is not None else None
