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

from analyze.findings._common import Finding, table, txn_evidence
from analyze.findings._sql import Rows, client_rows

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


#: Per nameserver: the server address, and the network namespace of a loopback one.
_NS = ("CASE WHEN (starts_with(server_addr, '127.') OR server_addr = '::1') "
       "AND netns IS NOT NULL THEN CAST(netns AS BIGINT) END")
_BAD = "status = 'timeout' OR rcode_name IN ('SERVFAIL', 'REFUSED')"


class _Server:
    """One nameserver: its numbers (a row of the aggregate query) and its client
    transactions (``Rows``), read back as sample rows for the evidence."""

    def __init__(self, rows: Rows, row: dict[str, Any]):
        self.row = row
        self.all = rows.where(f"server_addr = ? AND {_NS} IS NOT DISTINCT FROM ?",
                              row["server"], row["ns"])

    def rows(self, where: str, count: int, order: str = "txn_id") -> pd.DataFrame:
        """``spread`` of the transactions matching ``where``, in ``order``."""
        return self.all.where(where).spread(order, count=count)


def detect(capture: Any, th: Thresholds | None = None, **_: Any) -> list[Finding]:
    th = th or Thresholds()
    rows = client_rows(capture).where(
        "server_addr IS NOT NULL AND status IN ('answered', 'timeout')")
    answered = "status = 'answered'"

    def lat(fn: str, *args: str) -> str:
        return f"{fn}({', '.join(('latency_s', *args))}) FILTER (WHERE {answered})"
    groups = rows.arrow(
        f"server_addr AS server, {_NS} AS ns, count(*) AS queries, "
        f"count(*) FILTER (WHERE {answered}) AS answered, "
        "count(*) FILTER (WHERE status = 'timeout') AS timeouts, "
        f"count(*) FILTER (WHERE {answered} AND rcode_name = 'SERVFAIL') AS servfail, "
        f"count(*) FILTER (WHERE {answered} AND rcode_name = 'REFUSED') AS refused, "
        f"count(*) FILTER (WHERE {_BAD}) AS bad, {lat('count')} AS latencies, "
        f"{lat('quantile_cont', '0.5')} AS p50, {lat('quantile_cont', '0.95')} AS p95, "
        f"{lat('quantile_cont', '0.99')} AS p99, "
        "count(DISTINCT tgid) AS tgids, count(DISTINCT client_addr) AS addrs",
        "GROUP BY ALL ORDER BY min(txn_id)").to_pylist()
    if not groups:
        return []
    hostns = host_netns(capture)
    out: list[Finding] = []
    for row in groups:
        out.extend(_judge(_Server(rows, row), hostns, th))
    return out


def _judge(srv: _Server, hostns: int | None, th: Thresholds) -> list[Finding]:
    r = srv.row
    server, ns = str(r["server"]), r["ns"]
    n, answered, timeouts = r["queries"], r["answered"], r["timeouts"]
    servfail, refused = r["servfail"], r["refused"]
    metrics = {
        "queries": n,
        "answered": answered,
        "timeouts": timeouts,
        "servfail": servfail,
        "refused": refused,
        "latency_p50_ms": _ms(r["p50"]),
        "latency_p95_ms": _ms(r["p95"]),
        "latency_p99_ms": _ms(r["p99"]),
        "clients": int(r["tgids"] or r["addrs"]),
        "netns": ns,
    }
    ident = srv.all.identity()
    out: list[Finding] = []
    label = server + (f" (netns {ns})" if ns is not None else "")
    if server in STUB_ADDRS and ns is not None and (
        (hostns is not None and ns != hostns) or (hostns is None and ident["pod"])
    ):
        out.append(Finding(
            kind="resolver_unreachable",
            severity="high" if answered == 0 else "medium",
            explanation=(
                f"{n} queries went to the systemd-resolved stub {server} from network namespace "
                f"{ns}, which is not the host's ({hostns if hostns is not None else 'unknown'}). "
                "The stub only listens in the host namespace: the pod's resolv.conf was copied "
                "from a host using systemd-resolved. Point the kubelet's --resolv-conf at "
                "/run/systemd/resolve/resolv.conf."
            ),
            domain=None,
            metrics=metrics,
            evidence=txn_evidence(srv.rows("TRUE", n)),
            **ident,
        ))
        return out
    if n < th.min_queries:
        return out
    share = answered / n
    if share < th.unreachable_answer_share:
        out.append(Finding(
            kind="resolver_unreachable",
            severity="high" if share == 0 else "medium",
            explanation=(
                f"Nameserver {label} answered {answered} of {n} queries; {timeouts} timed "
                "out. A nameserver that does not answer is usually a stale resolv.conf entry "
                "or a blocked path; each timeout stalls the client for the resolver timeout "
                "(glibc: 5 s) before it tries the next server."
            ),
            metrics=metrics,
            evidence=txn_evidence(srv.rows("status = 'timeout'", timeouts)),
            **ident,
        ))
        return out
    errors = servfail + refused
    err_share = errors / n
    p95 = r["p95"]
    severity = None
    reasons = []
    if errors >= th.min_queries and err_share >= th.error_share_low:
        severity = "medium" if err_share >= th.error_share_medium else "low"
        reasons.append(f"{errors} of {n} queries ({err_share:.0%}) got SERVFAIL ({servfail}) "
                       f"or REFUSED ({refused})")
    if timeouts and timeouts / n >= th.error_share_low:
        severity = severity or "low"
        reasons.append(f"{timeouts} queries timed out")
    if p95 is not None and r["latencies"] >= th.min_queries and p95 >= th.slow_p95_low_s:
        slow = "medium" if p95 >= th.slow_p95_medium_s else "low"
        severity = slow if severity is None or slow == "medium" else severity
        reasons.append(f"95% of answers took up to {p95 * 1000:.0f} ms "
                       f"(median {(r['p50'] or 0.0) * 1000:.0f} ms)")
    if severity is None:
        return out
    ev = (srv.rows(_BAD, r["bad"]) if r["bad"] else
          srv.rows("TRUE", n, order="latency_s DESC NULLS LAST, txn_id"))
    out.append(Finding(
        kind="resolver_errors",
        severity=severity,
        explanation=f"Nameserver {label}: " + "; ".join(reasons) + ".",
        metrics=metrics,
        evidence=txn_evidence(ev),
        **ident,
    ))
    return out


def _ms(v: float | None) -> float | None:
    return round(v * 1000, 3) if v is not None else None
