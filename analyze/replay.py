"""The replay timeline: a capture shown in time order, as a tracer would have printed it live.

Three granularities: one row per transaction (default: a query with its response, or a timeout),
per message (``messages=True``) or per lookup (``lookups=True``). Two output forms: a table that
fits ``width`` columns, every string from the wire or from a process sanitized of control
characters and escape sequences; and JSON Lines with every column at full fidelity.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from itertools import islice
from typing import Any

import numpy as np
import pandas as pd

from analyze.capture import Capture
from analyze.decode import record_text

_CTRL = re.compile(r"[\x00-\x1f\x7f]")
ELLIPSIS = "…"
#: Tables at least this wide get a PROC column (process[pid], /thread when it differs) beside
#: WHO.
PROC_WIDTH = 110


def sanitize(value: Any) -> str:
    """Printable ASCII only: control characters become ``\\xNN``, other non-ASCII ``\\uNNNN``.

    Terminal escape sequences, bidi overrides and zero-width characters from a hostile name or
    comm are shown, not executed.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    text = str(value).encode("ascii", "backslashreplace").decode("ascii")
    return _CTRL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, with an ellipsis when it was longer."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    return text[: width - 1] + ELLIPSIS if width > 1 else ELLIPSIS


def _who(row: Any) -> str:
    pod = getattr(row, "pod", None)
    if isinstance(pod, str) and pod:
        ns = getattr(row, "namespace", None)
        return f"{ns}/{pod}" if isinstance(ns, str) and ns else pod
    cid = getattr(row, "container_id", None)
    if isinstance(cid, str) and cid:
        return f"ctr:{cid[:12]}"
    name = _process_name(row)
    tgid = getattr(row, "tgid", None)
    if isinstance(name, str) or _present(tgid):
        return f"{name if isinstance(name, str) else '?'}[{_int(tgid)}]"
    for attr in ("client_addr", "src_addr"):
        client = getattr(row, attr, None)
        if isinstance(client, str):
            return client
    return "?"


def _process_name(row: Any) -> str | None:
    """The process's name (the thread-group leader's), else the thread's."""
    for attr in ("process", "comm"):
        value = getattr(row, attr, None)
        if isinstance(value, str):
            return value
    return None


def _present(v: Any) -> bool:
    return v is not None and v is not pd.NA and not (isinstance(v, float) and math.isnan(v))


def _int(v: Any) -> str:
    return str(int(v)) if _present(v) else "?"


def _answers_text(ips: Any, answers: Any) -> str:
    if isinstance(ips, (list, tuple, np.ndarray)) and len(ips):
        return ",".join(str(x) for x in ips)
    if isinstance(answers, (list, tuple, np.ndarray)) and len(answers):
        return ",".join(record_text(rr) for rr in answers)
    return ""


def _time(ts: Any, with_date: bool = False) -> str:
    if not _present(ts) or ts is pd.NaT:
        return "-"
    t = pd.Timestamp(ts)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return t.strftime("%Y-%m-%d %H:%M:%S.%f" if with_date else "%H:%M:%S.%f")[:-3]


def _ms(latency_s: Any) -> str:
    if not _present(latency_s):
        return "-"
    ms = float(latency_s) * 1000.0
    return f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def _times(n: int, what: str, plural: str | None = None) -> str:
    return f"{n} {what if n == 1 else plural or what + 's'}"


def rows(capture: Capture, *, lookups: bool = False, messages: bool = False
         ) -> pd.DataFrame:
    """The table the timeline shows, in time order (full columns, for jsonl)."""
    if lookups:
        table = capture.lookups
    elif messages:
        table = capture.messages
    else:
        table = capture.transactions
    if table.empty:
        return table
    return table.sort_values("ts", kind="stable")


_HEAD_TXN = ("TIME", "WHO", "QUERY", "TYPE", "RCODE", "MS", "ANSWER")


def _txn_cells(r: Any, with_date: bool = False) -> tuple[str, ...]:
    status = getattr(r, "status", None)
    if status == "timeout":
        rcode = "TIMEOUT"
    elif status == "unsolicited":
        rcode = f"!{r.rcode_name}" if isinstance(r.rcode_name, str) else "!UNSOL"
    else:
        rcode = r.rcode_name if isinstance(r.rcode_name, str) else "-"
    retr = getattr(r, "retransmissions", 0)
    # a timeout has no latency: RCODE says TIMEOUT, MS how many times it was sent again
    retries = _times(int(retr), "retry", "retries") if _present(retr) and int(retr) else ""
    if status == "timeout":
        ms = retries or "none"
    else:
        ms = f"{_ms(r.latency_s)}, {retries}" if retries else _ms(r.latency_s)
    return (_time(r.ts, with_date), _who(r), r.qname, r.qtype, rcode, ms,
            _answers_text(r.answer_ips, r.answers))


