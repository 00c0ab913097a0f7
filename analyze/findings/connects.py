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

import errno
import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pandas as pd
import pyarrow as pa

from analyze.attribute import ATTR_COLUMNS
from analyze.findings._common import (
    Finding,
    clean,
    col,
    group_identity,
    quantile,
    spread,
)
from analyze.findings._names import is_internal, registered_domain
from analyze.findings._sql import client_rows


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


@lru_cache(maxsize=65536)
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


def _owners(df: pd.DataFrame, addr_cols: tuple[str, ...]) -> pd.Series:
    """Owner key per row: node|pid:N, else node|addr:A, else ANY_OWNER (vectorized)."""
    node = col(df, "node").astype(object).where(col(df, "node").notna(), "").astype(str)
    tgid = pd.to_numeric(col(df, "tgid"), errors="coerce")
    addr = pd.Series([None] * len(df), index=df.index, dtype=object)
    for c in addr_cols:
        addr = addr.where(addr.notna(), col(df, c).astype(object))
    by_pid = node + "|pid:" + tgid.fillna(-1).astype("int64").astype(str)
    by_addr = node + "|addr:" + addr.astype(str)
    out = by_pid.where(tgid.notna(), by_addr.where(addr.notna(), ANY_OWNER))
    return out.astype(str)


def _answers(tx: pd.DataFrame) -> pd.DataFrame:
    """One row per (owner, address) an answer gave, with the answer's time and name."""
    cols = ["_owner", "ip", "answer_ts", "qname", "qtype", "txn_id"]
    if tx.empty or "answer_ips" not in tx.columns:
        return pd.DataFrame(columns=cols)
    has = tx["answer_ips"].map(lambda v: isinstance(v, (list, tuple)) or hasattr(v, "__len__")
                               and not isinstance(v, str))
    tx = tx[has]
    tx = tx[tx["answer_ips"].map(len) > 0]
    if tx.empty:
        return pd.DataFrame(columns=cols)
    when = tx["response_ts"].where(tx["response_ts"].notna(), tx["ts"]) \
        if "response_ts" in tx.columns else tx["ts"]
    df = pd.DataFrame({
        "_owner": _owners(tx, ("client_addr",)),
        "ip": tx["answer_ips"].map(list),
        "answer_ts": when,
        "qname": tx["qname"],
        "qtype": col(tx, "qtype"),
        "txn_id": col(tx, "txn_id"),
    }).explode("ip")
    df = df[df["ip"].notna()]
    df["ip"] = df["ip"].astype(str).map(_norm)
    return df.sort_values("answer_ts", kind="stable").reset_index(drop=True)


def _join(cn: pd.DataFrame, answers: pd.DataFrame, max_age_s: float) -> pd.DataFrame:
    """Each connect with the latest earlier answer of its owner holding its address."""
    cn = cn.sort_values("ts", kind="stable").reset_index(drop=True)
    tol = pd.Timedelta(seconds=max_age_s)
    right = answers[["_owner", "ip", "answer_ts", "qname", "qtype", "txn_id"]].rename(
        columns={"_owner": "_aowner"})
    parts = []
    known = cn[cn["_owner"] != ANY_OWNER]
    if len(known):
        parts.append(pd.merge_asof(known, right.rename(columns={"_aowner": "_owner"}),
                                   left_on="ts", right_on="answer_ts",
                                   left_by=["_owner", "_ip"], right_by=["_owner", "ip"],
                                   direction="backward", tolerance=tol))
    anyone = cn[cn["_owner"] == ANY_OWNER]
    if len(anyone):
        parts.append(pd.merge_asof(anyone, right.drop(columns="_aowner"), left_on="ts",
                                   right_on="answer_ts", left_by="_ip", right_by="ip",
                                   direction="backward", tolerance=tol))
    return pd.concat(parts, ignore_index=True) if parts else cn


#: ``_owners`` of a transaction in SQL (node|pid:N, else node|addr:A, else ANY_OWNER).
_OWNER_SQL = ("CASE WHEN tgid IS NOT NULL THEN coalesce(CAST(node AS VARCHAR), '') || '|pid:' "
              "|| CAST(CAST(tgid AS BIGINT) AS VARCHAR) WHEN client_addr IS NOT NULL THEN "
              "coalesce(CAST(node AS VARCHAR), '') || '|addr:' || client_addr "
              f"ELSE '{ANY_OWNER}' END")

#: The connects' columns the detector reads (the rest stay in the engine).
_CONNECT_COLUMNS = ("ts", "node", "tgid", "comm", "dst_addr", "dst_port", "result",
                    *ATTR_COLUMNS)


