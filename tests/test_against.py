"""`dnstrail replay --against`: a real DNS server on 127.0.0.1 (a random port, a zone the test
defines) is asked the captured questions; nothing else is ever queried."""

from __future__ import annotations

import itertools
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner
from dnslib import QTYPE, RCODE, RR, TXT, A, DNSRecord

from analyze import load
from analyze.against import (
    BadTarget,
    OverCeiling,
    Target,
    against,
    format_against,
    parse_target,
    question_wire,
)
from analyze.pcap import write_capture
from dnstrail.cli import main

SAMPLE = Path(__file__).parent.parent / "samples" / "incident"
#: Linux's SO_TIMESTAMPNS (= SCM_TIMESTAMPNS; Python names it from 3.12 on)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


@dataclass
class Zone:
    """What the server answers: records by (name, type), names it never answers, names it
    answers truncated over UDP (full over TCP); NXDOMAIN for the rest."""

    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    silent: set[str] = field(default_factory=set)
    truncate: set[str] = field(default_factory=set)


class Server:
    """A DNS server on 127.0.0.1 (UDP and TCP on one random port) that logs every query."""

    def __init__(self, zone: Zone, addr: str = "127.0.0.1", port: int = 0) -> None:
        self.zone = zone
        self.received: list[tuple[float, str, str, str, str]] = []  # time, proto, src, name, type
        self.lock = threading.Lock()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((addr, port))
        self.port = self.udp.getsockname()[1]
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((addr, self.port))
        self.tcp.listen(8)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._serve_udp, daemon=True),
                        threading.Thread(target=self._serve_tcp, daemon=True)]
        for t in self.threads:
            t.start()

    def answer(self, data: bytes, proto: str, src: str, when: float) -> bytes | None:
        q = DNSRecord.parse(data)
        name = str(q.q.qname).rstrip(".").lower()
        qtype = QTYPE[q.q.qtype]
        with self.lock:
            self.received.append((when, proto, src, name, qtype))
        if name in self.zone.silent:
            return None
        r = q.reply()
        recs = self.zone.records.get((name, qtype))
        if recs is None and not any(n == name for n, _ in self.zone.records):
            r.header.rcode = RCODE.NXDOMAIN
        for data_text in recs or ():
            rdata = TXT(data_text) if qtype == "TXT" else A(data_text)
            r.add_answer(RR(name, QTYPE.reverse[qtype], rdata=rdata, ttl=30))
        if proto == "udp" and name in self.zone.truncate:
            r = q.reply()
            r.header.tc = 1
        return r.pack()

    def _serve_udp(self) -> None:
        # the kernel's arrival time of each datagram: not delayed by this thread's turn
        self.udp.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.udp.settimeout(0.1)
        while not self.stop.is_set():
            try:
                data, anc, _, addr = self.udp.recvmsg(4096, socket.CMSG_SPACE(16))
            except TimeoutError:
                continue
            when = time.time()
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", raw[:16])
                    when = sec + nsec / 1e9
            out = self.answer(data, "udp", addr[0], when)
            if out is not None:
                self.udp.sendto(out, addr)

    def _serve_tcp(self) -> None:
        self.tcp.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, addr = self.tcp.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                n = struct.unpack("!H", conn.recv(2))[0]
                data = b""
                while len(data) < n:
                    data += conn.recv(n - len(data))
                out = self.answer(data, "tcp", addr[0], time.time())
                if out is not None:
                    conn.sendall(struct.pack("!H", len(out)) + out)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(2)
        self.udp.close()
        self.tcp.close()


@pytest.fixture
def serve() -> Iterator[list[Server]]:
    servers: list[Server] = []
    yield servers
    for s in servers:
        s.close()


