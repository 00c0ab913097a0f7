"""How complete the evidence behind an analysis is, in sentences every output shows first.

``completeness(capture)`` gathers, for every capture read: how it ended (a recorder that died
leaves ``running``), files that were damaged and skipped, listed but missing or not listed,
lost events with what each cause means, the filters the recorder ran with (a filtered
capture is not the node's whole DNS) and whether the files were checked against their
SHA-256. The report puts it in ``summary.completeness`` (JSON), in the first lines (Markdown)
and in a banner (HTML); ``replay`` prints it on stderr; ``report --fail-on incomplete`` exits
4 when it is not complete.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Exit status of ``report --fail-on incomplete`` when the evidence is incomplete.
EXIT_INCOMPLETE = 4

#: Recorder filters that narrow what was recorded (docs/format.md, manifest ``filters``).
_NARROWING = ("pids", "comms", "cgroups", "pods")


def _recorded_filters(manifest: Mapping[str, Any]) -> list[str]:
    f = manifest.get("filters")
    if not isinstance(f, Mapping):
        return []
    out = []
    for key in _NARROWING:
        values = f.get(key)
        if isinstance(values, list) and values:
            shown = ", ".join(str(v) for v in values[:3]) + (
                f" and {len(values) - 3} more" if len(values) > 3 else "")
            out.append(f"{key} {shown}")
    ports = f.get("ports")
    if isinstance(ports, list) and ports and 53 not in ports:  # more ports is not less DNS
        out.append("ports " + ", ".join(str(p) for p in ports) + " only")
    return out


def completeness(capture: Any) -> dict[str, Any]:
    """``{"complete": bool, "verified": bool, "problems": [sentence, ...]}`` for a Capture
    (anything with ``manifests``, ``skipped_files``, ``warnings`` and ``verified``)."""
    from analyze.verify import capture_end, explain_losses

    problems: list[str] = []
    # an input given twice, or a copy inside a later capture, was read once: said first
    problems.extend(str(n) for n in getattr(capture, "input_notes", None) or [])
    for m in getattr(capture, "manifests", None) or []:
        where = str(m.get("path") or m.get("host") or "capture")
        end = capture_end(m)
        if not end.normal:
            problems.append(f"{where}: {end.text}")
        for loss in explain_losses(m.get("lost")):
            problems.append(f"{where}: {loss.count} events lost ({loss.cause}): {loss.meaning}")
        narrowed = _recorded_filters(m)
        if narrowed:
            problems.append(f"{where}: recorded with filters ({'; '.join(narrowed)}): not "
                            "the node's whole DNS")
    for s in getattr(capture, "skipped_files", None) or []:
        problems.append(f"{s.get('path')}: damaged and left out ({s.get('reason')})")
    for w in getattr(capture, "warnings", None) or []:
        if "missing" in w or "not listed" in w or "snapshot newer" in w:
            problems.append(str(w))
    verified = bool(getattr(capture, "verified", False))
    if not verified:
        problems.append("the files were not checked against their SHA-256 (--no-verify)")
    shown = [_printable(p) for p in problems[:50]]
    return {"complete": not problems, "verified": verified, "problems": shown,
            "problems_total": len(problems)}


def _printable(text: str, limit: int = 400) -> str:
    """A manifest's strings are the recorder's, or whoever edited the file: no control
    character reaches a terminal, and no sentence runs on without end."""
    out = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(text))
    return out if len(out) <= limit else out[:limit - 1] + "…"


__all__ = ["EXIT_INCOMPLETE", "completeness"]
