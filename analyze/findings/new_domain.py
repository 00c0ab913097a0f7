"""new_domain: domains a workload resolves that its baseline never saw (or the allow file lacks).

Workloads are compared by name, not by instance: ``namespace/pod`` with the replica suffix
removed (``web-5d8f7c9b4-x2x7q`` -> ``web``, ``db-0`` -> ``db``), ``host/<comm>`` for host
processes, ``addr/<client address>`` for pcaps. Domains are compared by ICANN registered domain.

Allow file (``--allow FILE``): one rule per line, ``WORKLOAD-GLOB DOMAIN-GLOB``, ``#`` starts a
comment. WORKLOAD-GLOB matches ``namespace/pod`` (the pod's own name, replica suffix kept),
``host/<comm>`` or ``addr/<client>``; DOMAIN-GLOB matches the query name, and ``*.example.com``
also matches ``example.com`` itself. Example::

    shop/web-*        *.stripe.com
    */*               *.amazonaws.com
    host/chronyd      *.pool.ntp.org
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any

import pandas as pd

from analyze.errors import AnalyzeError
from analyze.findings._common import Finding, group_identity, txn_evidence
from analyze.findings._names import is_internal, registered_domain
from analyze.findings._sql import Rows, client_rows

_REPLICA = re.compile(r"-(?:[0-9a-f]{6,10}-[0-9a-z]{5}|[0-9a-z]{5}|\d+)$")


class AllowFileError(AnalyzeError):
    """the allow file could not be read: each line is `WORKLOAD-GLOB DOMAIN-GLOB`"""


def workload_name(row: Any) -> str:
    """The stable name of who asked (replica suffix removed)."""
    pod = row.get("pod")
    if isinstance(pod, str) and pod:
        return f"{row.get('namespace') or '-'}/{_REPLICA.sub('', pod)}"
    comm = row.get("comm")
    if isinstance(comm, str) and comm:
        return f"host/{comm}"
    return f"addr/{row.get('client_addr')}"


def instance_name(row: Any) -> str:
    pod = row.get("pod")
    if isinstance(pod, str) and pod:
        return f"{row.get('namespace') or '-'}/{pod}"
    comm = row.get("comm")
    if isinstance(comm, str) and comm:
        return f"host/{comm}"
    return f"addr/{row.get('client_addr')}"


def read_allow(path: str | Path) -> list[tuple[str, str]]:
    """Parse an allow file into (workload glob, domain glob) rules."""
    rules: list[tuple[str, str]] = []
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeError) as exc:
        raise AllowFileError(f"{path}: cannot read allow file: {exc}") from None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise AllowFileError(
                f"{path}:{n}: expected `WORKLOAD-GLOB DOMAIN-GLOB`, got {line!r}"
            )
        rules.append((parts[0], parts[1].lower().rstrip(".")))
    return rules


def allowed(rules: list[tuple[str, str]], workload: str, qname: str) -> bool:
    for wglob, dglob in rules:
        if not fnmatch.fnmatchcase(workload, wglob):
            continue
        if fnmatch.fnmatchcase(qname, dglob):
            return True
        if dglob.startswith("*.") and qname == dglob[2:]:
            return True
    return False


#: The columns that name who asked (a workload, an instance and a Finding's identity).
_WHO = ("pod", "namespace", "comm", "client_addr", "container", "tgid")
_KEY = f"hash({', '.join(_WHO)}, qname)"


def _asked(capture: Any) -> pd.DataFrame:
    """One row per (who, name) of the client queries: count, first time, first position."""
    rows = client_rows(capture).where("qname IS NOT NULL")
    ranked = Rows(capture, f"SELECT *, row_number() OVER (ORDER BY ts, txn_id) AS _pos "
                  f"FROM ({rows.sql})", rows.params)
    return ranked.frame(f"{', '.join(_WHO)}, CAST(qname AS VARCHAR) AS qname, "
                        f"{_KEY} AS _key, count(*) AS _n, min(ts) AS _first, "
                        "min(_pos) AS _pos", "GROUP BY ALL ORDER BY _pos")


def _names(df: pd.DataFrame, fn: Any) -> list[str]:
    """``fn(row)`` per row, computed once per distinct (pod, namespace, comm, client)."""
    memo: dict[tuple[Any, ...], str] = {}
    out = []
    for pod, ns, comm, addr in zip(df["pod"], df["namespace"], df["comm"], df["client_addr"]):
        k = (pod, ns, comm, addr)
        if k not in memo:
            memo[k] = fn({"pod": pod, "namespace": ns, "comm": comm, "client_addr": addr})
        out.append(memo[k])
    return out


def _baseline_known(baseline: Any) -> tuple[dict[str, set[str]], set[str]]:
    """Per workload name, the registered domains the baseline saw it ask; and all of them."""
    known: dict[str, set[str]] = {}
    anyone: set[str] = set()
    bt = _asked(baseline)
    for wl, q in zip(_names(bt, workload_name), bt["qname"]):
        rd = registered_domain(str(q)) or str(q)
        known.setdefault(wl, set()).add(rd)
        anyone.add(rd)
    return known, anyone


def detect(capture: Any, baseline: Any | None = None, allow: str | Path | None = None,
           cluster_domain: str = "cluster.local", scope: Any | None = None,
           **_: Any) -> list[Finding]:
    """``scope``: an ``analyze.findings.partition.Scope`` that computes the baseline's
    domains once for every part of a partitioned capture."""
    if baseline is None and allow is None:
        return []
    rules = read_allow(allow) if allow is not None else None
    tx = _asked(capture)
    if tx.empty:
        return []
    tx = tx[pd.Series([not is_internal(str(q), cluster_domain) for q in tx["qname"]],
                      index=tx.index, dtype=bool)].copy()
    if tx.empty:
        return []
    tx["_workload"] = _names(tx, workload_name)
    tx["_instance"] = _names(tx, instance_name)
    tx["_rd"] = [registered_domain(str(q)) or str(q) for q in tx["qname"]]
    known: dict[str, set[str]] | None = None
    anyone: set[str] = set()
    if baseline is not None:
        known, anyone = (scope.memo("new_domain.baseline", lambda: _baseline_known(baseline))
                         if scope is not None else _baseline_known(baseline))
    rows = client_rows(capture).where("qname IS NOT NULL")
    out: list[Finding] = []
    keys: list[int] = []
    groups: list[int] = []
    for (wl, rd), g in tx.groupby(["_workload", "_rd"], sort=False):
        if known is not None and rd in known.get(str(wl), set()):
            continue
        if rules is not None:
            g = g[pd.Series([not allowed(rules, i, str(q))
                             for i, q in zip(g["_instance"], g["qname"])],
                            index=g.index, dtype=bool)]
            if g.empty:
                continue
        reasons = []
        if known is not None:
            reasons.append("never asked by this workload in the baseline"
                           + ("" if rd in anyone else " (nor by any other workload)"))
        if rules is not None:
            reasons.append("not allowed by the allow file")
        severity = "medium" if (known is not None and rd not in anyone) else "low"
        # the names most asked first, ties in the order first asked (value_counts' order)
        names = g.groupby("qname", sort=False)["_n"].sum().sort_values(
            ascending=False, kind="stable")
        n = int(g["_n"].sum())
        ident = group_identity(g)
        keys.extend(int(k) for k in g["_key"])
        groups.extend([len(out)] * len(g))
        out.append(Finding(
            kind="new_domain",
            severity=severity,
            explanation=(
                f"{wl} resolved {rd} ({', '.join(names.index[:3])}) {n} times: "
                + " and ".join(reasons)
                + ". A workload that starts resolving a domain it never used may be "
                "compromised or newly deployed; confirm the change."
            ),
            domain=str(names.index[0]),
            registered_domain=str(rd),
            metrics={"queries": n, "names": {str(k): int(v) for k, v in names.head(10).items()},
                     "workload": str(wl), "first_seen": g["_first"].min()},
            **ident,
        ))
    # every finding's evidence in one query: a (who, name) belongs to one finding only
    if out:
        spreads = rows.grouped(_KEY, keys, groups, key_type="UBIGINT").spreads("ts, txn_id")
        for i, f in enumerate(out):
            f.evidence = txn_evidence(spreads.get(i, pd.DataFrame()))
    return out