def _capture(tmp_path: Path, questions: list[tuple[str, str, str | None, list[str]]]) -> Path:
    """A capture of one process asking each (name, type, rcode, answers); rcode None: the
    query timed out (no response)."""
    t0 = 1_790_000_000_000_000_000
    rows: list[tuple[int, bytes, str]] = []
    for i, (name, qtype, rcode, answers) in enumerate(questions):
        q = DNSRecord.question(name, qtype)
        q.header.id = 1000 + i
        ts = t0 + i * 10_000_000
        rows.append((ts, q.pack(), "send"))
        if rcode is None:
            continue
        r = q.reply()
        r.header.rcode = getattr(RCODE, rcode)
        for a in answers:
            rdata = TXT(a) if qtype == "TXT" else A(a)
            r.add_answer(RR(name, QTYPE.reverse[qtype], rdata=rdata, ttl=60))
        rows.append((ts + 1_000_000, r.pack(), "recv"))
    n = len(rows)
    sends = [d == "send" for _, _, d in rows]
    table = pa.table({
        "ts": pa.array([r[0] for r in rows], pa.timestamp("ns", tz="UTC")),
        "tgid": [50] * n, "comm": ["app"] * n, "direction": [r[2] for r in rows],
        "syscall": ["sendto" if s else "recvfrom" for s in sends],
        "sock_id": pa.array([9] * n, pa.uint64()), "protocol": ["udp"] * n,
        "src_addr": ["10.0.0.2" if s else "10.0.0.53" for s in sends],
        "src_port": [40000 if s else 53 for s in sends],
        "dst_addr": ["10.0.0.53" if s else "10.0.0.2" for s in sends],
        "dst_port": [53 if s else 40000 for s in sends],
        "payload": [r[1] for r in rows],
    })
    return write_capture(tmp_path / "cap", table, manifest_extra={"source": "ebpf"})


CASES = [
    ("same.example.com", "A", "NOERROR", ["198.51.100.10"]),
    ("moved.example.com", "A", "NOERROR", ["198.51.100.20"]),
    ("fixed.example.com", "A", "NXDOMAIN", []),
    ("broken.example.com", "A", "NOERROR", ["198.51.100.30"]),
    ("bank.example.com", "A", "NOERROR", ["10.66.0.1"]),
    ("slow.example.com", "A", None, []),
    ("big.example.com", "TXT", "NOERROR", ["v=spf1 -all"]),
    ("servfail.example.com", "A", "SERVFAIL", []),
    ("evil.example.com", "TXT", "NOERROR", ["\x1b]0;pwn\x07\u202e"]),
]
ZONE = Zone(records={
    ("same.example.com", "A"): ["198.51.100.10"],
    ("moved.example.com", "A"): ["198.51.100.21"],
    ("fixed.example.com", "A"): ["198.51.100.40"],
    ("bank.example.com", "A"): ["93.184.216.34"],
    ("big.example.com", "TXT"): ["v=spf1 -all"],
    ("evil.example.com", "TXT"): ["\x1b[2J"],
}, silent={"slow.example.com"}, truncate={"big.example.com"})


