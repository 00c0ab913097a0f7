"""Findings on captures written in the capture format from real DNS wire messages.

The messages are built with dnslib (real query and response bytes, real TTLs), written as a
capture directory with ``analyze.pcap.write_capture`` and read back with ``analyze.load``: the
whole analyzer runs on them. The benign-busy capture is the ordinary traffic of a busy node
(CDN and cloud host names, service discovery, reverse lookups, mail checks) and must raise
nothing above ``low``; the same builder with a tunnel or DGA client added must raise them.
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from dnslib import AAAA, MX, PTR, QTYPE, RCODE, RR, SRV, TXT, A, DNSRecord

from analyze import load
from analyze.findings import Finding, find, severity_rank
from analyze.pcap import write_capture

T0 = 1_790_000_000_000_000_000  # ns, a fixed wall-clock start
SERVER = "10.96.0.10"


@dataclass
class Proc:
    tgid: int
    comm: str
    addr: str
    netns: int = 4026531840
    port: int = 40000
    sock: int = 0


@dataclass
class Wire:
    """Rows of a capture's messages table, one query/response exchange at a time."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    connects: list[dict[str, Any]] = field(default_factory=list)
    seq: int = 0
    dns_id: int = 1

    def exchange(self, proc: Proc, t_ns: int, qname: str, qtype: str = "A", *,
                 answers: list[Any] | None = None, ttl: int = 300, rcode: str = "NOERROR",
                 latency_ns: int = 2_000_000, respond: bool = True) -> None:
        q = DNSRecord.question(qname, qtype)
        q.header.id = self.dns_id
        self.dns_id = self.dns_id % 65535 + 1
        proc.port = 30000 + (proc.port - 29999) % 30000
        proc.sock += 1
        self._row(proc, t_ns, q.pack(), "send", "sendto", proc.addr, proc.port, SERVER, 53)
        if not respond:
            return
        r = q.reply()
        r.header.rcode = getattr(RCODE, rcode)
        for rdata in answers or []:
            rtype = {A: "A", AAAA: "AAAA", TXT: "TXT", MX: "MX", PTR: "PTR", SRV: "SRV"}[
                type(rdata)]
            r.add_answer(RR(qname, getattr(QTYPE, rtype), rdata=rdata, ttl=ttl))
        self._row(proc, t_ns + latency_ns, r.pack(), "recv", "recvfrom", SERVER, 53,
                  proc.addr, proc.port)

    def _row(self, proc: Proc, t_ns: int, payload: bytes, direction: str, syscall: str,
             src: str, sport: int, dst: str, dport: int) -> None:
        self.seq += 1
        self.rows.append({
            "ts": t_ns, "mono_ns": t_ns - T0 + 10**12, "seq": self.seq, "tgid": proc.tgid,
            "tid": proc.tgid, "uid": 0, "comm": proc.comm, "cgroup_id": 1000 + proc.tgid,
            "netns": proc.netns, "syscall": syscall, "direction": direction, "fd": 7,
            "sock_id": proc.tgid * 100000 + proc.sock, "msg_index": 0, "protocol": "udp",
            "family": "inet", "src_addr": src, "src_port": sport, "dst_addr": dst,
            "dst_port": dport, "payload": payload, "orig_len": len(payload),
            "truncated": False,
        })

    def connect(self, proc: Proc, t_ns: int, addr: str, port: int) -> None:
        self.connects.append({
            "ts": t_ns, "mono_ns": t_ns - T0 + 10**12, "seq": len(self.connects) + 1,
            "tgid": proc.tgid, "tid": proc.tgid, "uid": 0, "comm": proc.comm,
            "cgroup_id": 1000 + proc.tgid, "netns": proc.netns, "fd": 9, "family": "inet",
            "protocol": "tcp", "dst_addr": addr, "dst_port": port, "result": -115,
            "latency_ns": 20_000,
        })

    @staticmethod
    def _table(rows: list[dict[str, Any]]) -> pa.Table:
        cols: dict[str, list[Any]] = {k: [r[k] for r in rows] for k in rows[0]}
        return pa.table({
            **{k: v for k, v in cols.items() if k != "ts"},
            "ts": pa.array(cols["ts"], pa.timestamp("ns", tz="UTC")),
        })

    def write(self, out: Path) -> Path:
        connects = self._table(self.connects) if self.connects else None
        return write_capture(out, self._table(self.rows), connects,
                             manifest_extra={"source": "ebpf", "host": "node-a"})


