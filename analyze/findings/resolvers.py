"""Nameserver health per address: resolver_unreachable and resolver_errors.

Per nameserver (the server address of client transactions; a loopback stub is split by
network namespace, because 127.0.0.53 inside a pod is not the node's systemd-resolved):
queries, answers, timeouts, SERVFAIL/REFUSED, latency percentiles.

* resolver_unreachable: a nameserver that never (or rarely) answers, typically a stale
  resolv.conf entry (judged from 3 queries, retransmissions counted, sent over 2 s: a tiny
  operational capture is enough); "no nameserver answered" when every nameserver a client
  asked stayed silent; queries to a 127.0.0.53 stub from a network namespace that is not the
  host's (the stub only listens in the host namespace).
* resolver_errors: a nameserver answering SERVFAIL/REFUSED to a share of queries, or slowly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from analyze import stages
from analyze.findings._common import Finding, table, txn_evidence
from analyze.findings._sql import Rows, client_key_sql, client_rows

STUB_ADDRS = frozenset({"127.0.0.53", "127.0.0.54"})


@dataclass(frozen=True)
class Thresholds:
    min_queries: int = 3                    #: queries sent (retransmissions counted)
    silent_span_s: float = 2.0              #: silent that long (first to last query) to judge
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

    def clients(self) -> list[dict[str, Any]]:
        """Who asked this nameserver (``client``: ``_CLIENT_LABEL``), with their queries and
        how many of them failed (timeout, SERVFAIL, REFUSED), the most failed first."""
        rows = self.all.arrow(f"{_CLIENT_LABEL} AS client, count(*) AS queries, "
                              f"count(*) FILTER (WHERE {_BAD}) AS failed",
                              "GROUP BY ALL ORDER BY failed DESC, queries DESC, client")
        return [{"client": str(d["client"]), "queries": int(d["queries"]),
                 "failed": int(d["failed"])} for d in rows.to_pylist()]

    def client_of(self, txn_ids: list[int]) -> dict[int, str]:
        """``_CLIENT_LABEL`` of these transactions."""
        rows = self.all.where("txn_id IN (SELECT unnest(?::BIGINT[]))", txn_ids)
        return {int(d["txn_id"]): str(d["client"])
                for d in rows.arrow(f"txn_id, {_CLIENT_LABEL} AS client").to_pylist()}


#: Queries actually sent (a transaction's first copy and its retransmissions), and the time
#: from the first to the last copy.
_SENT = "count(*) + coalesce(sum(retransmissions), 0)"
_SPAN = ("coalesce(epoch_ns(max(coalesce(last_query_ts, ts))) - epoch_ns(min(ts)), 0) "
         "/ 1e9")


def detect(capture: Any, th: Thresholds | None = None, settings: Any = None,
           **_: Any) -> list[Finding]:
    if th is None:
        from analyze.findings.settings import thresholds_for

        th = thresholds_for("resolvers", Thresholds, settings)
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
        # one quantile state for the three (each holds every latency of the server: a
        # node's one resolver at 50M messages has 25M of them)
        f"{lat('quantile_cont', '[0.5, 0.95, 0.99]')} AS _q, "
        "count(DISTINCT tgid) AS tgids, count(DISTINCT client_addr) AS addrs, "
        f"{_SENT} AS sent, {_SPAN} AS span_s",
        "GROUP BY ALL ORDER BY min(txn_id)").to_pylist()
    if not groups:
        return []
    for g in groups:
        q = g.pop("_q") or [None, None, None]
        g["p50"], g["p95"], g["p99"] = q
    hostns = host_netns(capture)
    out: list[Finding] = []
    unreachable: dict[str, Finding] = {}
    for row in groups:
        found = _judge(_Server(rows, row), hostns, th)
        out.extend(found)
        for f in found:
            if f.kind == "resolver_unreachable":
                unreachable[_server_key(row["server"], row["ns"])] = f
    out.extend(_silent_clients(rows, th, unreachable))
    return out


def _server_key(server: Any, ns: Any) -> str:
    return f"{server}|{'' if ns is None else int(ns)}"


def _silent_clients(rows: Rows, th: Thresholds,
                    unreachable: dict[str, Finding]) -> list[Finding]:
    """"No nameserver answered": a client none of whose nameservers answered anything, with
    enough queries over enough time that it is not a capture cut short. A client with one
    nameserver gets it said on that nameserver's resolver_unreachable finding (one finding,
    not two for the same silence); a client with several gets a finding of its own."""
    key = client_key_sql()
    silent = rows.arrow(
        f"{key} AS client, {_SENT} AS sent, {_SPAN} AS span_s, count(*) AS queries, "
        "count(*) FILTER (WHERE status = 'answered') AS answered, "
        "list(DISTINCT server_addr ORDER BY server_addr) AS servers, "
        f"list(DISTINCT server_addr || '|' || coalesce(CAST({_NS} AS VARCHAR), '')) "
        "AS server_keys",
        f"GROUP BY ALL HAVING count(*) FILTER (WHERE status = 'answered') = 0 "
        f"AND {_SENT} >= {int(th.min_queries)} AND {_SPAN} >= {float(th.silent_span_s)} "
        "ORDER BY min(txn_id)").to_pylist()
    out: list[Finding] = []
    for r in silent:
        keys = [str(k) for k in r["server_keys"]]
        if len(keys) == 1 and keys[0] in unreachable:
            _only_nameserver(unreachable[keys[0]])
            continue
        mine = rows.where(f"{key} = ?", r["client"])
        ident = mine.identity()
        servers = [str(s) for s in r["servers"]]
        who = ident["pod"] or ident["comm"] or ident["client"] or "a client"
        out.append(Finding(
            kind="resolver_unreachable",
            severity="high",
            explanation=(
                f"No nameserver answered: {who} sent {r['sent']} queries (retransmissions "
                f"included) over {r['span_s']:.1f} s to {len(servers)} nameserver"
                f"{'s' if len(servers) != 1 else ''} ({', '.join(servers)}) and got no "
                "answer at all. Every name lookup of this client fails: check its "
                "resolv.conf, the network path to the nameservers (firewall, network "
                "policy, routes) and whether they run."
            ),
            domain=None,
            metrics={"queries": r["queries"], "sent": r["sent"], "answered": 0,
                     "span_s": round(float(r["span_s"]), 3), "nameservers": servers,
                     "no_nameserver_answered": True},
            evidence=txn_evidence(mine.spread("ts, txn_id", count=int(r["queries"]))),
            **ident,
        ))
    return out


def _only_nameserver(f: Finding) -> None:
    """The finding of a nameserver that was the only one of a client it never answered."""
    n = int(f.metrics.get("silent_clients", 0)) + 1
    f.metrics["silent_clients"] = n
    f.metrics["no_nameserver_answered"] = True
    f.severity = "high"
    note = " No nameserver answered: it was the only nameserver of "
    f.explanation = f.explanation.split(note)[0] + note + (
        "its client" if n == 1 else f"{n} of its clients") + ", so every lookup failed."


def _judge(srv: _Server, hostns: int | None, th: Thresholds) -> list[Finding]:
    r = srv.row
    server, ns = str(r["server"]), r["ns"]
    n, answered, timeouts = r["queries"], r["answered"], r["timeouts"]
    servfail, refused = r["servfail"], r["refused"]
    sent, span = int(r["sent"]), float(r["span_s"])
    metrics = {
        "queries": n,
        "sent": sent,
        "span_s": round(span, 3),
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
    if sent < th.min_queries:
        return out
    share = answered / n
    silent = answered == 0 and span >= th.silent_span_s
    if silent or (n >= th.min_queries and share < th.unreachable_answer_share):
        out.append(Finding(
            kind="resolver_unreachable",
            severity="high" if answered == 0 else "medium",
            explanation=(
                f"Nameserver {label} answered {answered} of {n} queries ({sent} sent with "
                f"retransmissions, over {span:.1f} s); {timeouts} timed "
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
    clients = srv.clients()
    metrics["affected_clients"] = clients[:MAX_CLIENTS]
    evidence = txn_evidence(ev)
    labels = srv.client_of([int(t) for t in ev["txn_id"]]) if len(ev) else {}
    for row, txn in zip(evidence, ev["txn_id"] if len(ev) else []):
        row["client"] = labels.get(int(txn), "unknown client")
    out.append(Finding(
        kind="resolver_errors",
        severity=severity,
        explanation=(f"Nameserver {label}: " + "; ".join(reasons) + ". "
                     + _affected(clients, bool(r["bad"]))).strip(),
        metrics=metrics,
        evidence=evidence,
        **ident,
    ))
    return out


#: Most clients a resolver_errors finding lists in its metrics (the summary names 5).
MAX_CLIENTS = 20

#: A client as a person names it: namespace/pod, else process[pid], else its address.
_CLIENT_LABEL = (
    "CASE WHEN pod IS NOT NULL THEN coalesce(CAST(namespace AS VARCHAR) || '/', '') "
    "|| CAST(pod AS VARCHAR) WHEN tgid IS NOT NULL THEN "
    f"coalesce(CAST({stages.PROCESS_COLUMN} AS VARCHAR), "
    "CAST(comm AS VARCHAR), 'pid') || '[' || CAST(CAST(tgid AS BIGINT) AS VARCHAR) || ']' "
    "ELSE coalesce(CAST(client_addr AS VARCHAR), 'unknown client') END")


def _affected(clients: list[dict[str, Any]], bad: bool) -> str:
    """The clients of a resolver_errors finding as a sentence, the most affected first."""
    hit = [c for c in clients if c["failed"]] if bad else clients
    if not hit:
        return ""
    shown = ", ".join(
        f"{c['client']} ({c['failed']} of {c['queries']} failed)" if bad
        else f"{c['client']} ({c['queries']} queries)" for c in hit[:5])
    more = f" and {len(hit) - 5} more" if len(hit) > 5 else ""
    noun = "Client" if len(hit) == 1 else f"{len(hit)} clients"
    return f"{noun} affected: {shown}{more}."


def _ms(v: float | None) -> float | None:
    return round(v * 1000, 3) if v is not None else None