def _msg_cells(r: Any, with_date: bool = False) -> tuple[str, ...]:
    role = getattr(r, "role", None)
    arrow = {"client_query": "->", "client_response": "<-", "server_query": "=>",
             "server_response": "<=", "query": "->", "response": "<-"}.get(str(role), "??")
    is_resp = role in ("client_response", "server_response", "response")
    rcode = (r.rcode_name if isinstance(r.rcode_name, str) else "-") if is_resp else arrow
    if isinstance(getattr(r, "error", None), str):
        rcode = "ERR"
    return (_time(r.ts, with_date), _who(r), r.qname, r.qtype, rcode,
            _int(r.dns_id) if _present(r.dns_id) else "-",
            _answers_text(r.answer_ips, r.answers) if is_resp else
            (sanitize(r.error) if isinstance(getattr(r, "error", None), str) else ""))


_HEAD_MSG = ("TIME", "WHO", "QUERY", "TYPE", "DIR", "ID", "ANSWER")


def _lookup_cells(r: Any, with_date: bool = False) -> tuple[str, ...]:
    name = r.final_name if isinstance(r.final_name, str) else r.base_name
    extra = [_times(int(r.n_queries), "query", "queries")]
    if int(r.n_nxdomain):
        extra.append(f"{int(r.n_nxdomain)} NXDOMAIN")
    if int(r.n_timeouts):
        extra.append(f"{int(r.n_timeouts)} timed out")
    latency = (pd.Timestamp(r.end_ts) - pd.Timestamp(r.ts)).total_seconds() \
        if _present(r.end_ts) else None
    return (_time(r.ts, with_date), _who(r), name, "+".join(str(q) for q in r.qtypes),
            r.rcode_name, ", ".join([_ms(latency), *extra]),
            ",".join(str(x) for x in r.answer_ips) if len(r.answer_ips) else "")


_HEAD_LOOKUP = ("TIME", "WHO", "NAME", "TYPES", "RESULT", "MS, QUERIES", "ANSWER")

#: Rows whose cells size the columns (the rest are cut to those widths).
SAMPLE_ROWS = 2000
#: Narrowest a shrinking column gets, by header (the time, type and rcode columns are never
#: shrunk).
_MIN_WIDTH = {"WHO": 13, "PROC": 10, "QUERY": 15, "NAME": 15, "ANSWER": 12, "DETAIL": 16,
              "MS": 8, "MS, QUERIES": 12, "ID": 5}


def terminal_width() -> int:
    """The terminal's width (``COLUMNS`` first, as ``shutil.get_terminal_size`` reads it),
    80 when there is no terminal."""
    import shutil

    return shutil.get_terminal_size((80, 24)).columns


def column_widths(head: Sequence[str], sample: Sequence[Sequence[str]], width: int,
                  flexible: Sequence[int]) -> list[int]:
    """Widths for columns holding ``sample`` (sanitized cells): each its natural width when
    they fit ``width`` (0: no limit), else the ``flexible`` columns cut to one common ceiling
    (water-filling: the short ones keep their width), none below its minimum, the last
    column given what the others leave."""
    natural = [len(h) for h in head]
    for row in sample:
        for i, c in enumerate(row):
            natural[i] = max(natural[i], len(c))
    spaces = len(head) - 1
    if width <= 0 or sum(natural) + spaces <= width:
        return natural
    flex = [i for i in flexible if i < len(head)]
    mins = {i: min(natural[i], _MIN_WIDTH.get(head[i], 8)) for i in flex}
    room = width - spaces - sum(w for i, w in enumerate(natural) if i not in mins)
    last = len(head) - 1

    def used(level: int) -> int:
        return sum(max(mins[i], min(natural[i], level)) for i in flex)

    lo, hi = 0, max((natural[i] for i in flex), default=0)
    while lo < hi:  # the highest ceiling whose columns fit the room
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if used(mid) <= room else (lo, mid - 1)
    widths = list(natural)
    for i in flex:
        widths[i] = max(mins[i], min(natural[i], lo))
    spare = room - used(lo)
    for i in flex:  # what the ceiling left over goes to the columns it cut, left first
        if spare > 0 and i != last and widths[i] < natural[i]:
            add = min(spare, natural[i] - widths[i])
            widths[i] += add
            spare -= add
    if last in mins and spare > 0:  # the last column runs to the line's end
        widths[last] += spare
    return widths


