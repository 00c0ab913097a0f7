"""Transaction matching and lookup grouping on real DNS wire messages.

Payloads are real query/response bytes made with dnslib; the capture directory is written in
the capture format with ``analyze.pcap.write_capture`` and read back with ``analyze.load``, so
the whole pipeline (reassembly, decode, roles, matching) runs. Timing and socket identity are
what a recorder would have written for a client process: that is what the cases vary.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from analyze import load
from analyze.pcap import write_capture
from analyze.reconstruct import base_names

T0 = 1_790_000_000_000_000_000
MS = 1_000_000
CLIENT, SERVER = "10.244.1.7", "10.96.0.10"
REPO = Path(__file__).resolve().parents[1]


def query(name: str, qtype: str = "A", ident: int = 4242) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    q.header.id = ident
    return q


def answer(q: DNSRecord, ip: str | None = "10.1.2.3", rcode: str = "NOERROR") -> bytes:
    r = q.reply()
    r.header.rcode = getattr(RCODE, rcode)
    if ip and rcode == "NOERROR" and QTYPE[q.q.qtype] == "A":
        r.add_answer(RR(str(q.q.qname), QTYPE.A, rdata=A(ip), ttl=30))
    return r.pack()


@dataclass
class Builder:
    """Rows of a client-side capture: one process, sockets by number."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    tgid: int = 3100
    comm: str = "app"

    def send(self, t_ms: float, payload: bytes, sock: int = 1, port: int = 40001,
             tgid: int | None = None) -> None:
        self._row(t_ms, payload, "send", "sendto", sock, CLIENT, port, SERVER, 53, tgid)

    def recv(self, t_ms: float, payload: bytes, sock: int = 1, port: int = 40001,
             tgid: int | None = None) -> None:
        self._row(t_ms, payload, "recv", "recvfrom", sock, SERVER, 53, CLIENT, port, tgid)

    def _row(self, t_ms: float, payload: bytes, direction: str, syscall: str, sock: int,
             src: str, sport: int, dst: str, dport: int, tgid: int | None) -> None:
        self.rows.append({
            "ts": T0 + int(t_ms * MS), "tgid": tgid or self.tgid, "tid": tgid or self.tgid,
            "uid": 0, "comm": self.comm, "netns": 4026531840, "syscall": syscall,
            "direction": direction, "fd": 5, "sock_id": 0xFFFF000000000000 + sock,
            "protocol": "udp", "family": "inet", "src_addr": src, "src_port": sport,
            "dst_addr": dst, "dst_port": dport, "payload": payload,
            "orig_len": len(payload), "truncated": False,
        })

    def write(self, out: Path) -> Path:
        rows = sorted(self.rows, key=lambda r: r["ts"])
        cols = {k: [r[k] for r in rows] for k in rows[0]}
        cols["ts"] = pa.array(cols["ts"], pa.timestamp("ns", tz="UTC"))
        cols["seq"] = list(range(1, len(rows) + 1))
        cols["sock_id"] = pa.array(cols["sock_id"], pa.uint64())
        return write_capture(out, pa.table(cols), manifest_extra={"source": "ebpf",
                                                                   "host": "node-1"})


def test_answered_timeout_unsolicited_and_retransmission(tmp_path: Path) -> None:
    b = Builder()
    q1 = query("api.example.com", ident=1)
    b.send(0, q1.pack(), sock=1, port=40001)
    b.recv(12.5, answer(q1), sock=1, port=40001)
    # retransmitted after 1 s, answered 20 ms after the second copy
    q2 = query("slow.example.com", ident=2)
    b.send(100, q2.pack(), sock=2, port=40002)
    b.send(1100, q2.pack(), sock=2, port=40002)
    b.recv(1120, answer(q2), sock=2, port=40002)
    # never answered
    q3 = query("dead.example.com", ident=3)
    b.send(200, q3.pack(), sock=3, port=40003)
    # a response nobody asked for
    q4 = query("spoof.example.com", ident=4)
    b.recv(300, answer(q4, "6.6.6.6"), sock=4, port=40004)
    cap = load(b.write(tmp_path / "cap"))
    tx = cap.transactions.set_index("qname")
    assert len(cap.transactions) == 4
    assert tx.loc["api.example.com", "status"] == "answered"
    assert tx.loc["api.example.com", "latency_s"] == pytest.approx(0.0125, abs=1e-6)
    assert tx.loc["api.example.com", "retransmissions"] == 0
    assert tx.loc["slow.example.com", "retransmissions"] == 1
    # latency from the last copy sent before the answer; ts is the first copy
    assert tx.loc["slow.example.com", "latency_s"] == pytest.approx(0.020, abs=1e-6)
    assert tx.loc["slow.example.com", "ts"].value == T0 + 100 * MS
    assert tx.loc["dead.example.com", "status"] == "timeout"
    assert pd_isna(tx.loc["dead.example.com", "response_ts"])
    assert tx.loc["spoof.example.com", "status"] == "unsolicited"
    assert list(tx.loc["spoof.example.com", "answer_ips"]) == ["6.6.6.6"]
    assert set(cap.transactions["side"]) == {"client"}
    assert tx.loc["api.example.com", "client_addr"] == CLIENT
    assert tx.loc["api.example.com", "server_addr"] == SERVER
    assert tx.loc["api.example.com", "server_port"] == 53
    # every message belongs to exactly one transaction
    assert cap.messages["txn_id"].notna().all()
    assert cap.messages.groupby("txn_id").size().sum() == len(cap.messages) == 7


