"""Numbers, times and durations as a person reads them (the HTML and Markdown reports; the JSON
keeps the exact values): thousands separators, ms and s, UTC times without nanoseconds, counts
by kind as sentences."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pandas as pd


def count(n: Any) -> str:
    """``12,345``; a float with at most 4 significant digits (``0.1013``, ``1,234.5``)."""
    if n is None:
        return ""
    if isinstance(n, bool):
        return "yes" if n else "no"
    if isinstance(n, int):
        return f"{n:,}"
    if isinstance(n, float):
        if not math.isfinite(n):
            return str(n)
        if n == int(n) and abs(n) < 1e15:
            return f"{int(n):,}"
        if abs(n) >= 1000:
            return f"{n:,.1f}"
        return f"{n:.4g}"
    return str(n)


def duration(seconds: Any) -> str:
    """``850 µs``, ``6.6 ms``, ``12.1 s``, ``3 min 5 s``, ``2 h 10 min``."""
    if seconds is None:
        return ""
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        return str(seconds)
    if not math.isfinite(s):
        return str(seconds)
    a = abs(s)
    if a == 0:
        return "0 s"
    if a < 0.001:
        return f"{s * 1e6:.3g} µs"
    if a < 1:
        return f"{s * 1000:.3g} ms"
    if a < 60:
        if s == int(s):
            return f"{int(s)} s"
        return f"{s:.3g} s" if a < 10 else f"{s:.1f} s"
    if a < 3600:
        m, rest = divmod(round(a), 60)
        return f"{'-' if s < 0 else ''}{m} min {rest} s"
    h, rest = divmod(round(a / 60), 60)
    return f"{'-' if s < 0 else ''}{h:,} h {rest} min"


def timestamp(value: Any) -> pd.Timestamp | None:
    if value is None or value == "":
        return None
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError):
        return None
    if ts is pd.NaT or pd.isna(ts):
        return None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def when(value: Any, *, day: str | None = None, digits: int = 3) -> str:
    """A UTC time: ``2026-11-26 16:00:25.191 UTC``; with ``day`` (the report's one day,
    ``2026-11-26``) only the time of day of that day (``16:00:25.191``). ``digits``:
    decimals of the second (3: ms, 6: µs). Text that is not a time is kept as is."""
    ts = timestamp(value)
    if ts is None:
        return "" if value is None else str(value)
    frac = f"{ts.microsecond:06d}"[:digits]
    clock = ts.strftime("%H:%M:%S") + (f".{frac}" if digits else "")
    d = ts.strftime("%Y-%m-%d")
    return clock if day is not None and d == day else f"{d} {clock} UTC"


def one_day(start: Any, end: Any) -> str | None:
    """The UTC day of a report whose times all fall on it, else None."""
    a, b = timestamp(start), timestamp(end)
    if a is None or b is None:
        return None
    d = a.strftime("%Y-%m-%d")
    return d if b.strftime("%Y-%m-%d") == d else None


def span(start: Any, end: Any, seconds: Any) -> str:
    """``2026-11-26 16:00:25.191 to 16:00:37.259 UTC (12.1 s)``."""
    a, b = timestamp(start), timestamp(end)
    if a is None or b is None:
        return "no messages"
    day = one_day(a, b)
    first = when(a)
    if day is not None:
        first = first[:-4]  # the date once, the zone at the end
        last = when(b, day=day) + " UTC"
    else:
        last = when(b)
    return f"{first} to {last} ({duration(seconds)})"


def by_kind(counts: Mapping[str, Any], noun: str = "") -> str:
    """``2 ndots_amplification, 1 cache_miss and 1 tunneling`` (largest first), or ``none``."""
    items = sorted(((str(k), int(v)) for k, v in counts.items() if v),
                   key=lambda kv: (-kv[1], kv[0]))
    if not items:
        return "none"
    parts = [f"{count(v)} {k}" for k, v in items]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{text}{noun}"


def severities(counts: Mapping[str, Any], order: tuple[str, ...]) -> str:
    """``7 findings: 2 high, 3 medium and 2 info`` or ``no findings``."""
    total = sum(int(v) for v in counts.values())
    if not total:
        return "No findings."
    parts = [f"{count(int(counts.get(s, 0)))} {s}" for s in order if counts.get(s)]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{count(total)} finding{'s' if total != 1 else ''}: {text}."


def lost(lost: Mapping[str, Any]) -> str:
    """``3 events lost: 3 untracked_socket_io.`` or ``No events lost.``"""
    total = sum(int(v) for v in lost.values() if isinstance(v, (int, float)))
    if not total:
        return "No events lost."
    return (f"{count(total)} event{'s' if total != 1 else ''} lost: "
            f"{by_kind({k: v for k, v in lost.items() if isinstance(v, (int, float))})}.")


#: Keys whose numbers are identifiers, not quantities: no thousands separators.
_IDS = frozenset({"pid", "tgid", "tid", "uid", "netns", "port", "fd", "msg_index", "ppid"})


#: Keys whose text values are times (ISO, as the findings store them).
_TIMES = frozenset({"ts", "first_asked", "first_seen", "last_seen"})


def _is_time(key: str) -> bool:
    return key in _TIMES or key.endswith("_ts")


def value(v: Any, *, key: str = "", day: str | None = None) -> str:
    """A metric or evidence value as text: times of day, durations by their key's unit
    (``_s``, ``_ms``), counts with separators, lists and flat dicts inline."""
    if v is None:
        return ""
    if isinstance(v, (datetime, pd.Timestamp)) or (_is_time(key) and isinstance(v, str)):
        return when(v, day=day, digits=6)
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if key in _IDS or key.endswith(("_id", "port")):
            return str(int(v)) if float(v) == int(v) else str(v)
        if key.endswith("_ms"):
            return duration(float(v) / 1000.0)
        if key.endswith("_s") or key == "span_s":
            return duration(v)
        return count(v)
    if isinstance(v, Mapping):
        if not v:
            return "none"
        return ", ".join(f"{k}: {value(x, key=str(k))}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(value(x) for x in v) if v else "none"
    return str(v)


def label(key: str) -> str:
    """A column or metric name as a heading: ``median_interval_s`` -> ``median interval`` (the
    value says its unit), ``ts`` -> ``time (UTC)``."""
    if key == "ts":
        return "time (UTC)"
    for unit in ("_ms", "_s"):
        if key.endswith(unit) and len(key) > len(unit):
            key = key[: -len(unit)]
            break
    return key.replace("_", " ")


def is_table(v: Any) -> bool:
    """A metric that reads best as a table: a mapping of names to mappings."""
    return isinstance(v, Mapping) and bool(v) and all(isinstance(x, Mapping)
                                                     for x in v.values())


__all__ = ["by_kind", "count", "duration", "is_table", "label", "lost", "one_day", "severities", "span",
           "timestamp", "value", "when"]