def _connects(capture: Any) -> pd.DataFrame:
    """The capture's connects (the columns the detector reads), in time order."""
    from analyze._frames import stage_frame

    sql, params = capture.table_sql("connects")
    table = capture.query(f"SELECT {', '.join(_CONNECT_COLUMNS)} FROM ({sql}) "
                          "ORDER BY ts, tgid, seq", params)
    return stage_frame(table, "connects")


def _answer_rows(capture: Any, cn: pd.DataFrame, max_age_s: float) -> pd.DataFrame:
    """The client answers, one row per transaction (in order), that ``_join`` can pick for
    one of the connects ``cn`` (``_owner``, ``_ip``, ``ts``): for each connect, those of
    the latest earlier answer time of its owner (any owner's, for ``ANY_OWNER``) holding its
    address, within ``max_age_s``, ties included. Found in the engine (an ASOF join over
    the answers unnested), so that a busy client's answers are never all in memory; the
    join itself then runs on these few in pandas and gives what it gives on all of them:
    any later earlier answer would have been found instead."""
    from analyze._frames import stage_frame

    rows = client_rows(capture).where("len(answer_ips) > 0")
    raw = [str(r[0]) for r in capture.query_rows(
        f"SELECT DISTINCT unnest(answer_ips) FROM ({rows.sql})", rows.params)]
    ips = set(cn["_ip"])
    wanted = [a for a in raw if _norm(a) in ips]
    if not wanted:
        return pd.DataFrame()
    conn = pa.table({
        "owner": pa.array(cn["_owner"].astype(str).tolist(), pa.string()),
        "ip": pa.array(cn["_ip"].astype(str).tolist(), pa.string()),
        "t": pa.array(pd.DatetimeIndex(cn["ts"]).asi8, pa.int64())})
    answers = (
        f"SELECT txn_id, {_OWNER_SQL} AS owner, m.ip, "
        "epoch_ns(coalesce(response_ts, ts)) AS t FROM (SELECT txn_id, node, tgid, "
        f"client_addr, response_ts, ts, unnest(answer_ips) AS raw FROM ({rows.sql})) "
        "JOIN (SELECT unnest(?::VARCHAR[]) AS raw, unnest(?::VARCHAR[]) AS ip) m USING (raw)")
    tol = round(max_age_s * 1e9) + 1000  # looser than the join's: it decides
    table = capture.query(
        f"WITH a AS MATERIALIZED ({answers}), "
        "k AS (SELECT DISTINCT c.owner, c.ip, a.t FROM _cn c ASOF JOIN a ON "
        f"c.owner = a.owner AND c.ip = a.ip AND c.t >= a.t WHERE c.owner <> '{ANY_OWNER}' "
        f"AND c.t - a.t <= {tol}), "
        "k2 AS (SELECT DISTINCT c.ip, a.t FROM _cn c ASOF JOIN a ON c.ip = a.ip AND "
        f"c.t >= a.t WHERE c.owner = '{ANY_OWNER}' AND c.t - a.t <= {tol}), "
        "picked AS (SELECT a.txn_id FROM a JOIN k USING (owner, ip, t) UNION "
        "SELECT a.txn_id FROM a JOIN k2 USING (ip, t)) "
        "SELECT txn_id, node, tgid, client_addr, answer_ips, response_ts, ts, qname, qtype "
        f"FROM ({rows.sql}) WHERE txn_id IN (SELECT txn_id FROM picked) ORDER BY txn_id",
        [*rows.params, wanted, [_norm(a) for a in wanted], *rows.params],
        tables={"_cn": conn})
    return stage_frame(table, "transactions")


def joined_connects(capture: Any, scope: Any | None = None,
                    max_age_s: float = Thresholds.max_answer_age_s) -> pd.DataFrame | None:
    """The connects the detectors judge, each joined to the latest earlier answer of its owner
    (process, else client address) that held the connect's address, at most ``max_age_s``
    before it: the connect's columns plus ``_ip`` (the address normalized), ``_owner``,
    ``answer_ts``, ``qname``, ``qtype``, ``ip`` and ``txn_id`` (null without such an answer).
    None when there is no connect to judge (connects to loopback, link-local, a nameserver
    of the capture or port 53 are left out). ``Capture.lookups_with_connects`` reads it too."""
    from analyze.findings.partition import Scope

    scope = scope if scope is not None else Scope(capture)
    if capture.count("connects") == 0:
        return None
    cn = _connects(capture)
    dns_servers = scope.dns_servers()
    cn = cn[cn["dst_addr"].notna()].copy()
    cn["_ip"] = cn["dst_addr"].astype(str).map(_norm)
    skip = {a: _skip_addr(a, dns_servers) for a in pd.unique(cn["_ip"])}
    cn = cn[~cn["_ip"].map(skip).astype(bool)]
    if "dst_port" in cn.columns:
        cn = cn[cn["dst_port"].fillna(0).astype(int) != 53]
    if cn.empty:
        return None
    cn["_owner"] = _owners(cn, ("src_addr",))
    # only the answers holding an address something connected to can explain a connect
    answers = _answers(_answer_rows(capture, cn, max_age_s))
    if answers.empty:
        return cn.assign(answer_ts=pd.NaT, qname=None, qtype=None, ip=None, txn_id=None)
    return _join(cn, answers, max_age_s)


