"""The Markdown report (for tickets): every wire string escaped, pipes too."""

from __future__ import annotations

import json
from typing import Any

from analyze.findings._common import SEVERITIES, Finding, json_safe
from analyze.report._text import md
from analyze.report.whatif import whatif_markdown


def _cell(v: Any) -> str:
    v = json_safe(v)
    if isinstance(v, (dict, list)):
        v = json.dumps(v, ensure_ascii=False)
    elif isinstance(v, float):
        v = f"{v:.6g}"
    return md("" if v is None else v)


def _table(keys: list[str], rows: list[dict[str, Any]]) -> list[str]:
    out = ["| " + " | ".join(md(k) for k in keys) + " |",
           "|" + "---|" * len(keys)]
    out.extend("| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in rows)
    return out


def render_markdown(findings: list[Finding], summary: dict[str, Any],
                    meta: dict[str, Any], *, whatif: dict[str, Any] | None = None) -> str:
    s = summary
    lines = ["# dnstrail report", ""]
    comp = s.get("completeness") or {}
    if comp and not comp.get("complete"):
        lines += [("> **Incomplete evidence:** absence of evidence here is not evidence of "
                  "absence."), ">"]
        lines += [f"> - {md(p)}" for p in comp.get("problems", [])]
        lines += [""]
    if s.get("lost_total"):
        lost = ", ".join(f"{k}: {v}" for k, v in s["lost"].items() if v)
        lines += [(f"> **Events were lost during the capture ({s['lost_total']}: {md(lost)}). "
                   "The capture is incomplete.**"), ""]
    if s.get("filters"):
        shown = ", ".join(f"{k}={v}" for k, v in s["filters"].items())
        lines += [(f"> **Filtered report ({md(shown)}): only what matches, not the node's "
                  "whole DNS.**"), ""]
    sev = s["findings_by_severity"]
    lines += ["## Summary", "",
              "Findings: " + ", ".join(f"**{x}** {int(sev.get(x, 0))}"
                                       for x in reversed(SEVERITIES)), ""]
    rows = [
        ("capture span", f"{s.get('start')} .. {s.get('end')} ({s.get('duration_s')} s)"),
        ("nodes", ", ".join(s.get("nodes") or [])),
        ("messages", s.get("messages")),
        ("transactions", s.get("transactions")),
        ("answered / timeouts", f"{s.get('answered')} / {s.get('timeouts')}"),
        ("NXDOMAIN / SERVFAIL", f"{s.get('nxdomain')} / {s.get('servfail')}"),
        ("lookups", s.get("lookups")),
        ("connects", s.get("connects")),
        ("decode errors", s.get("decode_errors")),
        ("lost events", s.get("lost") or "none"),
    ]
    lines += _table(["", "value"], [{"": k, "value": v} for k, v in rows]) + [""]
    lines += ["## Findings", ""]
    if not findings:
        lines += ["No findings.", ""]
    for i, f in enumerate(findings, 1):
        title = f"{i}. [{f.severity}] {f.kind}: {f.workload}" + \
            (f" — {f.domain}" if f.domain else "")
        lines += [f"### {md(title)}", "", md(f.explanation), ""]
        ident = {k: getattr(f, k) for k in ("namespace", "pod", "container", "comm", "pid",
                                           "client", "domain", "registered_domain")
                 if getattr(f, k) is not None}
        if ident:
            lines += _table(list(ident), [ident]) + [""]
        if f.metrics:
            metrics = {k: v for k, v in f.metrics.items() if k != "delays_s"}
            lines += ["Metrics: " + "; ".join(f"{md(k)} = {_cell(v)}"
                                              for k, v in metrics.items()), ""]
        if f.evidence:
            keys: list[str] = []
            for row in f.evidence:
                keys.extend(k for k in row if k not in keys)
            lines += _table(keys, f.evidence) + [""]
    lines += whatif_markdown(whatif)
    lines += [(f"_dnstrail {md(meta.get('dnstrail_version'))}, generated "
               f"{md(meta.get('generated_at'))}_"), ""]
    return "\n".join(lines)
