"""nxdomain_storm, high_rate and unknown_binary: who asks too much, too randomly, from where.

* nxdomain_storm: per client, NXDOMAIN answers for names that were not search-list attempts;
  bursts (most in any 10 s window) and DGA-like names (random-looking second-level labels
  across many registered domains) raise the severity.
* high_rate: per process, more than 50 queries per second over a 10 s window.
* unknown_binary: queries from a process whose executable is deleted or unknown in the
  processes table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pandas as pd

from analyze.findings._common import Finding, col, shannon, spread, table, txn_evidence
from analyze.findings._names import is_internal, public_suffix, registered_domain
from analyze.findings._sql import Rows, client_key_sql, client_rows

#: Programs whose job is to send many queries (resolvers forwarding for the whole node).
RESOLVERS = frozenset({"coredns", "dnsmasq", "unbound", "named", "systemd-resolve",
                       "node-cache", "kube-dns", "pdns_recursor", "knotd", "dnsperf"})


@dataclass(frozen=True)
class Thresholds:
    window_s: float = 10.0
    nx_min: int = 10            #: NXDOMAINs before a client is judged
    nx_share: float = 0.5
    nx_burst: int = 20          #: NXDOMAINs in one window: medium
    dga_domains: int = 10       #: distinct random-looking registered domains: high
    rate_qps: float = 50.0


_VOWELS = set("aeiou")


def random_looking(label: str) -> bool:
    """A label that looks machine-generated: long, high entropy or digits mixed into letters."""
    if len(label) < 8:
        return False
    digits = sum(ch.isdigit() for ch in label)
    vowels = sum(ch in _VOWELS for ch in label)
    letters = sum(ch.isalpha() for ch in label)
    if letters and 0 < digits and digits / len(label) >= 0.2 and letters / len(label) >= 0.3:
        return True
    if letters >= 8 and vowels / letters < 0.2:
        return True
    return shannon(label) >= 3.6 and len(label) >= 12


def _sld(qname: str) -> str:
    rd = registered_domain(qname)
    ps = public_suffix(qname)
    if not rd or not ps or rd == ps:
        return qname.split(".")[0]
    return rd[: -len(ps) - 1]


def _window_max(ts: pd.Series, window_s: float) -> int:
    if ts.empty:
        return 0
    s = pd.Series(1, index=pd.DatetimeIndex(ts.sort_values(kind="stable")))
    return int(s.rolling(f"{int(window_s * 1000)}ms").sum().max())


def _search_txn_ids(capture: Any) -> set[int]:
    """Transactions that were search-list attempts of a lookup that later succeeded (of a
    filtered capture, whose lookups are rebuilt in memory)."""
    lk = table(capture, "lookups")
    if lk.empty or "txn_ids" not in lk.columns:
        return set()
    n_names = lk["names"].map(lambda v: len(v) if hasattr(v, "__len__") else 0)
    done = lk[(n_names >= 2) & lk["final_name"].notna()]
    ids = done["txn_ids"].explode().dropna()
    return {int(t) for t in ids}


def _not_search(capture: Any) -> tuple[str, list[Any]] | None:
    """SQL keeping the transactions that were not search-list attempts of a lookup that later
    succeeded, or None when the capture is filtered (``_search_txn_ids`` then)."""
    if capture.filters:
        return None
    sql, params = capture.table_sql("lookups")
    keep = ("txn_id NOT IN (SELECT t FROM (SELECT unnest(txn_ids) AS t FROM "
            f"({sql}) WHERE len(names) >= 2 AND final_name IS NOT NULL) WHERE t IS NOT NULL)")
    return keep, params


#: A query's position in time (ties in transaction order).
_POS = "row_number() OVER (ORDER BY ts, txn_id)"


def _top_names(rows: Rows, limit: int | None = None) -> pd.Series:
    """``qname.value_counts()`` of the rows in time order: most asked first, ties in the
    order first asked."""
    ranked = Rows(rows.capture, f"SELECT *, {_POS} AS _pos FROM ({rows.sql})", rows.params)
    t = ranked.frame("CAST(qname AS VARCHAR) AS qname, count(*) AS n",
                     "GROUP BY 1 ORDER BY n DESC, min(_pos)"
                     + (f" LIMIT {int(limit)}" if limit else ""))
    return pd.Series(t["n"].to_numpy(), index=t["qname"].fillna("nan").astype(str),
                     dtype="int64")


def _window_max_sql(rows: Rows, window_s: float) -> int:
    """``_window_max`` in the engine: the most rows in any window (t - window, t]."""
    ns = int(window_s * 1000) * 1_000_000 - 1
    t = rows.capture.query(
        f"SELECT max(c) AS m FROM (SELECT count(*) OVER (ORDER BY epoch_ns(ts) RANGE "
        f"BETWEEN {ns} PRECEDING AND CURRENT ROW) AS c FROM ({rows.sql}))", rows.params)
    return int(t.column(0)[0].as_py() or 0)


def detect(capture: Any, th: Thresholds | None = None, cluster_domain: str = "cluster.local",
           **_: Any) -> list[Finding]:
    th = th or Thresholds()
    rows = client_rows(capture)
    out: list[Finding] = []
    out.extend(_nxdomain(capture, rows, th, cluster_domain))
    out.extend(_rate(rows, th))  # a rate is a process's, even inside a pod
    out.extend(_unknown_binary(capture, rows))
    return out


def _nxdomain(capture: Any, rows: Rows, th: Thresholds,
              cluster_domain: str) -> list[Finding]:
    key = client_key_sql()
    clients = rows.frame(f"{key} AS _client, count(*) AS n",
                         "GROUP BY 1 ORDER BY min(ts), min(txn_id)")
    nx_rows = rows.where("rcode_name = 'NXDOMAIN'")
    keep = _not_search(capture)
    search: set[int] = set()
    if keep is not None:
        nx_rows = nx_rows.where(keep[0], *keep[1])
    else:
        search = _search_txn_ids(capture)
    slim = nx_rows.frame(f"{key} AS _client, txn_id, ts, CAST(qname AS VARCHAR) AS qname",
                         "ORDER BY ts, txn_id")
    if search:
        slim = slim[~slim["txn_id"].isin(search)]
    slim = slim[pd.Series([not is_internal(str(q), cluster_domain) for q in slim["qname"]],
                          index=slim.index, dtype=bool)]
    by_client = dict(tuple(slim.groupby("_client", sort=False)))
    out: list[Finding] = []
    for client, n_all in zip(clients["_client"], clients["n"]):
        nx = by_client.get(client)
        if nx is None or len(nx) < th.nx_min:
            continue
        share = len(nx) / int(n_all)
        if share < th.nx_share:
            continue
        names = nx["qname"].astype(str)
        rds = names.map(lambda q: registered_domain(q) or q)
        random_rds = {r for r, q in zip(rds, names) if random_looking(_sld(q))}
        burst = _window_max(nx["ts"], th.window_s)
        if len(random_rds) >= th.dga_domains and len(random_rds) >= 0.5 * rds.nunique():
            severity = "high"
        elif burst >= th.nx_burst:
            severity = "medium"
        else:
            severity = "low"
        ident = rows.where(f"{key} = ?", client).identity()
        who = ident["pod"] or ident["comm"] or ident["client"] or "a client"
        out.append(Finding(
            kind="nxdomain_storm",
            severity=severity,
            explanation=(
                f"{who} got {len(nx)} NXDOMAIN answers ({share:.0%} of its queries) for "
                f"{names.nunique()} names in {rds.nunique()} registered domains, up to {burst} "
                f"in {th.window_s:.0f} s"
                + (f"; {len(random_rds)} registered domains look machine-generated, the "
                   "pattern of malware trying domain-generation-algorithm names until one "
                   "answers" if severity == "high" else "")
                + ". Search-list attempts of lookups that succeeded are not counted."
            ),
            domain=str(names.value_counts().index[0]),
            registered_domain=None,
            metrics={
                "queries": int(n_all), "nxdomain": len(nx), "nxdomain_share": round(share, 3),
                "distinct_names": int(names.nunique()),
                "distinct_registered_domains": int(rds.nunique()),
                "random_looking_registered_domains": len(random_rds),
                "max_nxdomain_per_window": burst, "window_s": th.window_s,
            },
            evidence=txn_evidence(rows.by_ids(list(spread(nx)["txn_id"]))),
            **ident,
        ))
    return out


def _rate(rows: Rows, th: Thresholds) -> list[Finding]:
    key = client_key_sql(by="process")
    out: list[Finding] = []
    busy = rows.frame(f"{key} AS _client, count(*) AS n, min(ts) AS first, max(ts) AS last",
                      f"GROUP BY 1 HAVING count(*) >= {th.rate_qps * th.window_s} "
                      "ORDER BY min(ts), min(txn_id)")
    for client, n, first, last in zip(busy["_client"], busy["n"], busy["first"],
                                      busy["last"]):
        g = rows.where(f"{key} = ?", client)
        n = int(n)
        peak = _window_max_sql(g, th.window_s) / th.window_s
        if peak < th.rate_qps:
            continue
        span = max((last - first).total_seconds(), 1e-9)
        ident = g.identity()
        comm = str(ident["comm"] or "")
        is_resolver = comm in RESOLVERS
        severity = "low" if is_resolver else "medium"
        top = _top_names(g, 5)
        who = ident["pod"] or ident["comm"] or ident["client"] or "a client"
        out.append(Finding(
            kind="high_rate",
            severity=severity,
            explanation=(
                f"{who} sent up to {peak:.0f} queries/s over {th.window_s:.0f} s "
                f"({n} queries in {span:.1f} s; threshold {th.rate_qps:.0f}/s)"
                + (", expected of a resolver forwarding for others" if is_resolver else
                   ": a retry loop, a missing cache or a scan")
                + f". Most asked: {', '.join(top.index[:3])}."
            ),
            domain=str(top.index[0]) if len(top) else None,
            metrics={"queries": n, "span_s": round(span, 3),
                     "peak_qps": round(peak, 1), "mean_qps": round(n / span, 1),
                     "top_names": {str(k): int(v) for k, v in top.items()}},
            evidence=txn_evidence(g.spread("ts, txn_id", count=n)),
            **ident,
        ))
    return out


_DELETED = re.compile(r"\s\(deleted\)$")


def _binary_state(rows: pd.DataFrame) -> tuple[str, str | None]:
    """('deleted', exe), ('known', exe) or ('unknown', None) from a tgid's processes rows."""
    exes = [str(e) for e in col(rows, "exe").dropna()]
    deleted = [e for e in exes if _DELETED.search(e)]
    if deleted:
        return "deleted", deleted[0]
    if exes:
        return "known", exes[0]
    # started during the capture and known only from its exec event: execs.filename names it
    if set(col(rows, "source").dropna().astype(str)) <= {"exec"}:
        return "known", None
    return "unknown", None