def detect(capture: Any, th: Thresholds | None = None, baseline: Any | None = None,
           allow: Any | None = None, cluster_domain: str = "cluster.local",
           scope: Any | None = None, **_: Any) -> list[Finding]:
    """``scope``: the whole capture's facts (``analyze.findings.partition.Scope``) when
    ``capture`` is one part of it; by default the capture's own."""
    from analyze.findings.partition import Scope

    th = th or Thresholds()
    scope = scope if scope is not None else Scope(capture)
    joined = joined_connects(capture, scope, th.max_answer_age_s)
    if joined is None:
        return []
    dns_servers = scope.dns_servers()
    rows = client_rows(capture).where("len(answer_ips) > 0")
    owners_with_answers = {str(r[0]) for r in capture.query_rows(
        f"SELECT DISTINCT {_OWNER_SQL} FROM ({rows.sql})", rows.params)}
    first_asked = scope.first_asked()
    start = scope.memo("connects.start", lambda: _capture_start(scope, dns_servers))
    known = scope.memo("connects.baseline", lambda: _baseline_domains(baseline))
    # joined per process, reported per workload (pod, else program, else client)
    joined["_group"] = _groups(joined)
    findings: list[Finding] = []
    for _key, g in joined.groupby("_group", sort=False):
        ident = group_identity(g)
        any_owner = bool((g["_owner"] == ANY_OWNER).all())
        who = ident["pod"] or ident["comm"] or ident["client"] or (
            "some client (the pcap does not say which)" if any_owner else "a process")
        hit = g[g["answer_ts"].notna()]
        miss = g[g["answer_ts"].isna()]
        if len(hit):
            findings.append(_dns_to_connect(hit, len(miss), ident, who))
            findings.extend(_new_domain_connect(hit, ident, who, first_asked, start, known,
                                                th, cluster_domain))
        if len(miss):
            resolves = bool(g["_owner"].isin(owners_with_answers).any())
            findings.append(_unresolved(miss, len(g), ident, who, resolves,
                                        known_owner=not any_owner))
    return findings


def _groups(df: pd.DataFrame) -> pd.Series:
    node = col(df, "node").astype(object).where(col(df, "node").notna(), "").astype(str)
    pod = col(df, "pod")
    comm = col(df, "comm")
    by_pod = node + "|pod:" + col(df, "namespace").astype(str) + "/" + pod.astype(str)
    by_comm = node + "|comm:" + comm.astype(str)
    return by_pod.where(pod.notna(), by_comm.where(comm.notna(), df["_owner"])).astype(str)


def _dns_to_connect(hit: pd.DataFrame, misses: int, ident: dict, who: str) -> Finding:
    delays = (hit["ts"] - hit["answer_ts"]).dt.total_seconds()
    p50 = quantile(delays, 0.5) or 0.0
    p95 = quantile(delays, 0.95) or 0.0
    names = hit["qname"].astype(str).value_counts()
    evidence = []
    for _, r in spread(hit).iterrows():
        evidence.append({
            "ts": clean(r["ts"]),
            "query": f"{r['qname']} {clean(r.get('qtype')) or ''}".strip(),
            "answer": str(r["ip"]),
            "connect": f"{r['_ip']}:{clean(r.get('dst_port'))}",
            "delay_ms": round((r["ts"] - r["answer_ts"]).total_seconds() * 1000, 3),
        })
    return Finding(
        kind="dns_to_connect",
        severity="info",
        explanation=(
            f"{who} connected {len(hit)} times to addresses it had just resolved "
            f"({names.size} names), {p50 * 1000:.1f} ms after the answer at the median "
            f"(p95 {p95 * 1000:.1f} ms); {misses} connects had no answer before them."
        ),
        domain=str(names.index[0]) if names.size else None,
        metrics={
            "connects_after_answer": len(hit),
            "connects_without_answer": misses,
            "delay_p50_ms": round(p50 * 1000, 3),
            "delay_p95_ms": round(p95 * 1000, 3),
            "delay_max_ms": round(float(delays.max()) * 1000, 3),
            "delays_s": [round(float(d), 6) for d in delays.head(1000)],
            "names": {str(k): int(v) for k, v in names.head(10).items()},
        },
        evidence=evidence,
        **ident,
    )


