"""Reports of a capture's findings: self-contained HTML with plots, Markdown, versioned JSON.

``render(capture, findings, format, path)`` writes the report to ``path`` (and returns the
text), or returns the text when ``path`` is None. ``format`` is ``html``, ``md`` or ``json``;
when None it comes from the path's suffix (``.html``/``.htm``, ``.md``/``.markdown``,
``.json``), else Markdown.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from analyze.errors import AnalyzeError
from analyze.findings._common import Finding
from analyze.report.summary import SCHEMA_VERSION, summarize

FORMATS = ("html", "md", "json")
_SUFFIXES = {".html": "html", ".htm": "html", ".md": "md", ".markdown": "md", ".json": "json"}


class UnknownFormat(AnalyzeError):
    """unknown report format: use html, md or json (or an output path ending in .html, .md or .json)"""


def format_for(path: str | Path | None, format: str | None = None) -> str:
    """The report format: the given one, else from the path suffix, else md."""
    if format is not None:
        f = format.lower().lstrip(".")
        f = {"markdown": "md", "htm": "html"}.get(f, f)
        if f not in FORMATS:
            raise UnknownFormat(f"unknown report format {format!r}: use html, md or json")
        return f
    if path is not None:
        suffix = Path(path).suffix.lower()
        if suffix in _SUFFIXES:
            return _SUFFIXES[suffix]
        raise UnknownFormat(f"{path}: cannot tell the report format from the suffix "
                            f"{suffix or '(none)'}: use .html, .md or .json, or --format")
    return "md"


def report_dict(capture: Any, findings: list[Finding]) -> dict[str, Any]:
    """The JSON report as Python values (schema: analyze.report.schema.REPORT_SCHEMA)."""
    from dnstrail import __version__

    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": datetime.now(UTC).isoformat(),
        "dnstrail_version": __version__,
        "summary": summarize(capture, findings),
        "findings": [f.to_dict() for f in findings],
        "whatif": _whatif(capture),
    }


def _whatif(capture: Any) -> dict[str, Any] | None:
    """The what-if section (analyze.whatif), for a Capture; None for anything else."""
    if not hasattr(capture, "table_sql"):
        return None
    from analyze.whatif import whatif

    return whatif(capture)


def render(capture: Any, findings: list[Finding], format: str | None = None,
           path: str | Path | None = None, *, plots: bool = True) -> str:
    """Render the report; write it to ``path`` when given. Returns the text."""
    fmt = format_for(path, format)
    doc = report_dict(capture, findings)
    meta = {k: doc[k] for k in ("schema_version", "generated_at", "dnstrail_version")}
    meta["plots"] = plots
    if fmt == "json":
        text = json.dumps(doc, indent=2, ensure_ascii=True, allow_nan=False) + "\n"
    elif fmt == "md":
        from analyze.report.markdown import render_markdown

        text = render_markdown(findings, doc["summary"], meta, whatif=doc["whatif"])
    else:
        from analyze.report.html import render_html

        text = render_html(capture, findings, doc["summary"], meta, whatif=doc["whatif"])
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


__all__ = ["FORMATS", "SCHEMA_VERSION", "UnknownFormat", "format_for", "render", "report_dict"]
