"""Run every detector over a capture."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from analyze.findings._common import SEVERITIES, Finding, severity_rank
from analyze.findings.partition import TARGET_ROWS, Scope, parts

#: Finding kinds and the module that raises each.
KINDS: dict[str, str] = {
    "tunneling": "tunneling",
    "cache_miss": "cache_miss",
    "ndots_amplification": "ndots",
    "unknown_service": "ndots",
    "dns_to_connect": "connects",
    "unresolved_connect": "connects",
    "new_domain_connect": "connects",
    "resolver_unreachable": "resolvers",
    "resolver_errors": "resolvers",
    "nxdomain_storm": "rates",
    "high_rate": "rates",
    "unknown_binary": "rates",
    "new_domain": "new_domain",
}

#: Detectors that group rows of many clients, run on the whole capture (in SQL).
WHOLE = frozenset({"resolvers"})


def find(
    capture: Any,
    *,
    baseline: Any | None = None,
    allow: str | Path | None = None,
    kinds: Iterable[str] | None = None,
    min_severity: str = "info",
    cluster_domain: str = "cluster.local",
    progress: Callable[[str], None] | None = None,
    partition_rows: int = TARGET_ROWS,
    settings: Any = None,
) -> list[Finding]:
    """Every finding in the capture, highest severity first.

    baseline: another Capture; with it (or ``allow``) the ``new_domain`` detector reports
    domains a workload resolves that the baseline never saw. allow: path of an allow file
    (docs/report.md). kinds: restrict to these finding kinds. min_severity: drop findings
    below this severity. progress: called with the name of each detector as it starts.
    partition_rows: client transactions per part of a big capture
    (``analyze.findings.partition``; 0: never split); the findings do not depend on it.
    settings: ``analyze.findings.settings.Settings`` (thresholds, extra known-service
    domains; docs/findings.md), or None for the defaults.
    """
    wanted = set(kinds) if kinds is not None else set(KINDS)
    unknown = wanted - set(KINDS)
    if unknown:
        raise ValueError(f"unknown finding kind(s): {', '.join(sorted(unknown))}")
    floor = severity_rank(min_severity)
    modules = list(dict.fromkeys(KINDS[k] for k in KINDS if k in wanted))
    findings: list[Finding] = []
    scope = Scope(capture)
    kw = {"baseline": baseline, "allow": allow, "cluster_domain": cluster_domain,
          "scope": scope, "settings": settings}
    # the nameserver detector groups every client's queries of one server: whole capture
    for name in [m for m in modules if m in WHOLE]:
        if progress is not None:
            progress(name)
        found = importlib.import_module(f"analyze.findings.{name}").detect(capture, **kw)
        findings.extend(f for f in found if f.kind in wanted)
    # the others judge one client's rows: one part of the capture at a time
    per_part = [m for m in modules if m not in WHOLE]
    said: set[str] = set()
    for part in parts(capture, partition_rows):
        # many small queries per part: each reads the part's rows copied once in the engine
        with part.materialized() as rows:
            for name in per_part:
                if progress is not None and name not in said:
                    progress(name)
                    said.add(name)
                found = importlib.import_module(f"analyze.findings.{name}").detect(rows,
                                                                                     **kw)
                findings.extend(f for f in found if f.kind in wanted)
            del rows  # its tables go before the next part's are read
    _combine(findings)
    findings = [f for f in findings if f.rank >= floor]
    findings.sort(key=lambda f: (-f.rank, f.kind, f.workload, f.domain or ""))
    return findings


#: Kinds that make a new-domain connect from the same workload more suspicious.
_CORROBORATING = ("tunneling", "nxdomain_storm", "unknown_binary")


def _who(f: Finding) -> tuple[Any, ...]:
    if f.pod:
        return ("pod", f.namespace, f.pod)
    if f.pid is not None:
        return ("pid", f.pid)
    return ("comm", f.comm) if f.comm else ("client", f.client)


def _combine(findings: list[Finding]) -> None:
    """Raise a new_domain_connect or a (public) unresolved_connect one step when the same
    workload has corroborating findings of at least medium severity (or, for a new domain,
    one about the same registered domain)."""
    others = [f for f in findings if f.kind in _CORROBORATING]
    for f in findings:
        if f.kind not in ("new_domain_connect", "unresolved_connect") or f.severity == "info":
            continue
        backing = [o for o in others if _who(o) == _who(f) and (
            o.rank >= severity_rank("medium") or
            (o.registered_domain is not None and o.registered_domain == f.registered_domain))]
        if not backing or f.severity == "high":
            continue
        f.severity = SEVERITIES[f.rank + 1]
        f.explanation += (" Raised to " + f.severity + ": the same workload also has "
                          + ", ".join(sorted({f"{o.kind} ({o.severity})" for o in backing}))
                          + ".")
        f.metrics["corroborated_by"] = sorted({o.kind for o in backing})