def connect_result(value: Any) -> str:
    """A connect() return value by name: ``ok``, ``EINPROGRESS`` (a non-blocking connect
    under way), ``ECONNREFUSED`` ...; ``not seen`` when the exit was not recorded."""
    if value is None:
        return "not seen"
    try:
        n = int(value)
    except (TypeError, ValueError):
        return str(value)
    if n == 0:
        return "ok"
    return errno.errorcode.get(-n, f"error {n}") if n < 0 else str(n)


def _is_public(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return ip.is_global


def _unresolved(df: pd.DataFrame, total: int, ident: dict, who: str, resolves: bool,
                known_owner: bool = True) -> Finding:
    addrs = (df["_ip"].astype(str) + ":" + col(df, "dst_port").astype(str)).value_counts()
    public = sorted({a for a in df["_ip"].astype(str) if _is_public(a)})
    # public addresses are low on their own (pools opened before the capture look the same);
    # run.find raises them with corroborating findings of the same workload
    severity = "low" if public else "info"
    if not known_owner:
        severity = "info"  # pcap SYNs: no telling which host or process connected
        resolves = False
    evidence = [{
        "ts": clean(r["ts"]),
        "query": "(no DNS answer for this address before the connect)",
        "answer": "-",
        "connect": f"{r['_ip']}:{clean(r.get('dst_port'))}",
        "result": connect_result(clean(r.get("result"))),
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


def _capture_start(scope: Any, dns_servers: set[str]) -> pd.Timestamp | None:
    """The first client query, or the first connect the detector judges (not to a skipped
    address or port 53), of the whole capture."""
    first = scope.start_of_queries()
    csql, params = scope.capture.table_sql("connects")
    rows = scope.capture.query(f"SELECT dst_addr, dst_port, min(ts) AS ts FROM ({csql}) WHERE dst_addr IS NOT NULL "
        "GROUP BY ALL", params).to_pandas()
    for addr, port, ts in zip(rows["dst_addr"], rows["dst_port"], rows["ts"]):
        if _skip_addr(_norm(str(addr)), dns_servers) or (0 if pd.isna(port) else port) == 53:
            continue
        first = ts if first is None or ts < first else first
    return None if first is None else pd.Timestamp(first)


def _baseline_domains(baseline: Any | None) -> set[str] | None:
    """The registered domains (the name itself without one) the baseline's clients asked."""
    if baseline is None:
        return None
    names = client_rows(baseline).where("qname IS NOT NULL").frame(
        "DISTINCT CAST(qname AS VARCHAR) AS qname")
    return {registered_domain(q) or q for q in names["qname"].astype(str)}


def _new_domain_connect(hit: pd.DataFrame, ident: dict, who: str, first_asked: dict,
                        start: pd.Timestamp | None, known: set[str] | None, th: Thresholds,
                        cluster_domain: str) -> list[Finding]:
    delay = (hit["ts"] - hit["answer_ts"]).dt.total_seconds()
    cand = hit[delay <= th.new_domain_window_s]
    names = cand["qname"].astype(str)
    uniq = pd.unique(names)
    rd_of = {q: (None if is_internal(q, cluster_domain) else registered_domain(q) or q)
             for q in uniq}
    cand = cand.assign(_rd=names.map(rd_of))
    cand = cand[cand["_rd"].notna()].drop_duplicates("_rd")  # first connect per domain
    out: list[Finding] = []
    seen: set[str] = set()
    for _, r in cand.iterrows():
        qname = str(r["qname"])
        rd = str(r["_rd"])
        first = first_asked.get(rd)
        if first is None:
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
        d = (r["ts"] - r["answer_ts"]).total_seconds()
        out.append(Finding(
            kind="new_domain_connect",
            severity=severity,
            explanation=(
                f"{who} resolved {qname} ({rd}: {why}) and connected to {r['_ip']}:"
                f"{clean(r.get('dst_port'))} {d * 1000:.0f} ms later. A workload's first "
                "contact with a new domain is how command-and-control traffic starts; check "
                "the domain and the process."
            ),
            domain=qname,
            registered_domain=rd,
            metrics={"delay_ms": round(d * 1000, 3),
                     "first_asked": clean(first),
                     "in_baseline": False if known is not None else None},
            evidence=[{
                "ts": clean(r["ts"]),
                "query": f"{qname} {clean(r.get('qtype')) or ''}".strip(),
                "answer": str(r["ip"]),
                "connect": f"{r['_ip']}:{clean(r.get('dst_port'))}",
                "delay_ms": round(d * 1000, 3),
            }],
            **ident,
        ))
    return out
