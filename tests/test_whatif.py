"""What-if: a node-local cache and a lower ndots, on captures whose answers are known."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
from click.testing import CliRunner
from dnslib import QTYPE, RCODE, RR, SOA, A, DNSRecord

from analyze import load
from analyze.pcap import write_capture
from analyze.whatif import lower_ndots, node_cache
from dnstrail.cli import main

SAMPLE = Path(__file__).parent.parent / "samples" / "incident"
T0 = 1_790_000_000_000_000_000
S = 1_000_000_000


def _write(path: Path, host: str,
           asks: list[tuple[float, int, str, str, int | None, int, tuple[int, int] | None]]
           ) -> Path:
    """One capture of ``asks``: (second, tgid, name, rcode name, A TTL or None, ...)
    as (t, tgid, name, rcode, ttl, delay_ms, soa): ttl None with rcode NOERROR is no data;
    rcode 'TIMEOUT' sends no response; soa = (record TTL, MINIMUM) in the authority."""
    rows = []
    for i, (t, tgid, name, rcode, ttl, delay_ms, soa) in enumerate(asks):
        q = DNSRecord.question(name, "A")
        q.header.id = 100 + i
        ts = T0 + int(t * S)
        rows.append((ts, tgid, q.pack(), "send"))
        if rcode == "TIMEOUT":
            continue
        r = q.reply()
        r.header.rcode = getattr(RCODE, rcode)
        if ttl is not None:
            r.add_answer(RR(name, QTYPE.A, rdata=A("198.51.100.7"), ttl=ttl))
        if soa is not None:
            r.add_auth(RR("example.com", QTYPE.SOA, ttl=soa[0], rdata=SOA(
                "ns.example.com", "hostmaster.example.com", (1, 3600, 600, 86400, soa[1]))))
        rows.append((ts + delay_ms * 1_000_000, tgid, r.pack(), "recv"))
    rows.sort()
    n = len(rows)
    sends = [r[3] == "send" for r in rows]
    table = pa.table({
        "ts": pa.array([r[0] for r in rows], pa.timestamp("ns", tz="UTC")),
        "tgid": [r[1] for r in rows], "comm": ["app"] * n, "direction": [r[3] for r in rows],
        "syscall": ["sendto" if s else "recvfrom" for s in sends],
        "sock_id": pa.array([r[1] for r in rows], pa.uint64()), "protocol": ["udp"] * n,
        "src_addr": ["10.0.0.2" if s else "10.0.0.53" for s in sends],
        "src_port": [40000 if s else 53 for s in sends],
        "dst_addr": ["10.0.0.53" if s else "10.0.0.2" for s in sends],
        "dst_port": [53 if s else 40000 for s in sends],
        "payload": [r[2] for r in rows],
    })
    return write_capture(path, table, manifest_extra={"source": "ebpf", "host": host})


def test_node_cache_honours_ttls_per_node(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", "node-a", [
        (0, 10, "x.example.com", "NOERROR", 30, 2, None),    # miss: kept until 30.002
        (1, 10, "x.example.com", "NOERROR", 30, 2, None),    # hit
        (2, 11, "x.example.com", "NOERROR", 30, 2, None),    # hit: another process, same node
        (5, 12, "x.example.com", "TIMEOUT", None, 0, None),  # hit: the cache would answer
        (40, 10, "x.example.com", "NOERROR", 30, 2, None),   # miss: expired
        (41, 10, "x.example.com", "NOERROR", 30, 2, None),   # hit
        (0, 13, "zero.example.com", "NOERROR", 0, 1, None),  # TTL 0: never kept
        (1, 13, "zero.example.com", "NOERROR", 0, 1, None),
        (0, 14, "nx.example.com", "NXDOMAIN", None, 1, (60, 20)),   # kept min(60, 20) s
        (10, 14, "nx.example.com", "NXDOMAIN", None, 1, (60, 20)),  # hit
        (25, 14, "nx.example.com", "NXDOMAIN", None, 1, (60, 20)),  # miss: past 20 s
        (0, 15, "nosoa.example.com", "NXDOMAIN", None, 1, None),    # no SOA: not kept
        (3, 15, "nosoa.example.com", "NXDOMAIN", None, 1, None),
        (0, 16, "fail.example.com", "SERVFAIL", None, 1, None),     # not kept
        (1, 16, "fail.example.com", "SERVFAIL", None, 1, None),
    ])
    b = _write(tmp_path / "b", "node-b", [
        (3, 20, "x.example.com", "NOERROR", 30, 2, None),    # another node: its own cache
        (4, 20, "x.example.com", "NOERROR", 30, 2, None),    # hit
    ])
    cap = load([a, b], work_dir=tmp_path / "work")
    got = node_cache(cap)
    assert got["queries"] == 17
    assert got["saved"] == 6                       # 4 + 1 (x on node-a, node-b) + 1 (nx)
    assert got["timeouts_answered"] == 1
    assert got["top_names"][0] == {"qname": "x.example.com", "qtype": "A", "saved": 4}
    assert {(n["qname"], n["saved"]) for n in got["top_names"]} == {
        ("x.example.com", 4), ("x.example.com", 1), ("nx.example.com", 1)}
    only_a = node_cache(cap.filter(node="node-a"))
    assert only_a["queries"] == 15 and only_a["saved"] == 5


def test_lower_ndots_on_the_sample(tmp_path: Path) -> None:
    cap = load(SAMPLE, work_dir=tmp_path / "work")
    by = {r["ndots"]: r for r in lower_ndots(cap)}
    # api.stripe.com (2 dots) walked 3 search suffixes x A/AAAA before answering as given,
    # in 3 lookups; web.shop (1 dot) answered as web.shop.svc.cluster.local: with ndots 1 it
    # would first ask web.shop (A and AAAA) in each of its 3 lookups
    assert by[1] == {"ndots": 1, "saved_queries": 18, "extra_queries": 6, "net_saved": 12,
                     "lookups_shortened": 3, "lookups_lengthened": 3}
    assert by[2]["saved_queries"] == 18 and by[2]["extra_queries"] == 0
    assert by[3]["saved_queries"] == by[4]["saved_queries"] == 0
    shop = {r["ndots"]: r for r in lower_ndots(cap.filter(namespace="payments"))}
    assert shop[1]["saved_queries"] == 0


def test_the_report_says_what_if(tmp_path: Path) -> None:
    work = str(tmp_path / "work")
    r = CliRunner().invoke(main, ["report", str(SAMPLE), "--format", "json", "--work-dir",
                                  work])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["whatif"]["node_cache"]["saved"] == 129
    assert doc["whatif"]["ndots"][1]["net_saved"] == 18
    md = CliRunner().invoke(main, ["report", str(SAMPLE), "--format", "md", "--work-dir",
                                   work]).stdout
    assert "## What if" in md
    assert "129 of 507 client queries (25.4 %)" in md
    assert "| 2 | 18 | 0 | 18 |" in md
    assert "With ndots:2 the clients would have sent 18 fewer queries of 507" in md
    out = tmp_path / "r.html"
    r = CliRunner().invoke(main, ["report", str(SAMPLE), "-o", str(out), "--no-plots",
                                  "--work-dir", work])
    assert r.exit_code == 0, r.output
    html = out.read_text()
    assert '<h2 id="whatif">What if</h2>' in html
    assert "129 of 507 client queries (25.4 %)" in html
    assert "redis.payments.svc.cluster.local" in html
