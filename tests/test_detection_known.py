"""Known encoded-lookup services and busy benign traffic at scale.

Captures in the capture format from real DNS wire messages (dnslib queries and responses,
written with ``analyze.pcap.write_capture`` by ``tests.test_findings_wire.Wire``): antivirus
and reputation lookups (Sophos, McAfee GTI, ESET, Trend Micro), DNSBLs, DKIM TXT, CDN chains,
Apple push, service discovery and reverse lookups. The tunnel rules see encoded data in many
of them; the known-services list keeps them visible at info/low with the reason, and
``--allow`` (``Settings.allow``) does the same for a service the list does not know.
"""

from __future__ import annotations

import base64
import random
import time
from pathlib import Path
from typing import Any

import pytest
from dnslib import AAAA, PTR, SRV, TXT, A

from analyze import load
from analyze.findings import Finding, find, severity_rank
from analyze.findings.settings import SettingsError, load_settings
from tests.test_findings_wire import T0, Proc, Wire, busy_node

AV = Proc(4001, "savd", "10.244.2.5")
MTA = Proc(4002, "postfix-smtpd", "10.244.2.6")
PHONE = Proc(4003, "apsd", "10.244.2.7")
SCANNER = Proc(4004, "scanner", "10.244.2.8")


def _hex(rng: random.Random, n: int) -> str:
    return rng.randbytes(n).hex()


def encoded_services(wire: Wire, rng: random.Random, start: int = T0) -> None:
    """A node's antivirus, mail filter and phone traffic: names full of hashes by design."""
    t = start
    step = 250_000_000
    for _ in range(40):  # Sophos: file hash lookups
        wire.exchange(AV, t, f"{_hex(rng, 20)}.{_hex(rng, 4)}.3.sxl.sophosxl.net", "A",
                      answers=[A("127.0.0.1")], ttl=3600)
        t += step
    for _ in range(30):  # McAfee GTI file reputation
        wire.exchange(AV, t, f"0.0.0.0.1.{_hex(rng, 16)}.avqs.mcafee.com", "A",
                      answers=[A("127.0.0.128")], ttl=600)
        t += step
    for _ in range(30):  # ESET LiveGrid
        b32 = base64.b32encode(rng.randbytes(25)).decode().rstrip("=").lower()
        wire.exchange(AV, t, f"{b32}.a.e5.sk", "A", answers=[A("127.0.0.2")], ttl=600)
        t += step
    for _ in range(30):  # Trend Micro web reputation
        wire.exchange(AV, t, f"{_hex(rng, 18)}.wrs.trendmicro.com", "A",
                      answers=[A("127.0.0.64")], ttl=600)
        t += step
    for _ in range(60):  # DNSBLs for every sender address, A and TXT
        ip = ".".join(str(rng.randint(1, 254)) for _ in range(4))
        for zone in ("zen.spamhaus.org", "b.barracudacentral.org", "bl.spameatingmonkey.net"):
            wire.exchange(MTA, t, f"{ip}.{zone}", "A", rcode="NXDOMAIN")
            wire.exchange(MTA, t + 1_000_000, f"{ip}.{zone}", "TXT", rcode="NXDOMAIN")
        t += step
    for _ in range(30):  # DKIM keys of one big sender: a new selector per message
        key = base64.b64encode(rng.randbytes(160)).decode()
        wire.exchange(MTA, t, f"s{_hex(rng, 12)}._domainkey.bulk-sender.com", "TXT",
                      answers=[TXT(f"v=DKIM1; k=rsa; p={key}")], ttl=300)
        t += step
    for n in range(1, 40):  # Apple push couriers
        wire.exchange(PHONE, t, f"{n}-courier.push.apple.com", "A",
                      answers=[A(f"17.57.{n}.{rng.randint(1, 254)}")], ttl=60)
        t += step


def scanner(wire: Wire, rng: random.Random, domain: str, start: int = T0) -> None:
    """An in-house scanner nobody listed: hash lookups under its own domain."""
    for i in range(30):
        wire.exchange(SCANNER, start + i * 200_000_000, f"{_hex(rng, 20)}.{domain}", "A",
                      answers=[A("127.0.0.1")], ttl=60)


def _tunneling(findings: list[Finding]) -> dict[str, Finding]:
    return {str(f.registered_domain or f.domain): f for f in findings if f.kind == "tunneling"}


@pytest.fixture(scope="module")
def services_capture(tmp_path_factory: pytest.TempPathFactory) -> Any:
    wire = Wire()
    rng = random.Random(404)
    encoded_services(wire, rng)
    scanner(wire, rng, "scan.example-av.com")
    return load(wire.write(tmp_path_factory.mktemp("known") / "cap"))