def test_each_verdict_against_a_real_server(tmp_path: Path, serve: list[Server]) -> None:
    server = Server(ZONE)
    decoy = Server(ZONE, "127.0.0.2", server.port)     # the same port on another address
    serve += [server, decoy]
    cap = load(_capture(tmp_path, CASES), work_dir=tmp_path / "work")
    result = against(cap, f"127.0.0.1:{server.port}", rate=200, timeout_s=0.5)
    by = {r.qname: r for r in result.results}
    assert {n: r.status for n, r in by.items()} == {
        "same.example.com": "same",
        "moved.example.com": "changed",
        "fixed.example.com": "newly_answering",
        "broken.example.com": "now_failing",
        "bank.example.com": "hijacked",
        "slow.example.com": "same",             # timed out then, times out now
        "big.example.com": "same",              # truncated over UDP, asked again over TCP
        "servfail.example.com": "changed",      # SERVFAIL -> NXDOMAIN
        "evil.example.com": "changed",
    }
    assert by["moved.example.com"].added == ["A 198.51.100.21"]
    assert by["moved.example.com"].removed == ["A 198.51.100.20"]
    assert by["broken.example.com"].now == "NXDOMAIN"
    assert "10.66.0.1" in by["bank.example.com"].reason
    assert by["slow.example.com"].now == "TIMEOUT"
    assert by["servfail.example.com"].reason == "SERVFAIL -> NXDOMAIN"
    # the most alarming first
    assert [r.status for r in result.results][:2] == ["hijacked", "now_failing"]
    # what it says it sent is what the server received, all from loopback, one per question
    assert result.sent == len(server.received) == len(CASES) + 1
    assert result.tcp == 1 and [x[3] for x in server.received if x[1] == "tcp"] == \
        ["big.example.com"]
    assert {x[2] for x in server.received} == {"127.0.0.1"}
    assert decoy.received == []
    assert sorted((x[3], x[4]) for x in server.received if x[1] == "udp") == \
        sorted((n, t) for n, t, _, _ in CASES)
    assert result.timeouts == 1 and result.not_sent == 0
    lines = list(format_against(result, width=100))
    assert lines[0].startswith(f"127.0.0.1:{server.port}: 10 queries sent (1 over TCP)")
    assert "1 hijacked, 1 now failing, 3 changed, 1 newly answering, 3 same." in lines
    text = "\n".join(lines)
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert any(ln.startswith("CHANGED") and "evil.example.com" in ln for ln in lines)
    assert max(map(len, lines)) <= 100
    assert any(ln.startswith("HIJACKED") and "bank.example.com" in ln for ln in lines)


def test_cli_json_and_the_cap(tmp_path: Path, serve: list[Server]) -> None:
    names = [(f"n{i:02d}.example.com", "A", "NOERROR", [f"198.51.100.{i}"]) for i in range(30)]
    zone = Zone(records={(n, t): a for n, t, _, a in names[:20]})
    server = Server(zone)
    serve.append(server)
    cap = _capture(tmp_path, names)
    t0 = time.monotonic()
    r = CliRunner().invoke(main, [
        "replay", str(cap), "--against", f"127.0.0.1:{server.port}", "--format", "json",
        "--rate", "20", "--max-queries", "10", "--query-timeout", "0.5",
        "--work-dir", str(tmp_path / "work")])
    elapsed = time.monotonic() - t0
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["sent"] == 10 == len(server.received)             # the cap holds
    assert doc["not_sent"] == 20 and doc["questions_total"] == 30
    assert [x["qname"] for x in doc["results"]] == [f"n{i:02d}.example.com" for i in range(10)]
    assert doc["counts"]["same"] == 10
    # the rate holds: 10 queries at 20/s take at least 9 intervals of 50 ms, as they
    # arrived (kernel time stamps); none came in a burst
    times = [x[0] for x in server.received]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[-1] - times[0] >= 9 * 0.05 * 0.9 and elapsed >= 0.45
    assert min(gaps) >= 0.05 * 0.5, gaps
    assert "asking 127.0.0.1" in r.stderr


def test_limits_and_targets_are_checked_before_sending(tmp_path: Path,
                                                       serve: list[Server]) -> None:
    server = Server(Zone())
    serve.append(server)
    cap = _capture(tmp_path, CASES[:2])
    runner = CliRunner()
    base = ["replay", str(cap), "--work-dir", str(tmp_path / "work"), "--against"]
    r = runner.invoke(main, [*base, f"127.0.0.1:{server.port}", "--max-queries", "20000"])
    assert r.exit_code == 1 and r.output.startswith("Error:") and "--exceed-ceiling" in r.output
    r = runner.invoke(main, [*base, f"127.0.0.1:{server.port}", "--rate", "5000"])
    assert r.exit_code == 1 and "--exceed-ceiling" in r.output
    r = runner.invoke(main, [*base, "localhost"])                 # a name needs a resolver
    assert r.exit_code == 1 and "IP address" in r.output
    r = runner.invoke(main, [*base, f"127.0.0.1:{server.port}", "--format", "jsonl"])
    assert r.exit_code == 2
    r = runner.invoke(main, [*base, f"127.0.0.1:{server.port}", "--lookups"])
    assert r.exit_code == 2
    assert server.received == []                                   # nothing was sent
    r = runner.invoke(main, [*base, f"127.0.0.1:{server.port}", "--max-queries", "20000",
                             "--exceed-ceiling", "--query-timeout", "0.3"])
    assert r.exit_code == 0, r.output
    assert len(server.received) == 2
    with pytest.raises(OverCeiling):
        against(load(cap, work_dir=tmp_path / "work"), f"127.0.0.1:{server.port}",
                max_queries=10_001)


