"""The report's summary: what was captured, how much, what was lost, findings by severity."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd

from analyze.completeness import completeness
from analyze.findings._common import SEVERITIES, Finding, json_safe, present, table

#: Version of the JSON report layout (docs/report.md). Bump on incompatible changes.
SCHEMA_VERSION = 1

#: Rows of the top talkers and top names tables.
TOP = 10

#: Who asked, as the report labels a client: namespace/pod, else the program, else the address.
WHO_SQL = ("CASE WHEN coalesce(CAST(pod AS VARCHAR), '') <> '' THEN "
           "CASE WHEN namespace IS NOT NULL THEN CAST(namespace AS VARCHAR) || '/' "
           "|| CAST(pod AS VARCHAR) ELSE CAST(pod AS VARCHAR) END "
           "WHEN coalesce(CAST(comm AS VARCHAR), '') <> '' THEN CAST(comm AS VARCHAR) "
           "ELSE coalesce(client_addr, '?') END")


def top_tables(capture: Any, limit: int = TOP) -> dict[str, list[dict[str, Any]]]:
    """The busiest clients and the most asked names, from the client transactions (two
    aggregate queries in the engine; empty for an object without SQL tables)."""
    if not callable(getattr(capture, "table_sql", None)):
        return {"top_clients": [], "top_names": []}
    from analyze.findings._sql import client_rows

    rows = client_rows(capture)
    clients = rows.arrow(
        f"{WHO_SQL} AS client, count(*) AS queries, "
        "count(*) FILTER (WHERE rcode_name = 'NXDOMAIN') AS nxdomain, "
        "count(*) FILTER (WHERE status = 'timeout') AS timeouts, "
        "count(DISTINCT qname) AS names, "
        "round(quantile_cont(latency_s, 0.5) * 1000, 3) AS median_latency_ms",
        f"GROUP BY 1 ORDER BY queries DESC, client LIMIT {int(limit)}").to_pylist()
    names = rows.where("qname IS NOT NULL").arrow(
        f"lower(qname) AS name, count(*) AS queries, count(DISTINCT {WHO_SQL}) AS clients, "
        "count(*) FILTER (WHERE rcode_name = 'NXDOMAIN') AS nxdomain, "
        "count(*) FILTER (WHERE status = 'timeout') AS timeouts, "
        "list(DISTINCT qtype ORDER BY qtype) AS qtypes",
        f"GROUP BY 1 ORDER BY queries DESC, name LIMIT {int(limit)}").to_pylist()
    for n in names:
        n["qtypes"] = [str(q) for q in (n.get("qtypes") or []) if q is not None]
    return {"top_clients": clients, "top_names": names}


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
        **top_tables(capture),
    })


def summary_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The summary as (label, sentence) rows in human units: what the HTML and the Markdown
    reports both show."""
    from analyze.report import _human as hu

    caps = s.get("captures") or []
    rows = [
        ("capture span", hu.span(s.get("start"), s.get("end"), s.get("duration_s"))),
        ("nodes", ", ".join(s.get("nodes") or []) or "unknown"),
        ("captures", "; ".join(
            f"{c.get('path')} ({c.get('source') or '?'}, {c.get('status') or '?'}"
            + (f": {c.get('error')}" if c.get("error") else "") + ")" for c in caps) or "none"),
        ("messages", (f"{hu.count(s.get('messages', 0))} ("
                     f"{hu.count(s.get('decode_errors', 0))} did not decode, "
                     f"{hu.count(s.get('truncated_payloads', 0))} truncated by the snaplen)")),
        ("transactions", (f"{hu.count(s.get('transactions', 0))}: "
                         f"{hu.count(s.get('answered', 0))} answered, "
                         f"{hu.count(s.get('timeouts', 0))} timed out, "
                         f"{hu.count(s.get('unsolicited', 0))} answers without a query")),
        ("errors", (f"{hu.count(s.get('nxdomain', 0))} NXDOMAIN, "
                   f"{hu.count(s.get('servfail', 0))} SERVFAIL")),
        ("lookups", (f"{hu.count(s.get('lookups', 0))} resolver calls "
                    "(the queries of one getaddrinfo() together)")),
        ("connects / execs", (f"{hu.count(s.get('connects', 0))} connect() calls, "
                             f"{hu.count(s.get('execs', 0))} programs started")),
        ("pods", hu.count(s.get("pods", 0))),
        ("lost events", hu.lost(s.get("lost") or {})),
        ("findings", hu.severities(s.get("findings_by_severity") or {},
                                   tuple(reversed(SEVERITIES)))),
        ("findings by kind", hu.by_kind(s.get("findings_by_kind") or {})),
    ]
    if s.get("filters"):
        rows.append(("filters", ", ".join(f"{k} {v}" for k, v in s["filters"].items())))
    return rows


def top_rows(s: dict[str, Any]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """The top talkers and top names tables: (title, (header, rows of text))."""
    from analyze.report import _human as hu

    clients = (["client", "queries", "NXDOMAIN", "timeouts", "names", "median latency"],
               [[str(r.get("client")), hu.count(r.get("queries")), hu.count(r.get("nxdomain")),
                 hu.count(r.get("timeouts")), hu.count(r.get("names")),
                 hu.value(r.get("median_latency_ms"), key="median_latency_ms") or "-"]
                for r in s.get("top_clients") or []])
    names = (["name", "types", "queries", "clients", "NXDOMAIN", "timeouts"],
             [[str(r.get("name")), ", ".join(r.get("qtypes") or []), hu.count(r.get("queries")),
               hu.count(r.get("clients")), hu.count(r.get("nxdomain")),
               hu.count(r.get("timeouts"))]
              for r in s.get("top_names") or []])
    return {"Top talkers": clients, "Top names": names}