def fit_table(head: Sequence[str], rows: Iterable[Sequence[Any]], *, width: int,
              flexible: Sequence[int], last_free: bool = True,
              header: bool = True) -> Iterator[str]:
    """Lines of a table of ``rows``, every cell sanitized, none longer than ``width`` (0: no
    limit). The first SAMPLE_ROWS rows size the columns; later rows are cut to them."""
    it = iter(rows)
    sample = [[sanitize(c) for c in row] for row in islice(it, SAMPLE_ROWS)]
    widths = column_widths(head, sample, width, flexible)

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, (c, w) in enumerate(zip(cells, widths)):
            text = fit(c, w)
            parts.append(text if (last_free and i == len(widths) - 1) else text.ljust(w))
        out = " ".join(parts)
        return (out[:width] if width > 0 else out).rstrip()

    if header:
        yield line(list(head))
    for cells in sample:
        yield line(cells)
    for row in it:
        yield line([sanitize(c) for c in row])


def format_table(table: pd.DataFrame, *, kind: str = "transactions", width: int = 80,
                 header: bool = True) -> Iterator[str]:
    """Lines of the timeline table, none longer than ``width`` (at least 40; 0: no limit).

    The columns take the width their cells need; when that is too wide, WHO, PROC, QUERY, MS
    and ANSWER are cut (with an ellipsis) to share what the fixed columns leave. Times are UTC:
    with the date in the TIME header when the rows are all of one day, else on every row.
    """
    width = 0 if int(width) <= 0 else max(int(width), 40)
    head, cells_of = {"transactions": (_HEAD_TXN, _txn_cells),
                      "messages": (_HEAD_MSG, _msg_cells),
                      "lookups": (_HEAD_LOOKUP, _lookup_cells)}[kind]
    proc = width == 0 or width >= PROC_WIDTH
    days = set()
    if not table.empty and "ts" in table.columns:
        ts = pd.to_datetime(table["ts"], utc=True).dropna()
        if len(ts):
            days = {ts.min().date(), ts.max().date()}
    with_date = len(days) > 1
    time_head = "TIME UTC" if with_date or not days else f"{min(days).isoformat()} UTC"
    columns: tuple[str, ...] = (time_head, *head[1:])
    if proc:
        columns = (*columns[:2], "PROC", *columns[2:])

    def cells(r: Any) -> tuple[str, ...]:
        c = cells_of(r, with_date)
        return (*c[:2], _proc(r), *c[2:]) if proc else c

    flexible = (1, 2, 3, 6, 7) if proc else (1, 2, 5, 6)
    yield from fit_table(columns, (cells(r) for r in table.itertuples(index=False)),
                         width=width, flexible=flexible, header=header)


def _proc(row: Any) -> str:
    """``process[pid]``, and ``/thread`` when the thread has a name of its own
    (``dig[4242]/isc-net-0000``)."""
    name = _process_name(row)
    tgid = getattr(row, "tgid", None)
    if not isinstance(name, str) and not _present(tgid):
        return ""
    text = f"{name if isinstance(name, str) else '?'}[{_int(tgid)}]"
    comm = getattr(row, "comm", None)
    return f"{text}/{comm}" if isinstance(comm, str) and comm != name else text


def _json_value(v: Any) -> Any:
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, (pd.Timestamp, datetime)):
        return pd.Timestamp(v).isoformat()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, np.ndarray):
        return [_json_value(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def format_jsonl(table: pd.DataFrame) -> Iterator[str]:
    """One JSON object per row with every column (payload bytes as hex), full fidelity."""
    columns = list(table.columns)
    for values in table.itertuples(index=False, name=None):
        obj = {c: _json_value(v) for c, v in zip(columns, values)}
        yield json.dumps(obj, ensure_ascii=True, default=str)


def replay(capture: Capture, *, format: str = "table", lookups: bool = False,
           messages: bool = False, width: int | None = None) -> Iterator[str]:
    """Lines of the timeline of ``capture`` (already filtered), table or jsonl; the table
    fits ``width`` columns (None: the terminal's, ``terminal_width``; 0: no limit)."""
    if width is None:
        width = terminal_width()
    table = rows(capture, lookups=lookups, messages=messages)
    kind = "lookups" if lookups else "messages" if messages else "transactions"
    if format == "jsonl":
        yield from format_jsonl(table)
    else:
        yield from format_table(table, kind=kind, width=width)


__all__ = ["column_widths", "fit", "fit_table", "format_jsonl", "format_table", "replay", "rows",
           "sanitize", "terminal_width"]
