"""DNS answers joined to the connections that followed them.

* dns_to_connect (info): per process, how long after an answer it connected to one of the
  answer's addresses (p50/p95), and how many connects had no answer before them.
* unresolved_connect: connects to addresses the process never received in an answer during
  the capture (hard-coded IPs, or a name resolved before the capture started). Loopback,
  link-local, the process's DNS servers and port 53 are skipped.
* new_domain_connect: a registered domain first asked in the capture (after a warm-up, or
  absent from the baseline/allow list) and connected to within a short window: the first
  observable step of a compromised workload contacting its command and control server.

A connect joins an answer of the same process (tgid), or of the same client address when
the rows carry no process (pcaps); the answer must arrive before the connect.
"""

from __future__ import annotations

import ipaddress
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
)
from analyze.findings._names import is_internal, registered_domain


@dataclass(frozen=True)
class Thresholds:
    new_domain_window_s: float = 10.0   #: connect within this long after the first answer
    warmup_s: float = 30.0              #: names first asked this early may predate the capture
    max_answer_age_s: float = 3600.0    #: an answer older than this does not explain a connect


def _skip_addr(addr: str, dns_servers: set[str]) -> bool:
    if addr in dns_servers:
        return True
    try:
        ip = ipaddress.ip_address(addr.split("%")[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified or ip.is_link_local or ip.is_multicast


def _norm(addr: str) -> str:
    try:
        ip = ipaddress.ip_address(addr.split("%")[0])
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


#: Owner of connects with neither a process nor a source address: joined to any answer.
ANY_OWNER = "*"


def _owner(row: Any) -> str:
    t = clean(row.get("tgid"))
    node = clean(row.get("node")) or ""
    if t is not None:
        return f"{node}|pid:{int(t)}"
    a = clean(row.get("client_addr")) or clean(row.get("src_addr"))
    if a is None:
        return ANY_OWNER  # a pcap's SYN: the capture does not say which client sent it
    return f"{node}|addr:{a}"


def _answers(capture: Any) -> pd.DataFrame:
    """One row per (owner, address) an answer gave, with the answer's time and name."""
    tx = client_queries(capture)
    if tx.empty or "answer_ips" not in tx.columns:
        return pd.DataFrame(columns=["_owner", "ip", "answer_ts", "qname", "qtype", "first_ts"])
    tx = tx[tx["answer_ips"].map(lambda v: present(v) and len(v) > 0)]
    rows = []
    for _, r in tx.iterrows():
        when = r["response_ts"] if present(r.get("response_ts")) else r["ts"]
        for ip in r["answer_ips"]:
            rows.append({
                "_owner": _owner(r), "ip": _norm(str(ip)), "answer_ts": when,
                "qname": clean(r.get("qname")), "qtype": clean(r.get("qtype")),
                "query_ts": r["ts"],
            })
    return pd.DataFrame(rows)


def detect(capture: Any, th: Thresholds | None = None, baseline: Any | None = None,
           allow: Any | None = None, cluster_domain: str = "cluster.local",
           **_: Any) -> list[Finding]:
    th = th or Thresholds()
    cn = table(capture, "connects")
    if cn.empty or "dst_addr" not in cn.columns:
        return []
    tx = client_queries(capture)
    dns_servers = set(col(tx, "server_addr").dropna().astype(str)) if not tx.empty else set()
    cn = cn[cn["dst_addr"].notna()].copy()
    cn["_ip"] = cn["dst_addr"].astype(str).map(_norm)
    cn = cn[[not _skip_addr(a, dns_servers) for a in cn["_ip"]]]
    if "dst_port" in cn.columns:
        cn = cn[cn["dst_port"].fillna(0).astype(int) != 53]
    if cn.empty:
        return []
    cn["_owner"] = [_owner(r) for _, r in cn.iterrows()]
    cn = cn.sort_values("ts")
    answers = _answers(capture)
    first_asked = _first_asked(tx)
    start = _capture_start(capture, tx, cn)
    known = _baseline_domains(baseline)
    findings: list[Finding] = []
    by_owner = {k: g.sort_values("answer_ts") for k, g in answers.groupby("_owner")} \
        if not answers.empty else {}
    if not answers.empty:
        by_owner[ANY_OWNER] = answers.sort_values("answer_ts")
    # join per process, report per workload (pod, else program, else client)
    groups: dict[str, dict[str, Any]] = {}
    for owner, g in cn.groupby("_owner", sort=False):
        ans = by_owner.get(owner)
        acc = groups.setdefault(_workload(g.iloc[0], str(owner)), {
            "rows": [], "joined": [], "unresolved": [], "resolves": False,
            "known_owner": owner != ANY_OWNER})
        acc["rows"].append(g)
        acc["resolves"] = acc["resolves"] or ans is not None
        for _, c in g.iterrows():
            match = None
            if ans is not None:
                cand = ans[(ans["ip"] == c["_ip"]) & (ans["answer_ts"] <= c["ts"])]
                if not cand.empty:
                    match = cand.iloc[-1]
                    age = (c["ts"] - match["answer_ts"]).total_seconds()
                    if age > th.max_answer_age_s:
                        match = None
            if match is None:
                acc["unresolved"].append(c)
            else:
                acc["joined"].append((c, match))
    for acc in groups.values():
        rows = pd.concat(acc["rows"])
        ident = group_identity(rows)
        who = ident["pod"] or ident["comm"] or ident["client"] or (
            "a process" if acc["known_owner"] else "some client (the pcap does not say which)")
        joined, unresolved = acc["joined"], acc["unresolved"]
        if joined:
            findings.append(_dns_to_connect(joined, unresolved, ident, who))
            findings.extend(_new_domain_connect(joined, ident, who, first_asked, start, known,
                                                th, cluster_domain))
        if unresolved:
            findings.append(_unresolved(unresolved, len(rows), ident, who, acc["resolves"],
                                        known_owner=acc["known_owner"]))
    return findings


def _workload(row: Any, owner: str) -> str:
    pod = clean(row.get("pod"))
    if pod is not None:
        return f"{clean(row.get('node')) or ''}|pod:{clean(row.get('namespace'))}/{pod}"
    comm = clean(row.get("comm"))
    if comm is not None:
        return f"{clean(row.get('node')) or ''}|comm:{comm}"
    return owner


def _dns_to_connect(joined: list, unresolved: list, ident: dict, who: str) -> Finding:
    delays = [(c["ts"] - m["answer_ts"]).total_seconds() for c, m in joined]
    p50 = quantile(delays, 0.5) or 0.0
    p95 = quantile(delays, 0.95) or 0.0
    names = pd.Series([m["qname"] for _, m in joined]).value_counts()
    evidence = []
    for c, m in joined[:: max(len(joined) // 8, 1)][:8]:
        evidence.append({
            "ts": clean(c["ts"]),
            "query": f"{m['qname']} {m['qtype'] or ''}".strip(),
            "answer": str(m["ip"]),
            "connect": f"{c['_ip']}:{clean(c.get('dst_port'))}",
            "delay_ms": round((c["ts"] - m["answer_ts"]).total_seconds() * 1000, 3),
        })
    return Finding(
        kind="dns_to_connect",
        severity="info",
        explanation=(
            f"{who} connected {len(joined)} times to addresses it had just resolved "
            f"({names.size} names), {p50 * 1000:.1f} ms after the answer at the median "
            f"(p95 {p95 * 1000:.1f} ms); {len(unresolved)} connects had no answer before them."
        ),
        domain=str(names.index[0]) if names.size else None,
        metrics={
            "connects_after_answer": len(joined),
            "connects_without_answer": len(unresolved),
            "delay_p50_ms": round(p50 * 1000, 3),
            "delay_p95_ms": round(p95 * 1000, 3),
            "delay_max_ms": round(max(delays) * 1000, 3),
            "delays_s": [round(d, 6) for d in delays[:1000]],
            "names": {str(k): int(v) for k, v in names.head(10).items()},
        },
        evidence=evidence,
        **ident,
    )


def _is_public(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return ip.is_global


def _unresolved(rows: list, total: int, ident: dict, who: str, resolves: bool,
                known_owner: bool = True) -> Finding:
    df = pd.DataFrame(rows)
    addrs = (df["_ip"].astype(str) + ":" + col(df, "dst_port").astype(str)).value_counts()
    public = sorted({a for a in df["_ip"].astype(str) if _is_public(a)})
    severity = ("medium" if resolves else "low") if public else "info"
    if not known_owner:
        severity = "info"  # pcap SYNs: no telling which host or process connected
        resolves = False
    evidence = [{
        "ts": clean(r["ts"]),
        "query": "(no DNS answer for this address before the connect)",
        "answer": "-",
        "connect": f"{r['_ip']}:{clean(r.get('dst_port'))}",
        "result": clean(r.get("result")),
    } for _, r in spread(df).iterrows()]
    return Finding(
        kind="unresolved_connect",
        severity=severity,
        explanation=(
            f"{who} made {len(df)} of its {total} connects to {addrs.size} address:port pairs "
            f"it never received in a DNS answer during the capture"
            + (f", {len(public)} of them public ({', '.join(public[:5])})" if public else "")
            + ". Hard-coded addresses bypass DNS-based controls; the address may also have been "
            "resolved before the capture started or come from configuration (Kubernetes "
            "service environment variables)."
            + (" The same process resolves other names, so it normally uses DNS." if resolves
               else "")
        ),
        metrics={
            "connects": len(df),
            "all_connects": total,
            "addresses": {str(k): int(v) for k, v in addrs.head(20).items()},
            "public_addresses": public[:50],
            "process_uses_dns": resolves,
        },
        evidence=evidence,
        **ident,
    )


def _first_asked(tx: pd.DataFrame) -> dict[str, pd.Timestamp]:
    if tx.empty or "qname" not in tx.columns:
        return {}
    rd = tx["qname"].dropna().astype(str).map(lambda q: registered_domain(q) or q)
    df = pd.DataFrame({"rd": rd, "ts": tx.loc[rd.index, "ts"]})
    return {str(k): v for k, v in df.groupby("rd")["ts"].min().items()}


def _capture_start(capture: Any, *tables: pd.DataFrame) -> pd.Timestamp | None:
    starts = [t["ts"].min() for t in tables if not t.empty and "ts" in t.columns]
    starts = [s for s in starts if present(s)]
    return min(starts) if starts else None


def _baseline_domains(baseline: Any | None) -> set[str] | None:
    if baseline is None:
        return None
    tx = client_queries(baseline)
    if tx.empty:
        return set()
    return {registered_domain(q) or q for q in tx["qname"].dropna().astype(str)}


def _new_domain_connect(joined: list, ident: dict, who: str, first_asked: dict,
                        start: pd.Timestamp | None, known: set[str] | None, th: Thresholds,
                        cluster_domain: str) -> list[Finding]:
    out: list[Finding] = []
    seen: set[str] = set()
    for c, m in joined:
        qname = str(m["qname"])
        if is_internal(qname, cluster_domain):
            continue
        rd = registered_domain(qname) or qname
        if rd in seen:
            continue
        first = first_asked.get(rd)
        if first is None:
            continue
        delay = (c["ts"] - m["answer_ts"]).total_seconds()
        if delay > th.new_domain_window_s:
            continue
        if known is not None:
            if rd in known:
                continue
            why = "never asked in the baseline capture"
            severity = "medium"
        else:
            if start is None or (first - start).total_seconds() < th.warmup_s:
                continue
            why = (f"first asked {(first - start).total_seconds():.0f} s into the capture "
                   "(no baseline given)")
            severity = "low"
        seen.add(rd)
        out.append(Finding(
            kind="new_domain_connect",
            severity=severity,
            explanation=(
                f"{who} resolved {qname} ({rd}: {why}) and connected to {c['_ip']}:"
                f"{clean(c.get('dst_port'))} {delay * 1000:.0f} ms later. A workload's first "
                "contact with a new domain is how command-and-control traffic starts; check "
                "the domain and the process."
            ),
            domain=qname,
            registered_domain=rd,
            metrics={"delay_ms": round(delay * 1000, 3),
                     "first_asked": clean(first),
                     "in_baseline": False if known is not None else None},
            evidence=[{
                "ts": clean(c["ts"]),
                "query": f"{qname} {m['qtype'] or ''}".strip(),
                "answer": str(m["ip"]),
                "connect": f"{c['_ip']}:{clean(c.get('dst_port'))}",
                "delay_ms": round(delay * 1000, 3),
            }],
            **ident,
        ))
    return out