def pd_isna(v: Any) -> bool:
    import pandas as pd

    return bool(pd.isna(v))


def test_response_stamped_before_its_query_still_matches(tmp_path: Path) -> None:
    b = Builder()
    q = query("skew.example.com", ident=9)
    b.send(10.0, q.pack())
    b.recv(9.6, answer(q))               # 0.4 ms earlier: another CPU's clock/ordering
    cap = load(b.write(tmp_path / "cap"), skew_s=0.001)
    assert list(cap.transactions["status"]) == ["answered"]
    assert cap.transactions["latency_s"].iloc[0] == 0.0
    cap2 = load(tmp_path / "cap", skew_s=0.0)
    assert sorted(cap2.transactions["status"]) == ["timeout", "unsolicited"]


def test_same_id_on_another_socket_or_after_timeout_is_another_transaction(
        tmp_path: Path) -> None:
    b = Builder()
    q = query("same.example.com", ident=77)
    b.send(0, q.pack(), sock=1)
    b.send(1, q.pack(), sock=2, port=40002)      # same id, other socket: not a retransmission
    b.recv(5, answer(q), sock=2, port=40002)
    b.send(20_000, q.pack(), sock=1)             # 20 s later on the first socket
    b.recv(20_003, answer(q), sock=1)
    cap = load(b.write(tmp_path / "cap"))
    tx = cap.transactions.sort_values("ts")
    assert list(tx["status"]) == ["timeout", "answered", "answered"]
    assert list(tx["retransmissions"]) == [0, 0, 0]


def test_timeout_window_is_a_parameter(tmp_path: Path) -> None:
    b = Builder()
    q = query("late.example.com", ident=5)
    b.send(0, q.pack())
    b.recv(3000, answer(q))
    path = b.write(tmp_path / "cap")
    assert list(load(path).transactions["status"]) == ["answered"]
    assert sorted(load(path, timeout_s=2.0).transactions["status"]) == ["timeout",
                                                                        "unsolicited"]


def test_ndots_walk_is_one_lookup(tmp_path: Path) -> None:
    b = Builder()
    base = "api.example.com"
    suffixes = ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local"]
    t = 0.0
    ident = 100
    for i, suf in enumerate(suffixes + [None]):
        name = f"{base}.{suf}" if suf else base
        for qt in ("A", "AAAA"):
            ident += 1
            q = query(name, qt, ident)
            b.send(t, q.pack(), sock=10 + i, port=41000 + i)
            rc = "NOERROR" if suf is None else "NXDOMAIN"
            b.recv(t + 2, answer(q, "93.184.216.34", rc), sock=10 + i, port=41000 + i)
            t += 0.1
        t += 3
    # the same process then asks another name: a separate lookup
    q = query("other.example.org", "A", 999)
    b.send(t + 50, q.pack(), sock=30, port=42000)
    b.recv(t + 52, answer(q, "10.9.9.9"), sock=30, port=42000)
    cap = load(b.write(tmp_path / "cap"))
    lk = cap.lookups
    assert len(lk) == 2
    walk = lk.iloc[0]
    assert walk["first_name"] == f"{base}.shop.svc.cluster.local"
    assert walk["final_name"] == base
    assert walk["base_name"] == base
    assert walk["n_queries"] == 8
    assert walk["n_nxdomain"] == 6
    assert walk["rcode_name"] == "NOERROR"
    assert list(walk["answer_ips"]) == ["93.184.216.34"]
    assert list(walk["qtypes"]) == ["A", "AAAA"]
    assert len(walk["names"]) == 4
    assert lk.iloc[1]["final_name"] == "other.example.org"


