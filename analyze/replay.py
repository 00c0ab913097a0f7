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
from collections.abc import Iterator
from datetime import datetime
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


def _time(ts: Any) -> str:
    if not _present(ts) or ts is pd.NaT:
        return "-"
    return pd.Timestamp(ts).strftime("%H:%M:%S.%f")[:-3]


def _ms(latency_s: Any) -> str:
    if not _present(latency_s):
        return "-"
    ms = float(latency_s) * 1000.0
    return f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


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


def _txn_cells(r: Any) -> tuple[str, ...]:
    status = getattr(r, "status", None)
    if status == "timeout":
        rcode = "TIMEOUT"
    elif status == "unsolicited":
        rcode = f"!{r.rcode_name}" if isinstance(r.rcode_name, str) else "!UNSOL"
    else:
        rcode = r.rcode_name if isinstance(r.rcode_name, str) else "-"
    retr = getattr(r, "retransmissions", 0)
    ms = _ms(r.latency_s)
    if _present(retr) and int(retr) > 0:
        ms = f"{ms}+{int(retr)}r"
    return (_time(r.ts), _who(r), r.qname, r.qtype, rcode, ms,
            _answers_text(r.answer_ips, r.answers))


def _msg_cells(r: Any) -> tuple[str, ...]:
    role = getattr(r, "role", None)
    arrow = {"client_query": "->", "client_response": "<-", "server_query": "=>",
             "server_response": "<=", "query": "->", "response": "<-"}.get(str(role), "??")
    is_resp = role in ("client_response", "server_response", "response")
    rcode = (r.rcode_name if isinstance(r.rcode_name, str) else "-") if is_resp else arrow
    if isinstance(getattr(r, "error", None), str):
        rcode = "ERR"
    return (_time(r.ts), _who(r), r.qname, r.qtype, rcode,
            _int(r.dns_id) if _present(r.dns_id) else "-",
            _answers_text(r.answer_ips, r.answers) if is_resp else
            (sanitize(r.error) if isinstance(getattr(r, "error", None), str) else ""))


_HEAD_MSG = ("TIME", "WHO", "QUERY", "TYPE", "DIR", "ID", "ANSWER")


def _lookup_cells(r: Any) -> tuple[str, ...]:
    name = r.final_name if isinstance(r.final_name, str) else r.base_name
    extra = f"{int(r.n_queries)}q"
    if int(r.n_nxdomain):
        extra += f"/{int(r.n_nxdomain)}nx"
    if int(r.n_timeouts):
        extra += f"/{int(r.n_timeouts)}to"
    latency = (pd.Timestamp(r.end_ts) - pd.Timestamp(r.ts)).total_seconds() \
        if _present(r.end_ts) else None
    return (_time(r.ts), _who(r), name, "+".join(str(q) for q in r.qtypes), r.rcode_name,
            f"{_ms(latency)} {extra}",
            ",".join(str(x) for x in r.answer_ips) if len(r.answer_ips) else "")


_HEAD_LOOKUP = ("TIME", "WHO", "NAME", "TYPES", "RESULT", "MS QUERIES", "ANSWER")


def format_table(table: pd.DataFrame, *, kind: str = "transactions", width: int = 80,
                 header: bool = True) -> Iterator[str]:
    """Lines of the timeline table, none longer than ``width`` (at least 40)."""
    width = max(int(width), 40)
    head, cells_of = {"transactions": (_HEAD_TXN, _txn_cells),
                      "messages": (_HEAD_MSG, _msg_cells),
                      "lookups": (_HEAD_LOOKUP, _lookup_cells)}[kind]
    # fixed columns: time, who, type, rcode, ms; query and answer share the rest. From
    # PROC_WIDTH columns on, a PROC column (process[pid]/thread) follows WHO.
    lk = kind == "lookups"
    proc = width >= PROC_WIDTH
    who_w = 14 if width < 100 else 18 if width < 140 else 30
    fixed = [12, who_w, 6 if lk else 5, 8, 13 if lk else 7]
    proc_w = 18 if proc else 0
    spaces = len(head) - 1 + (1 if proc else 0)
    flexible = width - sum(fixed) - spaces - proc_w
    q_w = max(8, int(flexible * 0.62))
    a_w = max(0, flexible - q_w)
    widths = [fixed[0], fixed[1], q_w, fixed[2], fixed[3], fixed[4], a_w]
    if proc:
        widths.insert(2, proc_w)

    def line(cells: tuple[str, ...]) -> str:
        parts = []
        for i, (c, w) in enumerate(zip(cells, widths)):
            text = fit(sanitize(c), w)
            parts.append(text if i == len(widths) - 1 else text.ljust(w))
        return " ".join(parts).rstrip()[:width]

    def with_proc(cells: tuple[str, ...], r: Any) -> tuple[str, ...]:
        return (*cells[:2], _proc(r), *cells[2:]) if proc else cells

    if header:
        yield line((*head[:2], "PROC", *head[2:]) if proc else head)
    for r in table.itertuples(index=False):
        yield line(with_proc(cells_of(r), r))


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
           messages: bool = False, width: int = 80) -> Iterator[str]:
    """Lines of the timeline of ``capture`` (already filtered), table or jsonl."""
    table = rows(capture, lookups=lookups, messages=messages)
    kind = "lookups" if lookups else "messages" if messages else "transactions"
    if format == "jsonl":
        yield from format_jsonl(table)
    else:
        yield from format_table(table, kind=kind, width=width)


__all__ = ["fit", "format_jsonl", "format_table", "replay", "rows", "sanitize"]
