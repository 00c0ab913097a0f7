"""Replay a capture's questions against a resolver the user names, and diff the answers.

``against(capture, "10.96.0.10")`` asks the resolver at that address (and at no other: the
socket is connected to it, and a host name is refused, since finding it would take another
resolver) each distinct (qname, qtype) the capture's clients asked, in the order they were
first asked, at most ``max_queries`` messages at ``rate`` per second, one attempt each with a
``timeout_s`` wait (a truncated UDP answer is asked again over TCP, which counts as a query).
Each fresh answer is compared with what the capture saw for that question:

``same``             the same record set (one the capture saw, or their union), or the same
                     failure;
``changed``          records added or removed, or another failure (SERVFAIL -> NXDOMAIN);
``newly_answering``  the capture saw only failures (NXDOMAIN, SERVFAIL, timeouts, no data)
                     and the resolver now answers: a fix that works;
``now_failing``      the capture saw answers and the resolver now fails or has no data;
``hijacked``         the capture saw addresses the resolver does not give, at least one of
                     them private, loopback, link-local or otherwise not global, while the
                     resolver now gives only global ones: a poisoned, hijacked or blocked
                     answer on the node (or a split-horizon resolver).

Everything read from the wire (names, records) is attacker-controlled; this module only
compares it, the renderers escape it (``analyze.replay.sanitize``).
"""

from __future__ import annotations

import ipaddress
import secrets
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from analyze.decode import _TYPE_NAMES, decode_message
from analyze.errors import AnalyzeError

DEFAULT_PORT = 53
#: Queries per second unless ``rate`` says otherwise.
DEFAULT_RATE = 50.0
#: Messages sent at most unless ``max_queries`` says otherwise.
DEFAULT_MAX_QUERIES = 1000
#: Seconds to wait for each answer.
DEFAULT_QUERY_TIMEOUT_S = 2.0
#: ``max_queries`` and ``rate`` above these are refused unless ``exceed_ceiling`` is set.
QUERY_CEILING = 10_000
RATE_CEILING = 1000.0
#: Questions waiting for an answer at once.
MAX_IN_FLIGHT = 64
#: Distinct captured answer sets kept per question (round-robin pools rotate).
MAX_ANSWER_SETS = 32
#: Order of the statuses in the table and in ``AgainstResult.counts``.
STATUSES = ("hijacked", "now_failing", "changed", "newly_answering", "same")

_QTYPE_CODES = {name: code for code, name in _TYPE_NAMES.items()}


class AgainstError(AnalyzeError):
    """cannot replay the capture against that resolver"""


class BadTarget(AgainstError):
    """--against takes an IP address and an optional port (10.96.0.10, 10.96.0.10:5353, [fd00::a]:53): a host name would need another resolver to find it"""


class OverCeiling(AgainstError):
    """--max-queries above 10000 or --rate above 1000 per second is refused without --exceed-ceiling"""


@dataclass(frozen=True)
class Target:
    """The one resolver queries go to."""

    addr: str
    port: int = DEFAULT_PORT

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.addr else socket.AF_INET

    def __str__(self) -> str:
        return f"[{self.addr}]:{self.port}" if ":" in self.addr else f"{self.addr}:{self.port}"


def parse_target(text: str) -> Target:
    """``ADDR``, ``ADDR:PORT``, ``[V6]:PORT`` or a bare IPv6 address: an IP literal only."""
    text = text.strip()
    port = DEFAULT_PORT
    host = text
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise BadTarget(f"--against {text!r}: " + (BadTarget.__doc__ or ""))
        if rest:
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(p, text)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise BadTarget(f"--against {text!r}: " + (BadTarget.__doc__ or "")) from None
    if ip.is_multicast or ip.is_unspecified or str(ip) == "255.255.255.255":
        raise BadTarget(f"--against {text!r}: not a unicast address")
    return Target(str(ip), port)


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise BadTarget(f"--against {whole!r}: the port must be 1..65535")
    return int(text)