def test_known_services_stay_visible_at_info_or_low(services_capture: Any) -> None:
    findings = find(services_capture)
    hits = _tunneling(findings)
    # the rules alone flag these (encoded data in the names or the answers) ...
    for rd, service in (("sophosxl.net", "Sophos Extensible List (SXL)"),
                        ("mcafee.com", "McAfee Global Threat Intelligence"),
                        ("e5.sk", "ESET LiveGrid"),
                        ("trendmicro.com", "Trend Micro Smart Protection"),
                        ("bulk-sender.com", "DKIM, SPF, DMARC and MTA-STS")):
        assert rd in hits, (rd, sorted(hits))
        f = hits[rd]
        assert f.metrics["known_service"] == service
        # ... at medium or more; the list keeps them visible, lowered, with the reason
        assert severity_rank(f.metrics["severity_by_rules"]) >= severity_rank("medium")
        assert f.severity in ("info", "low")
        assert f.explanation.startswith(f"Known encoded-lookup service: {service}")
    # the unlisted scanner is what a tunnel looks like
    assert hits["example-av.com"].rank >= severity_rank("medium")
    assert "known_service" not in hits["example-av.com"].metrics
    # (nxdomain_storm, from rates.py, still counts the DNSBL's NXDOMAINs: not judged here)
    loud = [(f.kind, f.severity, f.domain) for f in findings if f.rank > severity_rank("low")
            and f.registered_domain != "example-av.com" and f.kind != "nxdomain_storm"]
    assert loud == []


def test_allow_extends_the_list(services_capture: Any) -> None:
    settings = load_settings(allow=["scan.example-av.com"])
    f = _tunneling(find(services_capture, settings=settings))["example-av.com"]
    assert f.severity in ("info", "low") and f.metrics["known_service"] == "allowed by --allow"
    assert "scan.example-av.com" in f.explanation
    # a parent domain allows its subdomains; another domain allows nothing here
    f = _tunneling(find(services_capture, settings=load_settings(allow=["example-av.com."])))
    assert f["example-av.com"].metrics.get("known_service") == "allowed by --allow"
    f = _tunneling(find(services_capture, settings=load_settings(allow=["other.example"])))
    assert "known_service" not in f["example-av.com"].metrics
    with pytest.raises(SettingsError, match="not a domain"):
        load_settings(allow=["bad..name"])


def busy_at_scale(wire: Wire, rng: random.Random, names: int) -> None:
    """Tens of thousands of ordinary names over ten minutes from a few dozen clients."""
    procs = [Proc(6000 + i, f"app-{i}", f"10.244.4.{i + 1}") for i in range(24)]
    t = T0
    step = 600 * 10**9 // names
    kinds = ("cdn", "cloud", "svc", "ptr", "dkim", "dnsbl", "video", "web")
    for i in range(names):
        p = procs[i % len(procs)]
        kind = kinds[rng.randrange(len(kinds))]
        if kind == "cdn":
            wire.exchange(p, t, f"e{rng.randint(1000, 99999)}.{rng.choice('abcdefg')}."
                          "akamaiedge.net", "A", answers=[A("23.1.2.3")], ttl=20)
        elif kind == "cloud":
            a, b, c, d = (rng.randint(1, 254) for _ in range(4))
            wire.exchange(p, t, f"ec2-{a}-{b}-{c}-{d}.compute-1.amazonaws.com", "A",
                          answers=[A(f"{a}.{b}.{c}.{d}")], ttl=60)
        elif kind == "svc":
            svc = f"svc{rng.randint(0, 400)}.ns{rng.randint(0, 20)}.svc.cluster.local"
            wire.exchange(p, t, f"_http._tcp.{svc}", "SRV", answers=[SRV(0, 100, 80, svc)],
                          ttl=30)
        elif kind == "ptr":
            wire.exchange(p, t, f"{rng.randint(1, 254)}.{rng.randint(0, 255)}.244.10."
                          "in-addr.arpa", "PTR", answers=[PTR("pod.cluster.local")], ttl=30)
        elif kind == "dkim":
            dom = f"sender{rng.randint(0, 3000)}.com"
            wire.exchange(p, t, f"selector{rng.randint(1, 2)}._domainkey.{dom}", "TXT",
                          answers=[TXT("v=DKIM1; k=rsa; p=" + base64.b64encode(
                              rng.randbytes(140)).decode())], ttl=300)
        elif kind == "dnsbl":
            ip = ".".join(str(rng.randint(1, 254)) for _ in range(4))
            wire.exchange(p, t, f"{ip}.zen.spamhaus.org", "A", rcode="NXDOMAIN")
        elif kind == "video":
            wire.exchange(p, t, f"rr{rng.randint(1, 20)}---sn-{_hex(rng, 4)}.googlevideo.com",
                          "AAAA", answers=[AAAA("2a00:1450::1")], ttl=300)
        else:
            wire.exchange(p, t, f"{rng.choice(['www', 'api', 'img', 'static'])}."
                          f"site{rng.randint(0, 2000)}.com", "A", answers=[A("198.51.100.1")],
                          ttl=300)
        t += step


def test_busy_benign_traffic_at_scale_raises_nothing_above_low(tmp_path: Path) -> None:
    rng = random.Random(2026)
    wire = Wire()
    busy_at_scale(wire, rng, 24_000)
    busy_node(wire, rng)
    encoded_services(wire, rng, T0 + 30 * 10**9)
    cap = load(wire.write(tmp_path / "cap"), work_dir=tmp_path / "work")
    assert cap.count("transactions") > 25_000
    assert cap.sql("SELECT count(DISTINCT qname) AS n FROM transactions")["n"][0] > 20_000
    started = time.monotonic()
    findings = find(cap, kinds=["tunneling", "resolver_unreachable", "resolver_errors"])
    seconds = time.monotonic() - started
    loud = [(f.kind, f.severity, f.domain, f.explanation[:200]) for f in findings
            if f.rank > severity_rank("low")]
    assert loud == []
    assert seconds < 120  # bounded work on a busy capture (2 shared cores)