def test_a_port_where_nothing_listens(tmp_path: Path) -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()                                  # nothing listens there now
    cap = load(_capture(tmp_path, CASES[:4]), work_dir=tmp_path / "work")
    result = against(cap, f"127.0.0.1:{port}", rate=100, timeout_s=0.3)
    assert len(result.results) == 4 and result.answered == 0
    assert {r.now for r in result.results} <= {"TIMEOUT"} | {
        r.now for r in result.results if r.now.startswith("ERROR")}
    assert {r.status for r in result.results} == {"now_failing", "changed"}


def test_parse_target() -> None:
    assert parse_target("10.96.0.10") == Target("10.96.0.10", 53)
    assert parse_target("127.0.0.1:5353") == Target("127.0.0.1", 5353)
    assert parse_target("[::1]:5353") == Target("::1", 5353)
    assert parse_target("fd00::a") == Target("fd00::a", 53)
    assert str(parse_target("[::1]:5353")) == "[::1]:5353"
    for bad in ("dns.google", "localhost:53", "127.0.0.1:0", "127.0.0.1:99999", "[::1",
                "224.0.0.251", "0.0.0.0"):
        with pytest.raises(BadTarget):
            parse_target(bad)


def test_question_wire_of_escaped_and_unsendable_names() -> None:
    wire = question_wire("a\\046b.example", "A")
    assert wire == b"\x03a.b\x07example\x00\x00\x01\x00\x01"
    assert question_wire("x\\255.example", "TYPE65399") == \
        b"\x02x\xff\x07example\x00\xff\x77\x00\x01"
    assert question_wire("a" * 64 + ".example", "A") is None
    assert question_wire("a..example", "A") is None
    assert question_wire("ok.example", "NOSUCHTYPE") is None


def test_the_sample_against_a_resolver_that_fixed_the_typo(tmp_path: Path,
                                                           serve: list[Server]) -> None:
    zone = Zone(records={
        ("redis.payments.svc.cluster.local", "A"): ["10.213.0.81"],
        ("paymnets-api.shop.svc.cluster.local", "A"): ["10.213.0.85"],
        ("api.stripe.com", "A"): ["54.187.216.72"],
        ("catalog.shop.svc.cluster.local", "A"): ["10.213.0.99"],
    })
    server = Server(zone)
    serve.append(server)
    r = CliRunner().invoke(main, [
        "replay", str(SAMPLE), "--against", f"127.0.0.1:{server.port}", "--rate", "500",
        "--max-queries", "40", "--query-timeout", "0.5", "--width", "120",
        "--work-dir", str(tmp_path / "work")])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("STATUS "))
    row = {ln.split()[1]: ln.split()[0] for ln in lines[head + 1:] if len(ln.split()) > 2
           and ln.split()[2] == "A"}
    assert row["redis.payments.svc.cluster.local"] == "SAME"
    assert row["paymnets-api.shop.svc.cluster.local"] == "NEWLY-ANSWERING"
    assert row["api.stripe.com"] == "HIJACKED"       # captured 10.213.0.80 for a public name
    assert row["catalog.shop.svc.cluster.local"] == "CHANGED"   # private both: not hijacked
    assert row["kubernetes.default.svc.cluster.local"] == "NOW-FAILING"
    assert len(server.received) == 40 and "40 queries sent" in lines[0]
    assert max(map(len, lines)) <= 120