def _rand(rng: random.Random, n: int, alphabet: str = "abcdefghijklmnopqrstuvwxyz0123456789"
          ) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _ip(rng: random.Random) -> str:
    return f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def busy_node(wire: Wire, rng: random.Random, start_ns: int = T0) -> None:
    """Ordinary traffic of a busy node over about two minutes."""
    envoy = Proc(2001, "envoy", "10.244.1.5")
    grpc = Proc(2002, "grpc-server", "10.244.1.6")
    kubelet = Proc(2003, "node_exporter", "10.0.0.4")
    mta = Proc(2004, "postfix-smtpd", "10.244.1.7")
    browser = Proc(2005, "chrome", "10.244.1.8")
    ntp = Proc(2006, "chronyd", "10.0.0.4")
    t = start_ns
    step = 40_000_000  # 25 queries/s overall
    names: list[tuple[Proc, str, str, list[Any], int]] = []
    for _ in range(250):
        ip = _ip(rng)
        names.append((envoy, f"e{rng.randint(1000, 99999)}.{rng.choice('abcdefg')}.akamaiedge.net",
                      "A", [A(ip)], 20))
    for _ in range(250):
        names.append((envoy, f"d{_rand(rng, 13)}.cloudfront.net", "A", [A(_ip(rng))], 60))
    for _ in range(200):
        a, b, c, d = (rng.randint(1, 254) for _ in range(4))
        names.append((envoy, f"ec2-{a}-{b}-{c}-{d}.compute-1.amazonaws.com", "A",
                      [A(f"{a}.{b}.{c}.{d}")], 60))
    for _ in range(200):
        names.append((browser, f"r{rng.randint(1, 20)}---sn-{_rand(rng, 8)}.googlevideo.com",
                      "A", [A(_ip(rng))], 300))
    for i in range(100):
        svc = f"svc{i}.shop.svc.cluster.local"
        names.append((grpc, f"_grpc._tcp.{svc}", "SRV", [SRV(0, 100, 8080, svc)], 30))
        names.append((grpc, svc, "A", [A(f"10.96.{i // 250}.{i % 250 + 1}")], 30))
    for _ in range(200):
        names.append((kubelet, f"{rng.randint(1, 254)}.{rng.randint(0, 255)}.244.10.in-addr.arpa",
                      "PTR", [PTR("pod.shop.svc.cluster.local")], 30))
    for _ in range(30):
        nib = ".".join(_rand(rng, 32, "0123456789abcdef"))
        names.append((kubelet, f"{nib}.ip6.arpa", "PTR", [PTR("host.example.net")], 30))
    for i in range(50):
        dom = f"customer{i}-mail.com"
        names.append((mta, dom, "MX", [MX(f"mx1.{dom}")], 300))
        names.append((mta, f"_dmarc.{dom}", "TXT", [TXT("v=DMARC1; p=none")], 300))
        names.append((mta, f"selector1._domainkey.{dom}", "TXT",
                      [TXT("v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQ")], 300))
    for i in range(150):
        site = rng.choice(["news", "shop", "mail", "docs", "static", "img", "api", "cdn"])
        names.append((browser, f"{site}.example{i % 40}.com", "A", [A(_ip(rng))], 300))
    for i in range(4):
        names.append((ntp, f"{i}.pool.ntp.org", "A", [A(_ip(rng))], 150))
    rng.shuffle(names)
    for proc, name, qtype, answers, ttl in names:
        wire.exchange(proc, t, name, qtype, answers=answers, ttl=ttl)
        if qtype == "A":
            wire.exchange(proc, t + 100_000, name, "AAAA", answers=[], ttl=ttl)
        t += step


def tunnel_client(wire: Wire, rng: random.Random, domain: str, start_ns: int,
                  count: int = 40, qtype: str = "TXT") -> None:
    """A tunnel: base32 of random bytes in 1-3 labels under `domain`, one query a second."""
    proc = Proc(3001, "updater", "10.244.1.9")
    for i in range(count):
        data = base32 = base64.b32encode(rng.randbytes(rng.randint(20, 70))).decode()
        data = base32.rstrip("=").lower()
        labels = [data[j:j + 57] for j in range(0, len(data), 57)]
        name = f"{i:x}." + ".".join(labels) + "." + domain
        wire.exchange(proc, start_ns + i * 1_000_000_000, name, qtype,
                      answers=[TXT(base64.b64encode(rng.randbytes(60)).decode())])


