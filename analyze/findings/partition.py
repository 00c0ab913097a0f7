"""Findings in bounded memory: the capture split into parts no detector group crosses.

Every detector but the nameserver one judges a group of rows that belongs to one client:
a pod, a process, a program (``host/<comm>``), a workload (a pod's name without its replica
suffix), a client address. ``plan`` finds the parts of a capture that no such group crosses:
the connected components of its identities (one identity: a distinct ``node, namespace,
pod, tgid, comm, client address`` of a transaction, lookup or connect), two identities being
connected when they share a pod, a workload name, a process (on a node, or its pid on any
node), a program outside pods or a client address. The components are packed into parts of
about ``target`` client transactions, and the detectors run on one part after another
(``Capture.restricted``): only one part's tables are in memory at a time, and every finding
is the one the whole capture gives. Facts that span clients (the nameservers asked, when a
registered domain was first asked, the capture's start, a baseline's domains) come from the
whole capture through ``Scope``, in SQL.

A capture with a connect that names neither a process nor an address (its connects join any
client's answers) is not split. A part is never smaller than one component: a single client
with most of the traffic keeps most of it in memory (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from analyze.findings._names import registered_domain
from analyze.findings._sql import CLIENT_SIDES, client_rows
from analyze.findings.new_domain import workload_name

#: Client transactions per part: ~1 KB of tables per transaction while the detectors run.
TARGET_ROWS = 250_000

#: The client address column of each partitioned table (connects carry none).
_ADDR = {"transactions": "client_addr", "lookups": "client_addr",
         "connects": "CAST(NULL AS VARCHAR)"}



def identity_sql(table: str) -> str:
    """The SQL hash of a row's identity (the one definition, for every partitioned table)."""
    return (f"hash(node, namespace, pod, CAST(tgid AS BIGINT), comm, {_ADDR[table]})")


class _Union:
    def __init__(self) -> None:
        self.up: dict[str, str] = {}

    def find(self, x: str) -> str:
        root = x
        while self.up.setdefault(root, root) != root:
            root = self.up[root]
        while self.up[x] != root:  # path compression
            self.up[x], x = root, self.up[x]
        return root

    def join(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.up[ra] = rb


def _links(node: Any, ns: Any, pod: Any, tgid: Any, comm: Any, addr: Any) -> list[str]:
    """The keys an identity shares with others that a detector may group it with."""
    node = node or ""
    out = ["W:" + workload_name({"pod": pod, "namespace": ns, "comm": comm,
                                 "client_addr": addr})]
    if pod is not None:
        out.append(f"P:{ns}/{pod}")
    if tgid is not None:
        out += [f"T:{node}:{tgid}", f"t:{tgid}"]
    elif addr is not None:
        out.append(f"A:{node}:{addr}")
    return out


def _identities(capture: Any, table: str) -> list[tuple[Any, ...]]:
    sql, params = capture.table_sql(table)
    addr = _ADDR[table]
    count = f"count(*) FILTER (WHERE {CLIENT_SIDES})" if table == "transactions" else "0"
    return capture.query_rows(f"SELECT {identity_sql(table)} AS h, node, namespace, pod, CAST(tgid AS BIGINT), "
        f"comm, {addr} AS addr, {count} AS n FROM ({sql}) GROUP BY ALL", params)


def plan(capture: Any, target: int = TARGET_ROWS) -> list[list[int]] | None:
    """The parts (each a list of identity hashes), or None when the capture is analyzed
    whole: it is small, it has a single component, or it cannot be split."""
    from analyze.capture import Capture

    if not isinstance(capture, Capture) or target <= 0:
        return None
    if capture.count("transactions") <= target:
        return None
    rows = _identities(capture, "transactions") + _identities(capture, "connects")
    if not capture.filters:  # filtered lookups are rebuilt from the part's transactions
        rows += _identities(capture, "lookups")
    uf = _Union()
    size: dict[int, int] = {}
    for h, node, ns, pod, tgid, comm, addr, n in rows:
        h = int(h)
        size[h] = size.get(h, 0) + int(n)
        if tgid is None and addr is None and pod is None and comm is None:
            return None  # a connect of nobody joins any answer: keep the capture whole
        for key in _links(node, ns, pod, tgid, comm, addr):
            uf.join(f"H:{h}", key)  # identities with one hash (a collision) share a part
    groups: dict[str, list[int]] = {}
    for h in size:
        groups.setdefault(uf.find(f"H:{h}"), []).append(h)
    if len(groups) < 2:
        return None
    comps = sorted(groups.values(), key=lambda hs: (-sum(size[h] for h in hs), min(hs)))
    parts: list[list[int]] = []
    load: list[int] = []
    for hs in comps:  # first fit, biggest components first
        n = sum(size[h] for h in hs)
        for i, used in enumerate(load):
            if used + n <= target:
                parts[i].extend(hs)
                load[i] += n
                break
        else:
            parts.append(list(hs))
            load.append(n)
    return [sorted(p) for p in parts] if len(parts) > 1 else None


def parts(capture: Any, target: int = TARGET_ROWS) -> Iterator[Any]:
    """The capture itself, or its parts one after another (each a restricted Capture)."""
    layout = plan(capture, target)
    if layout is None:
        yield capture
        return
    for hashes in layout:
        yield capture.restricted(hashes)


@dataclass
class Scope:
    """Facts of the whole capture that detectors running on one part need, in SQL."""

    capture: Any
    _memo: dict[str, Any] = field(default_factory=dict)

    def _client_sql(self) -> tuple[str, list[Any]]:
        rows = client_rows(self.capture)
        return rows.sql, rows.params

    def _once(self, name: str, make: Any) -> Any:
        if name not in self._memo:
            self._memo[name] = make()
        return self._memo[name]

    def dns_servers(self) -> set[str]:
        """Every nameserver address the capture's clients asked."""
        def make() -> set[str]:
            sql, params = self._client_sql()
            return {str(r[0]) for r in self.capture.query_rows(f"SELECT DISTINCT server_addr FROM ({sql}) WHERE server_addr IS NOT NULL",
                params)}
        return self._once("dns_servers", make)  # type: ignore[no-any-return]

    def first_asked(self) -> dict[str, pd.Timestamp]:
        """The earliest client query per registered domain (the name itself without one)."""
        def make() -> dict[str, pd.Timestamp]:
            sql, params = self._client_sql()
            t = self.capture.query(f"SELECT qname, min(ts) AS ts FROM ({sql}) WHERE qname IS NOT NULL "
                "GROUP BY qname", params).to_pandas()
            if t.empty:
                return {}
            rd = [registered_domain(q) or q for q in t["qname"].astype(str)]
            first = t.groupby(pd.Series(rd, index=t.index, dtype=object))["ts"].min()
            return {str(k): pd.Timestamp(v) for k, v in first.items()}
        return self._once("first_asked", make)  # type: ignore[no-any-return]

    def start_of_queries(self) -> pd.Timestamp | None:
        """The first client query of the capture."""
        def make() -> pd.Timestamp | None:
            sql, params = self._client_sql()
            first = self.capture.query(f"SELECT min(ts) AS ts FROM ({sql})", params).to_pandas()["ts"].iloc[0]
            return None if pd.isna(first) else pd.Timestamp(first)
        return self._once("start_of_queries", make)  # type: ignore[no-any-return]

    def memo(self, name: str, make: Any) -> Any:
        """A value computed once for every part (a baseline's domains, say)."""
        return self._once(name, make)
