"""The report's summary: what was captured, how much, what was lost, findings by severity."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd

from analyze.completeness import completeness
from analyze.findings._common import SEVERITIES, Finding, json_safe, present, table

#: Version of the JSON report layout (docs/report.md). Bump on incompatible changes.
SCHEMA_VERSION = 1


def _count(df: pd.DataFrame, column: str, value: Any) -> int:
    if df.empty or column not in df.columns:
        return 0
    return int((df[column] == value).fillna(False).sum())


def _overview(msgs: pd.DataFrame) -> dict[str, Any]:
    """What ``Capture.overview`` counts, from a messages frame (any object with tables)."""
    times = [t for t in (msgs["ts"].min(), msgs["ts"].max()) if present(t)] \
        if not msgs.empty and "ts" in msgs.columns else []
    return {
        "messages": len(msgs),
        "decode_errors": int(msgs["error"].notna().sum()) if "error" in msgs.columns else 0,
        "truncated": int(msgs["truncated"].fillna(False).astype(bool).sum())
        if "truncated" in msgs.columns else 0,
        "start": min(times) if times else None, "end": max(times) if times else None,
        "nodes": sorted({str(n) for n in msgs["node"].dropna().unique()})
        if "node" in msgs.columns else [],
    }


def summarize(capture: Any, findings: list[Finding]) -> dict[str, Any]:
    """Plain-value summary of a capture and its findings (JSON-safe)."""
    overview = getattr(capture, "overview", None)
    if callable(overview):  # a Capture: counted in the engine, the tables stay on disk
        ov = overview()
        counts = capture.transaction_counts()
        lookups = capture.count("lookups")
        n_connects, n_execs = capture.count("connects"), capture.count("execs")
    else:
        ov = _overview(table(capture, "messages"))
        tx = table(capture, "transactions")
        counts = {"transactions": len(tx), "answered": _count(tx, "status", "answered"),
                  "timeouts": _count(tx, "status", "timeout"),
                  "unsolicited": _count(tx, "status", "unsolicited"),
                  "nxdomain": _count(tx, "rcode_name", "NXDOMAIN"),
                  "servfail": _count(tx, "rcode_name", "SERVFAIL")}
        try:
            lookups = len(table(capture, "lookups"))
        except Exception:  # noqa: BLE001 - a broken lookups build must not hide the report
            lookups = 0
        n_connects = len(table(capture, "connects"))
        n_execs = len(table(capture, "execs"))
    manifests = list(getattr(capture, "manifests", None) or [])
    start, end = ov["start"], ov["end"]
    lost = dict(getattr(capture, "lost", None) or {})
    if not lost:
        for m in manifests:
            for cause, n in (m.get("lost") or {}).items():
                if isinstance(n, (int, float)):
                    lost[cause] = lost.get(cause, 0) + int(n)
    nodes = sorted(str(n) for n in ov["nodes"])
    if not nodes:
        nodes = sorted({str(m.get("host")) for m in manifests if m.get("host")})
    errors = int(ov["decode_errors"])
    truncated = int(ov["truncated"])
    n_messages = int(ov["messages"])
    sev = Counter(f.severity for f in findings)
    kinds = Counter(f.kind for f in findings)
    return json_safe({
        "captures": [
            {k: m.get(k) for k in ("path", "host", "source", "started_at", "stopped_at",
                                   "status", "error", "kernel", "dnstrail_version")}
            for m in manifests
        ],
        "start": start,
        "end": end,
        "duration_s": (end - start).total_seconds() if start is not None and end is not None
        else None,
        "nodes": nodes,
        "messages": n_messages,
        "decode_errors": errors,
        "truncated_payloads": truncated,
        **counts,
        "lookups": lookups,
        "connects": n_connects,
        "execs": n_execs,
        "pods": int(table(capture, "pods")["pod"].nunique())
        if "pod" in table(capture, "pods").columns else 0,
        "lost": lost,
        "lost_total": int(sum(lost.values())),
        "warnings": list(getattr(capture, "warnings", None) or [])[:50],
        "completeness": completeness(capture),
        "filters": {str(k): (v.isoformat() if isinstance(v, pd.Timestamp) else str(v))
                    for k, v in (getattr(capture, "filters", None) or {}).items()},
        "findings_by_severity": {s: int(sev.get(s, 0)) for s in reversed(SEVERITIES)},
        "findings_by_kind": dict(sorted(kinds.items())),
    })