def dga_client(wire: Wire, rng: random.Random, start_ns: int, count: int = 40) -> None:
    """Malware trying generated domains: NXDOMAIN for each, a few per second."""
    proc = Proc(3002, "kworker-x", "10.244.1.10")
    for i in range(count):
        name = _rand(rng, rng.randint(12, 18), "abcdefghijklmnopqrstuvwxyz0123456789") + \
            rng.choice([".com", ".net", ".org", ".info"])
        wire.exchange(proc, start_ns + i * 200_000_000, name, "A", rcode="NXDOMAIN")


def above(findings: list[Finding], severity: str) -> list[Finding]:
    return [f for f in findings if f.rank > severity_rank(severity)]


@pytest.fixture(scope="module")
def busy_capture(tmp_path_factory: pytest.TempPathFactory) -> Any:
    wire = Wire()
    busy_node(wire, random.Random(7))
    return load(wire.write(tmp_path_factory.mktemp("busy") / "cap"))


def test_busy_capture_is_what_it_claims(busy_capture: Any) -> None:
    tx = busy_capture.transactions
    assert len(tx) > 2000
    assert (tx["status"] == "answered").all()
    assert tx["qname"].str.endswith("cloudfront.net").sum() == 500  # A + AAAA
    assert tx["qname"].str.endswith(".ip6.arpa").sum() == 30


def test_busy_ordinary_traffic_raises_nothing_above_low(busy_capture: Any) -> None:
    findings = find(busy_capture)
    assert above(findings, "low") == [], [(f.kind, f.severity, f.domain, f.explanation)
                                          for f in above(findings, "low")]


def test_busy_plus_tunnel_is_flagged(tmp_path: Path) -> None:
    rng = random.Random(11)
    wire = Wire()
    busy_node(wire, rng)
    tunnel_client(wire, rng, "t.exfil-example.com", T0 + 5 * 10**9)
    cap = load(wire.write(tmp_path / "cap"))
    tun = [f for f in find(cap) if f.kind == "tunneling" and f.rank >= 2]
    assert [(f.registered_domain, f.comm, f.pid) for f in tun] == \
        [("exfil-example.com", "updater", 3001)]
    assert tun[0].metrics["distinct_subdomains"] == 40
    assert tun[0].evidence and all({"ts", "query", "answer"} <= set(e) for e in tun[0].evidence)


def test_busy_plus_dga_is_flagged(tmp_path: Path) -> None:
    rng = random.Random(12)
    wire = Wire()
    busy_node(wire, rng)
    dga_client(wire, rng, T0 + 3 * 10**9)
    cap = load(wire.write(tmp_path / "cap"))
    storms = [f for f in find(cap) if f.kind == "nxdomain_storm"]
    assert [(f.severity, f.comm) for f in storms] == [("high", "kworker-x")]
    assert storms[0].metrics["nxdomain"] == 40


BROWSER = Proc(2005, "chrome", "10.244.1.8")  # the same program as in busy_node


def _with_new_domain(out: Path, seed: int = 7) -> Path:
    wire = Wire()
    busy_node(wire, random.Random(seed))
    t = T0 + 60 * 10**9
    wire.exchange(BROWSER, t, "c2.evil-new.com", "A", answers=[A("203.0.113.77")], ttl=60)
    wire.connect(BROWSER, t + 50_000_000, "203.0.113.77", 443)
    return wire.write(out)


def test_new_domain_against_a_baseline(busy_capture: Any, tmp_path: Path) -> None:
    cap = load(_with_new_domain(tmp_path / "cap"))
    findings = find(cap, baseline=busy_capture)
    new = [(f.kind, f.severity, f.registered_domain, f.comm) for f in findings
           if f.kind in ("new_domain", "new_domain_connect")]
    assert sorted(new) == [("new_domain", "medium", "evil-new.com", "chrome"),
                           ("new_domain_connect", "medium", "evil-new.com", "chrome")]
    # without the baseline: only the first-seen-late connect, at low
    plain = [(f.kind, f.severity) for f in find(cap)
             if f.kind in ("new_domain", "new_domain_connect")]
    assert plain == [("new_domain_connect", "low")]
    joined = [f for f in find(cap) if f.kind == "dns_to_connect" and f.comm == "chrome"]
    assert joined and joined[0].metrics["delay_p50_ms"] == 48.0  # answer at +2 ms


