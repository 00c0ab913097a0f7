"""The Markdown report (for tickets): every wire string escaped, pipes too."""

from __future__ import annotations

from typing import Any

from analyze.findings._common import Finding, json_safe
from analyze.report import _human as hu
from analyze.report._text import md
from analyze.report.summary import summary_rows, top_rows
from analyze.report.whatif import whatif_markdown


def _cell(v: Any, key: str = "", day: str | None = None) -> str:
    return md(hu.value(json_safe(v), key=key, day=day))


def _table(keys: list[str], rows: list[dict[str, Any]], day: str | None = None) -> list[str]:
    out = ["| " + " | ".join(md(hu.label(k)) for k in keys) + " |",
           "|" + "---|" * len(keys)]
    out.extend("| " + " | ".join(_cell(r.get(k), k, day) for k in keys) + " |" for r in rows)
    return out


def _grid(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(md(k) for k in head) + " |", "|" + "---|" * len(head)]
    out.extend("| " + " | ".join(md(c) for c in r) + " |" for r in rows)
    return out


def render_markdown(findings: list[Finding], summary: dict[str, Any],
                    meta: dict[str, Any], *, whatif: dict[str, Any] | None = None) -> str:
    s = summary
    day = hu.one_day(s.get("start"), s.get("end"))
    lines = ["# dnstrail report", ""]
    comp = s.get("completeness") or {}
    if comp and not comp.get("complete"):
        lines += [("> **Incomplete evidence:** absence of evidence here is not evidence of "
                  "absence."), ">"]
        lines += [f"> - {md(p)}" for p in comp.get("problems", [])]
        lines += [""]
    if s.get("lost_total"):
        lines += [f"> **{md(hu.lost(s.get('lost') or {}))} The capture is incomplete.**", ""]
    if s.get("filters"):
        shown = ", ".join(f"{k}={v}" for k, v in s["filters"].items())
        lines += [(f"> **Filtered report ({md(shown)}): only what matches, not the node's "
                  "whole DNS.**"), ""]
    lines += ["## Summary", ""]
    lines += _grid(["", "value"], [[k, v] for k, v in summary_rows(s)]) + [""]
    if s.get("warnings"):
        lines += ["Load warnings:", ""] + [f"- {md(w)}" for w in s["warnings"]] + [""]
    for title, (head, rows) in top_rows(s).items():
        if rows:
            lines += [f"### {md(title)}", ""] + _grid(head, rows) + [""]
    lines += ["## Findings", ""]
    if not findings:
        lines += ["No findings.", ""]
    elif day is not None:
        lines += [f"Times are UTC, on {md(day)}.", ""]
    for i, f in enumerate(findings, 1):
        title = f"{i}. [{f.severity}] {f.kind}: {f.workload}" + \
            (f" — {f.domain}" if f.domain else "")
        lines += [f"### {md(title)}", "", md(f.explanation), ""]
        ident = {k: getattr(f, k) for k in ("namespace", "pod", "container", "comm", "pid",
                                           "client", "domain", "registered_domain")
                 if getattr(f, k) is not None}
        if ident:
            lines += _table(list(ident), [ident]) + [""]
        metrics = {k: v for k, v in f.metrics.items()
                   if k != "delays_s" and v is not None and not hu.is_table(v)}
        if metrics:
            lines += ["Metrics: " + "; ".join(f"{md(hu.label(k))} {_cell(v, k)}"
                                              for k, v in metrics.items()), ""]
        for k, v in f.metrics.items():
            if hu.is_table(v):
                cols: list[str] = []
                for r in v.values():
                    cols.extend(c for c in r if c not in cols)
                lines += [f"{md(hu.label(k))} ({len(v)}):", ""]
                lines += _grid(["name", *(hu.label(c) for c in cols)], [[str(n), *(hu.value(r.get(c), key=c)
                                                            for c in cols)]
                                                 for n, r in v.items()]) + [""]
        if f.evidence:
            keys: list[str] = []
            for row in f.evidence:
                keys.extend(k for k in row if k not in keys)
            lines += _table(keys, f.evidence, day) + [""]
    lines += whatif_markdown(whatif)
    lines += [(f"_dnstrail {md(meta.get('dnstrail_version'))}, generated "
               f"{md(meta.get('generated_at'))}_"), ""]
    return "\n".join(lines)