def test_asking_again_after_an_answer_is_a_new_lookup(tmp_path: Path) -> None:
    b = Builder()
    for i in range(3):
        q = query("poll.example.com", "A", 500 + i)
        b.send(i * 100, q.pack(), sock=i + 1, port=43000 + i)
        b.recv(i * 100 + 1, answer(q), sock=i + 1, port=43000 + i)
    cap = load(b.write(tmp_path / "cap"))
    assert len(cap.lookups) == 3
    assert list(cap.lookups["n_queries"]) == [1, 1, 1]


def test_base_names_strip_the_longest_search_suffix() -> None:
    import pandas as pd

    names = pd.Series(["a.b.shop.svc.cluster.local", "a.b.svc.cluster.local",
                       "a.b.cluster.local", "a.b", "cluster.local", None], dtype="str")
    got = base_names(names, {"shop.svc.cluster.local", "svc.cluster.local", "cluster.local"})
    assert list(got[:5]) == ["a.b", "a.b", "a.b", "a.b", "cluster.local"]
    assert pd.isna(got.iloc[5])


def test_generated_node_capture_counts_match_the_generator(tmp_path: Path) -> None:
    """benchmarks/gen_capture.py states what it wrote; matching must find exactly that."""
    out = tmp_path / "gen"
    expected = tmp_path / "expected.json"
    gen = REPO / "benchmarks" / "gen_capture.py"
    if not gen.exists():
        pytest.skip("benchmarks/gen_capture.py is not in this tree")
    subprocess.run([sys.executable, str(gen), "-o", str(out), "--messages", "20000",
                    "--expected", str(expected)], check=True, capture_output=True, timeout=120)
    exp = json.loads(expected.read_text())
    t = time.perf_counter()
    cap = load(out)
    seconds = time.perf_counter() - t
    tx = cap.transactions
    assert (tx["status"] == "answered").sum() == exp["answered_transactions"]
    assert (tx["status"] == "timeout").sum() == exp["unanswered_queries"]
    assert tx["retransmissions"].sum() == exp["retransmitted_queries"]
    assert (tx["rcode_name"] == "NXDOMAIN").sum() == exp["nxdomain_responses"]
    assert (tx["status"] == "unsolicited").sum() == 0
    # lookups: within 5 % of what the generator made (it knows its own resolver calls)
    assert abs(len(cap.lookups) - exp["lookups"]) <= 0.05 * exp["lookups"]
    assert cap.lookups["n_queries"].sum() == exp["queries"]
    assert seconds < 30


def test_wire_copies_from_two_interfaces_are_not_retransmissions(tmp_path: Path) -> None:
    """tcpdump -i any sees a packet on the pod's veth and again on the bridge."""
    q = query("twice.example.com", ident=31)
    resp = answer(q)
    t0 = T0
    rows = []
    for t_us, payload, src, sport, dst, dport in (
            (0, q.pack(), CLIENT, 40000, SERVER, 53), (40, q.pack(), CLIENT, 40000, SERVER, 53),
            (9000, resp, SERVER, 53, CLIENT, 40000), (9030, resp, SERVER, 53, CLIENT, 40000),
            # a real retransmission a second later, answered once
            (1_000_000, q.pack(), CLIENT, 40000, SERVER, 53),
            (1_004_000, resp, SERVER, 53, CLIENT, 40000)):
        rows.append({"ts": t0 + t_us * 1000, "payload": payload, "protocol": "udp",
                     "src_addr": src, "src_port": sport, "dst_addr": dst, "dst_port": dport,
                     "syscall": "pcap"})
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    cols["ts"] = pa.array(cols["ts"], pa.timestamp("ns", tz="UTC"))
    cap = load(write_capture(tmp_path / "cap", pa.table(cols)))
    tx = cap.transactions.sort_values("ts")
    assert list(tx["status"]) == ["answered", "answered"]
    assert list(tx["retransmissions"]) == [0, 0]
    assert tx["latency_s"].iloc[0] == pytest.approx(0.009, abs=1e-6)
    assert cap.messages["txn_id"].notna().all()
    assert sorted(cap.messages.groupby("txn_id").size()) == [2, 4]