# --- what the capture saw ------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """One answer: ``rcode`` is an rcode name, ``TIMEOUT`` or ``ERROR``; ``answers`` the
    answer records as ``TYPE data`` (``analyze.decode.record_text``)."""

    rcode: str
    answers: frozenset[str] = frozenset()
    error: str | None = None

    @property
    def has_data(self) -> bool:
        return self.rcode == "NOERROR" and bool(self.answers)

    @property
    def kind(self) -> str:
        """``answer``, ``NODATA`` or the failure (rcode name, ``TIMEOUT``, ``ERROR``)."""
        if self.rcode == "NOERROR":
            return "answer" if self.answers else "NODATA"
        return self.rcode


@dataclass(frozen=True)
class Question:
    """A distinct question of the capture and what the capture saw for it."""

    qname: str
    qtype: str
    first_ts: Any
    transactions: int
    #: outcome of the last transaction (for a question that never got data)
    last: Outcome
    #: distinct answer sets of the NOERROR responses with data (at most MAX_ANSWER_SETS)
    answer_sets: tuple[frozenset[str], ...] = ()

    @property
    def answered(self) -> bool:
        return bool(self.answer_sets)

    @property
    def union(self) -> frozenset[str]:
        return frozenset().union(*self.answer_sets) if self.answer_sets else frozenset()


def questions(capture: Any, *, limit: int | None = None) -> tuple[list[Question], int]:
    """The capture's distinct (qname, qtype) asked by clients (or seen on the wire), first
    asked first, at most ``limit``; and how many there are in all."""
    sql, params = capture.table_sql("transactions")
    cap = "" if limit is None else f"LIMIT {int(limit)}"
    rows = capture.query_rows(f"""
        WITH t AS (
            SELECT qname, qtype, ts,
                   CASE WHEN status = 'timeout' THEN 'TIMEOUT' ELSE rcode_name END AS outcome,
                   list_sort(list_transform(answers, lambda x: x.type || ' ' || x.data)) AS recs
            FROM ({sql}) WHERE status IN ('answered', 'timeout')
              AND side IN ('client', 'wire') AND qname IS NOT NULL AND qtype IS NOT NULL)
        SELECT qname, qtype, min(ts) AS first_ts, count(*) AS n,
               arg_max(outcome, ts) AS last_outcome, arg_max(recs, ts) AS last_recs,
               (list(DISTINCT recs) FILTER (WHERE outcome = 'NOERROR' AND len(recs) > 0))
                   [1:{MAX_ANSWER_SETS}] AS sets,
               count(*) OVER () AS total
        FROM t GROUP BY qname, qtype ORDER BY first_ts, qname, qtype {cap}""", params)
    out = []
    total = 0
    for qname, qtype, first_ts, n, last_outcome, last_recs, sets, total in rows:
        last = Outcome(str(last_outcome or "ERROR"), frozenset(last_recs or ()))
        out.append(Question(str(qname), str(qtype), first_ts, int(n), last,
                            tuple(frozenset(s) for s in (sets or ()))))
    return out, int(total)


# --- asking the resolver -------------------------------------------------------------------

def question_wire(qname: str, qtype: str) -> bytes | None:
    """The question section (name, type, class IN) of a presentation name as the analyzer
    writes it (``\\DDD`` escapes), or None when it cannot be sent (label over 63 bytes,
    name over 255, unknown type)."""
    code = _QTYPE_CODES.get(qtype)
    if code is None and qtype.startswith("TYPE") and qtype[4:].isdigit():
        code = int(qtype[4:])
    if code is None or not 0 <= code < 65536:
        return None
    labels = _labels(qname)
    if labels is None:
        return None
    wire = b"".join(bytes([len(lb)]) + lb for lb in labels) + b"\x00"
    if len(wire) > 255:
        return None
    return wire + struct.pack("!HH", code, 1)


def _labels(name: str) -> list[bytes] | None:
    if name in (".", ""):
        return []
    labels: list[bytes] = []
    cur = bytearray()
    i = 0
    while i < len(name):
        ch = name[i]
        if ch == "\\":
            digits = name[i + 1:i + 4]
            if len(digits) == 3 and digits.isdigit() and int(digits) < 256:
                cur.append(int(digits))
                i += 4
                continue
            if i + 1 >= len(name) or ord(name[i + 1]) > 0x7E:
                return None
            cur.append(ord(name[i + 1]))
            i += 2
            continue
        if ch == ".":
            if not cur or len(cur) > 63:
                return None
            labels.append(bytes(cur))
            cur = bytearray()
        elif ord(ch) > 0x7E or ord(ch) < 0x21:
            return None
        else:
            cur.append(ord(ch))
        i += 1
    if cur:
        if len(cur) > 63:
            return None
        labels.append(bytes(cur))
    return labels


def _query(dns_id: int, qwire: bytes) -> bytes:
    return struct.pack("!HHHHHH", dns_id, 0x0100, 1, 0, 0, 0) + qwire  # RD, one question


def _outcome(payload: bytes, q: Question) -> tuple[Outcome | None, bool]:
    """The outcome of a response to ``q`` (None: not an answer to this question) and its TC."""
    d = decode_message(payload)
    if not d.get("qr") or d.get("qname") != q.qname or d.get("qtype") != q.qtype:
        return None, False
    answers = frozenset(f"{r[1]} {r[3]}" for r in (d.get("answers") or ()))
    return Outcome(str(d.get("rcode_name") or "ERROR"), answers, d.get("error")), bool(d.get("tc"))


@dataclass
class _Pending:
    index: int
    deadline: float
    sent_at: float


@dataclass
class Sent:
    """What asking the resolver gave: an outcome per question index, and the counts."""

    outcomes: dict[int, Outcome] = field(default_factory=dict)
    latency_s: dict[int, float] = field(default_factory=dict)
    sent: int = 0
    tcp: int = 0
    ignored: int = 0
    refused: int = 0


def ask(target: Target, qs: Sequence[Question], *, rate: float = DEFAULT_RATE,
        max_queries: int = DEFAULT_MAX_QUERIES, timeout_s: float = DEFAULT_QUERY_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic) -> Sent:
    """Send each question once to ``target`` (and nowhere else), ``rate`` per second at most
    (evenly spaced), ``max_queries`` messages at most, up to MAX_IN_FLIGHT waiting at once."""
    out = Sent()
    wires = [question_wire(q.qname, q.qtype) for q in qs]
    interval = 1.0 / rate
    sock = socket.socket(target.family, socket.SOCK_DGRAM)
    try:
        sock.connect((target.addr, target.port))  # replies from anyone else never reach us
        sock.setblocking(False)
        pending: dict[int, _Pending] = {}
        next_send = clock()
        i = 0
        while True:
            now = clock()
            for dns_id, p in list(pending.items()):
                if now >= p.deadline:
                    out.outcomes[p.index] = Outcome("TIMEOUT")
                    del pending[dns_id]
            while i < len(qs) and wires[i] is None:
                i += 1
            more = i < len(qs) and out.sent < max_queries
            if not more and not pending:
                break
            if more and len(pending) < MAX_IN_FLIGHT and now >= next_send:
                dns_id = secrets.randbelow(65536)
                while dns_id in pending:
                    dns_id = secrets.randbelow(65536)
                try:
                    _send(sock, _query(dns_id, wires[i] or b""), out)
                except OSError as exc:
                    out.outcomes[i] = Outcome("ERROR", error=exc.strerror or str(exc))
                else:
                    out.sent += 1
                    pending[dns_id] = _Pending(i, now + timeout_s, now)
                i += 1
                next_send = now + interval
                continue
            waits = [p.deadline for p in pending.values()]
            if more and len(pending) < MAX_IN_FLIGHT:
                waits.append(next_send)
            wait = max(0.0, min(waits) - now) if waits else 0.0
            ready, _, _ = select.select([sock], [], [], wait)
            if ready:
                next_send = _receive(sock, target, qs, wires, pending, out, max_queries,
                                     timeout_s, interval, next_send, clock)
    finally:
        sock.close()
    return out


def _send(sock: socket.socket, msg: bytes, out: Sent) -> None:
    """Send one datagram. A refused earlier datagram (ICMP port unreachable) is reported by
    the next send, which the kernel then does not transmit: count it and send once more."""
    try:
        sock.send(msg)
    except ConnectionRefusedError:
        out.refused += 1
        sock.send(msg)


def _receive(sock: socket.socket, target: Target, qs: Sequence[Question],
             wires: Sequence[bytes | None], pending: dict[int, _Pending], out: Sent,
             max_queries: int, timeout_s: float, interval: float, next_send: float,
             clock: Callable[[], float]) -> float:
    for _ in range(MAX_IN_FLIGHT * 4):  # drain what is there, boundedly
        try:
            data = sock.recv(65535)
        except BlockingIOError:
            break
        except ConnectionRefusedError:
            out.refused += 1
            continue
        if len(data) < 12:
            out.ignored += 1
            continue
        p = pending.get(struct.unpack_from("!H", data)[0])
        if p is None:
            out.ignored += 1  # late, duplicated or forged
            continue
        outcome, tc = _outcome(data, qs[p.index])
        if outcome is None:
            out.ignored += 1
            continue
        del pending[struct.unpack_from("!H", data)[0]]
        if tc and out.sent < max_queries:
            now = clock()
            while now < next_send:  # the TCP retry keeps the rate too
                time.sleep(next_send - now)
                now = clock()
            out.sent += 1
            out.tcp += 1
            outcome = _ask_tcp(target, wires[p.index] or b"", qs[p.index], timeout_s) or outcome
            next_send = clock() + interval
        out.outcomes[p.index] = outcome
        out.latency_s[p.index] = clock() - p.sent_at
    return next_send


def _ask_tcp(target: Target, qwire: bytes, q: Question, timeout_s: float) -> Outcome | None:
    dns_id = secrets.randbelow(65536)
    msg = _query(dns_id, qwire)
    try:
        with socket.create_connection((target.addr, target.port), timeout=timeout_s) as s:
            s.sendall(struct.pack("!H", len(msg)) + msg)
            head = _read_exact(s, 2)
            body = _read_exact(s, struct.unpack("!H", head)[0])
    except (OSError, ValueError) as exc:
        return Outcome("ERROR", error=f"TCP: {exc}")
    if len(body) < 2 or struct.unpack_from("!H", body)[0] != dns_id:
        return Outcome("ERROR", error="TCP: answer with another id")
    return _outcome(body, q)[0]


def _read_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ValueError("connection closed")
        buf += chunk
    return buf


# --- comparing -----------------------------------------------------------------------------

@dataclass
class Comparison:
    """One question: what the capture saw, what the resolver says now, and the verdict."""

    qname: str
    qtype: str
    status: str
    captured: str
    now: str
    captured_answers: list[str]
    now_answers: list[str]
    added: list[str]
    removed: list[str]
    reason: str
    captured_transactions: int
    latency_ms: float | None = None


def _addresses(records: frozenset[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    out = []
    for rec in records:
        kind, _, data = rec.partition(" ")
        if kind in ("A", "AAAA"):
            try:
                out.append(ipaddress.ip_address(data.strip()))
            except ValueError:
                continue
    return out


def compare(q: Question, fresh: Outcome) -> Comparison:
    """The verdict on one question (module docstring)."""
    captured = q.union if q.answered else q.last.answers
    cap_text = "answer" if q.answered else q.last.kind
    added = sorted(fresh.answers - captured)
    removed = sorted(captured - fresh.answers)
    now_text = fresh.kind if fresh.error is None or fresh.rcode != "ERROR" else \
        f"ERROR ({fresh.error})"
    if q.answered and fresh.has_data:
        if fresh.answers in q.answer_sets or fresh.answers == captured:
            status, reason = "same", "same records"
        else:
            gone = _addresses(frozenset(removed))
            now = _addresses(fresh.answers)
            if now and all(a.is_global for a in now) and any(not a.is_global for a in gone):
                odd = ", ".join(str(a) for a in gone if not a.is_global)
                status = "hijacked"
                reason = f"captured {odd} (not a global address); the resolver gives only " \
                         "global addresses"
            else:
                status = "changed"
                reason = f"{len(added)} record(s) added, {len(removed)} removed"
    elif q.answered:
        status, reason = "now_failing", f"captured an answer, now {now_text}"
    elif fresh.has_data:
        status, reason = "newly_answering", f"captured {cap_text}, now answers"
    elif q.last.kind == fresh.kind:
        status, reason = "same", f"still {now_text}"
    else:
        status, reason = "changed", f"{cap_text} -> {now_text}"
    return Comparison(q.qname, q.qtype, status, cap_text, now_text, sorted(captured),
                      sorted(fresh.answers), added, removed, reason, q.transactions)


# --- the whole run -------------------------------------------------------------------------

@dataclass
class AgainstResult:
    """The run: where queries went, how many, and one Comparison per question asked."""

    target: str
    rate: float
    max_queries: int
    timeout_s: float
    questions_total: int
    sent: int
    tcp: int
    answered: int
    timeouts: int
    not_sent: int
    unsendable: int
    ignored_responses: int
    duration_s: float
    results: list[Comparison]

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.results) for s in STATUSES}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["counts"] = self.counts()
        return d


def check_limits(rate: float, max_queries: int, timeout_s: float, *,
                 exceed_ceiling: bool = False) -> None:
    """Refuse limits that are not limits (OverCeiling, AgainstError)."""
    if not rate > 0 or not max_queries > 0 or not timeout_s > 0:
        raise AgainstError("--rate, --max-queries and --query-timeout must be positive")
    if not exceed_ceiling and (max_queries > QUERY_CEILING or rate > RATE_CEILING):
        raise OverCeiling()


def against(capture: Any, target: str | Target, *, rate: float = DEFAULT_RATE,
            max_queries: int = DEFAULT_MAX_QUERIES,
            timeout_s: float = DEFAULT_QUERY_TIMEOUT_S,
            exceed_ceiling: bool = False) -> AgainstResult:
    """Ask ``target`` the capture's questions and compare (module docstring)."""
    check_limits(rate, max_queries, timeout_s, exceed_ceiling=exceed_ceiling)
    tgt = target if isinstance(target, Target) else parse_target(target)
    # a question whose name cannot be sent costs no query: fetch a few more than the cap
    qs, total = questions(capture, limit=max_queries * 2 + 100)
    t0 = time.monotonic()
    sent = ask(tgt, qs, rate=rate, max_queries=max_queries, timeout_s=timeout_s)
    duration = time.monotonic() - t0
    results = []
    unsendable = 0
    for i, q in enumerate(qs):
        fresh = sent.outcomes.get(i)
        if fresh is None:
            if question_wire(q.qname, q.qtype) is None:
                unsendable += 1
            continue
        c = compare(q, fresh)
        lat = sent.latency_s.get(i)
        c.latency_ms = None if lat is None else round(lat * 1000.0, 3)
        results.append(c)
    asked = len(results)
    order = {s: n for n, s in enumerate(STATUSES)}
    results.sort(key=lambda r: order[r.status])  # stable: first asked first within a status
    return AgainstResult(
        target=str(tgt), rate=rate, max_queries=max_queries, timeout_s=timeout_s,
        questions_total=total, sent=sent.sent, tcp=sent.tcp,
        answered=sum(r.now not in ("TIMEOUT",) and not r.now.startswith("ERROR")
                     for r in results),
        timeouts=sum(r.now == "TIMEOUT" for r in results),
        not_sent=max(0, total - asked - unsendable), unsendable=unsendable,
        ignored_responses=sent.ignored, duration_s=round(duration, 3), results=results)


