"""The self-contained HTML report: inline CSS, plots as data: PNGs, every wire string escaped."""

from __future__ import annotations

from typing import Any

from analyze.findings._common import SEVERITIES, Finding, json_safe
from analyze.report import _human as hu
from analyze.report._text import h
from analyze.report.plots import all_plots
from analyze.report.summary import summary_rows, top_rows
from analyze.report.whatif import whatif_html

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;
color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0;font-size:.85em}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3}
td.wire{font-family:ui-monospace,Menlo,Consolas,monospace;overflow-wrap:anywhere;
white-space:pre-wrap}
td.short{white-space:nowrap}
.sev{display:inline-block;padding:1px 8px;border-radius:3px;color:#fff;font-weight:bold}
.high{background:#b00020}.medium{background:#d96c00}.low{background:#b59a00}.info{background:#607d8b}
.lost{background:#fde0e0;border:2px solid #b00020;padding:.5em;font-weight:bold}
.incomplete{background:#fff3cd;border:2px solid #b00020;padding:.5em}
.filtered{background:#e8f0fe;padding:.5em}
.finding{border:1px solid #ddd;border-radius:4px;padding:.6em;margin:.8em 0}
.explanation{margin:.4em 0}
details{margin:.3em 0}
img{width:100%;max-width:1056px;height:auto}
"""


def _kv_table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{h(k)}</th><td>{h(v if isinstance(v, str) else _fmt(v, k))}"
                   "</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _fmt(v: Any, key: str = "", day: str | None = None) -> str:
    return hu.value(json_safe(v), key=key, day=day)


#: Cells up to this long never wrap (times, addresses, counts); longer ones wrap anywhere.
_SHORT = 24


def _grid(head: list[str], rows: list[list[str]]) -> str:
    def cell(c: str) -> str:
        return f'<td class="wire{" short" if len(c) <= _SHORT else ""}">{h(c)}</td>'

    return ("<table><tr>" + "".join(f"<th>{h(k)}</th>" for k in head) + "</tr>"
            + "".join("<tr>" + "".join(cell(c) for c in r) + "</tr>" for r in rows)
            + "</table>")


def _evidence(ev: list[dict[str, Any]], day: str | None) -> str:
    if not ev:
        return ""
    keys: list[str] = []
    for row in ev:
        for k in row:
            if k not in keys:
                keys.append(k)
    return _grid([hu.label(k) for k in keys],
                 [[_fmt(row.get(k), k, day) for k in keys] for row in ev])


def _metric_tables(f: Finding) -> str:
    """Metrics that are tables (a cache_miss's names): shown, not folded away."""
    out = []
    for k, v in f.metrics.items():
        if hu.is_table(v):
            cols: list[str] = []
            for r in v.values():
                cols.extend(c for c in r if c not in cols)
            out.append(f"<p>{h(hu.label(k))} ({len(v)}):</p>"
                       + _grid(["name", *(hu.label(c) for c in cols)], [[str(n), *(_fmt(r.get(c), c) for c in cols)]
                                                 for n, r in v.items()]))
    return "".join(out)


def _finding(f: Finding, n: int, day: str | None) -> str:
    ident = [("kind", f.kind), ("workload", f.workload), ("namespace", f.namespace),
             ("pod", f.pod), ("container", f.container), ("comm", f.comm), ("pid", f.pid),
             ("client", f.client), ("domain", f.domain),
             ("registered domain", f.registered_domain)]
    ident = [(k, v) for k, v in ident if v is not None]
    metrics = [(hu.label(k), _fmt(v, k)) for k, v in f.metrics.items()
               if v is not None and not hu.is_table(v) and k != "delays_s"]
    return (
        f'<div class="finding" id="finding-{n}">'
        f'<h3><span class="sev {h(f.severity)}">{h(f.severity)}</span> {h(f.kind)}: '
        f"{h(f.workload)}{(' — ' + h(f.domain)) if f.domain else ''}</h3>"
        f'<p class="explanation">{h(f.explanation)}</p>'
        f"{_kv_table(ident)}"
        f"{_metric_tables(f)}"
        f"<details><summary>metrics</summary>{_kv_table(metrics)}</details>"
        f"<details open><summary>evidence ({len(f.evidence)} rows)</summary>"
        f"{_evidence(f.evidence, day)}</details></div>"
    )


def render_html(capture: Any, findings: list[Finding], summary: dict[str, Any],
                meta: dict[str, Any], *, whatif: dict[str, Any] | None = None) -> str:
    s = summary
    day = hu.one_day(s.get("start"), s.get("end"))
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        ("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
         "img-src data:; style-src 'unsafe-inline'\">"),
        (f"<title>dnstrail report {h(hu.when(s.get('start')))}</title><style>{_CSS}</style>"
        "</head><body>"),
        "<h1>dnstrail report</h1>",
    ]
    comp = s.get("completeness") or {}
    if comp and not comp.get("complete"):
        parts.append('<div class="incomplete"><strong>Incomplete evidence:</strong> absence '
                     "of evidence here is not evidence of absence.<ul>"
                     + "".join(f"<li>{h(p)}</li>" for p in comp.get("problems", []))
                     + "</ul></div>")
    if s.get("lost_total"):
        parts.append(f'<p class="lost">{h(hu.lost(s.get("lost") or {}))} The capture is '
                     "incomplete: absence of evidence is not evidence of absence.</p>")
    sev = s["findings_by_severity"]
    sev_html = " ".join(f'<span class="sev {x}">{x}: {int(sev.get(x, 0))}</span>'
                        for x in reversed(SEVERITIES))
    if s.get("filters"):
        shown = ", ".join(f"{k}={v}" for k, v in s["filters"].items())
        parts.append(f'<p class="filtered"><strong>Filtered report ({h(shown)}): only what '
                     "matches, not the node's whole DNS.</strong></p>")
    parts.append("<h2>Summary</h2>")
    parts.append(f"<p>{sev_html}</p>")
    parts.append(_kv_table(summary_rows(s)))
    if s.get("warnings"):
        parts.append("<p>Load warnings:</p><ul>"
                     + "".join(f"<li>{h(w)}</li>" for w in s["warnings"]) + "</ul>")
    for title, (head, rows) in top_rows(s).items():
        if rows:
            parts.append(f"<h3>{h(title)}</h3>" + _grid(head, rows))
    parts.append("<h2>Findings</h2>")
    if not findings:
        parts.append("<p>No findings.</p>")
    elif day is not None:
        parts.append(f"<p>Times are UTC, on {h(day)}.</p>")
    n = 0
    for sevname in reversed(SEVERITIES):
        group = [f for f in findings if f.severity == sevname]
        if group:
            parts.append(f"<h2>{h(sevname)} ({len(group)})</h2>")
            for f in group:
                n += 1
                parts.append(_finding(f, n, day))
    if whatif:
        parts.append(whatif_html(whatif))
    if meta.get("plots", True):
        parts.append("<h2>Plots</h2>")
        for title, png in all_plots(capture, findings):
            parts.append(f"<h3>{h(title)}</h3>")
            if png:
                parts.append(f'<img alt="{h(title)}" src="data:image/png;base64,{png}">')
            else:
                parts.append("<p>No data for this plot.</p>")
    parts.append(f"<p><small>dnstrail {h(meta.get('dnstrail_version'))}, report schema "
                 f"{h(meta.get('schema_version'))}, generated {h(meta.get('generated_at'))}"
                 "</small></p></body></html>")
    return "\n".join(parts)