def test_new_domain_with_an_allow_file(tmp_path: Path) -> None:
    cap = load(_with_new_domain(tmp_path / "cap"))
    allow = tmp_path / "allow.txt"
    allow.write_text(
        "# workload          domain\n"
        "host/*              *.net\n"
        "host/*              *.com\n"
        "host/node_exporter  *.arpa\n"
        "*/*                 *.org\n"
    )
    assert [f for f in find(cap, allow=allow) if f.kind == "new_domain"] == []
    allow.write_text("host/*  *.net\nhost/*  *.org\nhost/chrome  *example*.com\n"
                     "host/chrome  *.googlevideo.com\nhost/envoy  *.com\n"
                     "host/postfix-smtpd  *.com\n")
    new = [(f.registered_domain, f.comm) for f in find(cap, allow=allow)
           if f.kind == "new_domain"]
    assert new == [("evil-new.com", "chrome")]
    allow.write_text("host/chrome *.com but-more\n")
    from analyze.findings.new_domain import AllowFileError

    with pytest.raises(AllowFileError, match="allow.txt:1"):
        find(cap, allow=allow)


def test_slow_and_failing_resolvers(tmp_path: Path) -> None:
    """A nameserver answering in 1.2 s, another answering SERVFAIL to a third of queries."""
    wire = Wire()
    app = Proc(5001, "api-server", "10.244.3.3")
    for i in range(12):
        wire.exchange(app, T0 + i * 2 * 10**9, f"svc{i}.example.org", "A",
                      answers=[A("192.0.2.1")], latency_ns=1_200_000_000)
    cap = load(wire.write(tmp_path / "slow"))
    slow = [f for f in find(cap) if f.kind == "resolver_errors"]
    assert [(f.severity, f.metrics["queries"]) for f in slow] == [("medium", 12)]
    assert 1100 < slow[0].metrics["latency_p95_ms"] < 1300

    wire = Wire()
    for i in range(30):
        wire.exchange(app, T0 + i * 10**9, f"svc{i}.example.org", "A",
                      rcode="SERVFAIL" if i % 3 == 0 else "NOERROR",
                      answers=[] if i % 3 == 0 else [A("192.0.2.1")])
    cap = load(wire.write(tmp_path / "servfail"))
    failing = [f for f in find(cap) if f.kind == "resolver_errors"]
    assert [(f.severity, f.metrics["servfail"]) for f in failing] == [("medium", 10)]

    wire = Wire()
    for i in range(30):  # a healthy resolver: fast, no errors
        wire.exchange(app, T0 + i * 10**9, f"svc{i}.example.org", "A", answers=[A("192.0.2.1")])
    cap = load(wire.write(tmp_path / "healthy"))
    assert [f for f in find(cap) if f.kind.startswith("resolver_")] == []


def test_resolver_errors_names_the_clients_affected(tmp_path: Path) -> None:
    """Two processes share a nameserver that fails a third of their queries, a third
    process asks it only names it answers: the finding names the two, worst first."""
    wire = Wire()
    api = Proc(5001, "api-server", "10.244.3.3")
    worker = Proc(5002, "worker", "10.244.3.4")
    fine = Proc(5003, "cron", "10.244.3.5")
    for i in range(30):
        fail = i % 3 == 0
        wire.exchange(api, T0 + i * 10**9, f"svc{i}.example.org", "A",
                      rcode="SERVFAIL" if fail else "NOERROR",
                      answers=[] if fail else [A("192.0.2.1")])
    for i in range(12):
        fail = i % 4 == 0
        wire.exchange(worker, T0 + i * 10**9 + 500_000_000, f"job{i}.example.org", "A",
                      rcode="SERVFAIL" if fail else "NOERROR",
                      answers=[] if fail else [A("192.0.2.2")])
        wire.exchange(fine, T0 + i * 10**9 + 700_000_000, "ok.example.org", "A",
                      answers=[A("192.0.2.3")])
    cap = load(wire.write(tmp_path / "servfail"))
    (f,) = [f for f in find(cap) if f.kind == "resolver_errors"]
    assert f.metrics["servfail"] == 13
    assert f.metrics["affected_clients"] == [
        {"client": "api-server[5001]", "queries": 30, "failed": 10},
        {"client": "worker[5002]", "queries": 12, "failed": 3},
        {"client": "cron[5003]", "queries": 12, "failed": 0},
    ]
    assert f.explanation.endswith(
        "2 clients affected: api-server[5001] (10 of 30 failed), worker[5002] (3 of 12 failed).")
    assert "cron" not in f.explanation
    assert {e["client"] for e in f.evidence} == {"api-server[5001]", "worker[5002]"}
    assert all(e["answer"].startswith("SERVFAIL") for e in f.evidence), f.evidence