def format_against(result: AgainstResult, *, width: int = 80) -> Iterator[str]:
    """The summary line and a table (STATUS NAME TYPE CAPTURED NOW DETAIL) fitting ``width``."""
    import textwrap

    from analyze.replay import fit_table

    c = result.counts()
    summary = [
        (f"{result.target}: {result.sent} queries sent ({result.tcp} over TCP) in "
         f"{result.duration_s:.1f} s, {result.answered} answered, {result.timeouts} timed out."),
        f"{len(result.results)} of the capture's {result.questions_total} questions asked"
        + (f"; {result.not_sent} not sent (--max-queries {result.max_queries})"
           if result.not_sent else "")
        + (f"; {result.unsendable} names not sendable" if result.unsendable else "") + ".",
        ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in c.items()) + ".",
    ]
    for text in summary:
        yield from (textwrap.wrap(text, width) if width > 0 else [text])
    head = ("STATUS", "NAME", "TYPE", "CAPTURED", "NOW", "DETAIL")
    rows = []
    for r in result.results:
        if r.status in ("changed", "hijacked"):
            detail = " ".join([*(f"+{a}" for a in r.added), *(f"-{a}" for a in r.removed)])
            detail = detail or r.reason
        elif r.status == "same":
            detail = ",".join(r.now_answers)
        else:
            detail = ",".join(r.now_answers) or r.reason
        rows.append((r.status.upper().replace("_", "-"), r.qname, r.qtype, r.captured, r.now,
                     detail))
    yield from fit_table(head, rows, width=width, flexible=(1, 5), last_free=True)


__all__ = [
    "DEFAULT_MAX_QUERIES",
    "DEFAULT_QUERY_TIMEOUT_S",
    "DEFAULT_RATE",
    "QUERY_CEILING",
    "RATE_CEILING",
    "STATUSES",
    "AgainstError",
    "AgainstResult",
    "BadTarget",
    "Comparison",
    "Outcome",
    "OverCeiling",
    "Question",
    "Target",
    "against",
    "ask",
    "check_limits",
    "compare",
    "format_against",
    "parse_target",
    "question_wire",
    "questions",
]