def _unknown_binary(capture: Any, rows: Rows) -> list[Finding]:
    pr = table(capture, "processes")
    if pr.empty or "tgid" not in pr.columns:
        return []
    procs = dict(tuple(pr.groupby("tgid", sort=False)))
    states = {int(t): _binary_state(p) for t, p in procs.items() if pd.notna(t)}
    suspects = [t for t, (state, _exe) in states.items() if state != "known"]
    if not suspects:
        return []
    asked = rows.where("tgid IN (SELECT unnest(?::BIGINT[]))", suspects).frame(
        "CAST(tgid AS BIGINT) AS tgid, count(*) AS n", "GROUP BY 1 ORDER BY min(ts), min(txn_id)")
    out: list[Finding] = []
    for tgid, n in zip(asked["tgid"], asked["n"]):
        tgid, n = int(tgid), int(n)
        state, exe = states[tgid]
        deleted = state == "deleted"
        g = rows.where("tgid = ?", tgid)
        ident = g.identity()
        cmdlines = col(procs[tgid], "cmdline").dropna()
        cmdline = str(cmdlines.iloc[-1]) if len(cmdlines) else None
        out.append(Finding(
            kind="unknown_binary",
            severity="medium" if deleted else "low",
            explanation=(
                f"{ident['comm'] or 'process'}[{tgid}] sent {n} DNS queries "
                + (f"from a binary deleted after it started ({exe}): malware often deletes "
                   "itself after launch" if deleted else
                   "but its executable could not be read (it exited, or is a kernel or "
                   "foreign-namespace task)")
                + "."
            ),
            domain=str(_top_names(g, 1).index[0]),
            metrics={"queries": n, "exe": exe, "cmdline": cmdline},
            evidence=txn_evidence(g.spread("ts, txn_id", count=n)),
            **ident,
        ))
    return out