def test_new_domain_connect_is_raised_by_corroborating_findings(tmp_path: Path) -> None:
    """The same program tunnels under a domain and connects to a new one: medium, not low."""
    rng = random.Random(21)
    wire = Wire()
    busy_node(wire, rng)
    tunnel_client(wire, rng, "t.exfil-example.com", T0 + 5 * 10**9)
    updater = Proc(3001, "updater", "10.244.1.9")  # the tunnel client's process
    t = T0 + 70 * 10**9
    wire.exchange(updater, t, "drop.stage2-example.net", "A", answers=[A("198.51.100.9")])
    wire.connect(updater, t + 30_000_000, "198.51.100.9", 8443)
    wire.connect(updater, t + 40 * 10**9, "93.184.216.34", 443)  # hard-coded, public (data only)
    wire.connect(BROWSER, t + 41 * 10**9, "93.184.216.35", 443)  # same, nothing else odd
    cap = load(wire.write(tmp_path / "cap"))
    unresolved = {f.comm: f.severity for f in find(cap) if f.kind == "unresolved_connect"}
    assert unresolved == {"updater": "medium", "chrome": "low"}
    hits = [f for f in find(cap) if f.kind == "new_domain_connect"]
    assert [(f.severity, f.registered_domain) for f in hits] == \
        [("medium", "stage2-example.net")]
    assert hits[0].metrics["corroborated_by"] == ["tunneling"]
    only = find(cap, kinds=["new_domain_connect"])  # nothing to corroborate: stays low
    assert [f.severity for f in only] == ["low"]


def test_payload_in_the_second_level_label(tmp_path: Path) -> None:
    """Data moved into the registered domain itself: every query a new long random .com."""
    rng = random.Random(31)
    wire = Wire()
    busy_node(wire, rng)
    proc = Proc(3003, "sync-agent", "10.244.1.11")
    for i in range(45):
        sld = base64.b32encode(rng.randbytes(20)).decode().rstrip("=").lower()  # 32 chars
        wire.exchange(proc, T0 + i * 10**9, f"{sld}.com", "A", answers=[A("192.0.2.7")])
    cap = load(wire.write(tmp_path / "cap"))
    hits = [f for f in find(cap) if f.kind == "tunneling"]
    assert [(f.domain, f.severity, f.comm) for f in hits] == [("*.com", "medium", "sync-agent")]
    assert hits[0].metrics["long_random_second_level_labels"] == 45


def _docs(findings: list[Finding]) -> list[str]:
    import json

    return sorted(json.dumps(f.to_dict(), sort_keys=True) for f in findings)


def test_findings_are_the_same_when_the_capture_is_split(busy_capture: Any,
                                                          tmp_path: Path) -> None:
    """The detectors run on one part of a big capture at a time (analyze.findings.partition):
    split into the smallest parts there are, every finding (kind, subject, metrics, evidence)
    equals the whole capture's, with a tunnel, a DGA, a new domain connected to and a
    baseline in the mix."""
    from analyze.findings.partition import plan

    rng = random.Random(31)
    wire = Wire()
    busy_node(wire, rng)
    tunnel_client(wire, rng, "t.exfil-example.com", T0 + 5 * 10**9)
    dga_client(wire, rng, T0 + 3 * 10**9)
    t = T0 + 60 * 10**9
    wire.exchange(BROWSER, t, "c2.evil-new.com", "A", answers=[A("203.0.113.77")], ttl=60)
    wire.connect(BROWSER, t + 50_000_000, "203.0.113.77", 443)
    cap = load(wire.write(tmp_path / "cap"))
    layout = plan(cap, target=1)
    assert layout is not None and len(layout) >= 5  # really split, by client
    flat = [h for part in layout for h in part]
    assert len(flat) == len(set(flat))  # no identity in two parts
    for kw in ({}, {"baseline": busy_capture}):
        whole = find(cap, partition_rows=0, **kw)
        split = find(cap, partition_rows=1, **kw)
        assert {f.kind for f in whole} >= {"tunneling", "nxdomain_storm",
                                           "new_domain_connect", "dns_to_connect"}
        assert _docs(split) == _docs(whole)
    # every transaction is in exactly one part
    total = sum(cap.restricted(part).count("transactions") for part in layout)
    assert total == cap.count("transactions")
