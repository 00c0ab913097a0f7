"""Escaping of attacker-controlled text for HTML, Markdown and plot labels."""

from __future__ import annotations

import html
import re
from typing import Any

from analyze.findings._common import escape_bytes


def visible(value: Any) -> str:
    """Text with control characters, raw bytes and lone surrogates made visible as \\xNN."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return escape_bytes(bytes(value))
    text = value if isinstance(value, str) else str(value)
    out = []
    for ch in text:
        o = ord(ch)
        if o < 0x20 or 0x7F <= o < 0xA0:
            out.append(f"\\x{o:02x}")
        elif 0xD800 <= o <= 0xDFFF:  # surrogateescape'd raw byte
            out.append(f"\\x{o & 0xFF:02x}")
        elif o in (0x2028, 0x2029, 0xFEFF) or 0x202A <= o <= 0x202E or 0x2066 <= o <= 0x2069:
            out.append(f"\\u{o:04x}")  # line separators, BOM, bidi overrides
        else:
            out.append(ch)
    return "".join(out)


def h(value: Any) -> str:
    """HTML-escape any value for element text or a quoted attribute."""
    return html.escape(visible(value), quote=True)


_MD_SPECIAL = set("\\`*_[]|~")
_MD_LINE_START = re.compile(r"^(\s*)(?:([-+#=])|(\d+)([.)]))")


def md(value: Any) -> str:
    """Escape a value for Markdown inline text and table cells: no formatting, links, HTML.

    Backslash, backtick, emphasis, brackets, pipes and tildes are backslash-escaped; ``<`` and
    ``&`` become entities (so no HTML tag or entity survives); a leading list, heading or
    quote marker is escaped; control characters were already made visible.
    """
    out = []
    for ch in visible(value):
        if ch in _MD_SPECIAL:
            out.append("\\" + ch)
        elif ch == "<":
            out.append("&lt;")
        elif ch == ">":
            out.append("&gt;")
        elif ch == "&":
            out.append("&amp;")
        else:
            out.append(ch)
    text = "".join(out)
    return _MD_LINE_START.sub(_escape_marker, text, count=1)


def _escape_marker(m: re.Match[str]) -> str:
    if m.group(2):
        return m.group(1) + "\\" + m.group(2)
    return m.group(1) + m.group(3) + "\\" + m.group(4)


def plot_label(value: Any, limit: int = 48) -> str:
    """A short, visible label for a plot; ``$`` is escaped so no mathtext is ever parsed."""
    text = visible(value)
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("$", "\\$")
