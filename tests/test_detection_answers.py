"""Payload in the answers: download-staging clients whose names are short and templated,
the data riding in TXT or AAAA answers (the class that name entropy and name length miss).

The lab's dnsmasq serves the payload (the zone below) and answers as the clients' resolver;
the clients send real queries from a lab network namespace and tcpdump writes the pcap.
* ``{n}-{nonce}.id-9510.down.x.stage-example.com`` TXT, 200 bytes of base64 each (14);
* ``cdn{n}.stager-example.net`` AAAA, four addresses of payload each (16, DNSStager's shape);
* ``l.{n}.ns.payload-example.pl`` TXT (12: a dozen answers suffice);
* a benign neighbour that polls ``_dmarc.mail-example.org`` TXT and ``config.app-example.com``
  TXT again and again (the same answers) and resolves ``img{n}.static-example.com`` through a
  CDN CNAME chain: no tunneling (only the cache_miss it deserves).
"""

from __future__ import annotations

import base64
import ipaddress
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from analyze import load
from analyze.findings import Finding, find, severity_rank
from tests.lab import Lab
from tests.lab.require import require_lab
from tests.test_detection_resolvers import _stop, _tcpdump


def _zone() -> tuple[dict[str, list[tuple[str, str]]], dict[str, list[tuple[str, str]]]]:
    rng = random.Random(1515)
    stage = {f"{n}-{rng.randint(10000, 99999)}.id-9510.down.x.stage-example.com":
             [("TXT", base64.b64encode(rng.randbytes(150)).decode())] for n in range(14)}
    cdn = {f"cdn{n}.stager-example.net":
           [("AAAA", str(ipaddress.IPv6Address(rng.randbytes(16)))) for _ in range(4)]
           for n in range(16)}
    pl = {f"l.{n}.ns.payload-example.pl":
          [("TXT", base64.b32encode(rng.randbytes(120)).decode())] for n in range(12)}
    benign = {"_dmarc.mail-example.org": [("TXT", "v=DMARC1; p=reject; rua=mailto:d@m.org")],
              "config.app-example.com": [("TXT", "v=1 feature-x=on " + "k" * 150)],
              "edge.cdn-example.net": [("A", "10.213.1.77")]}
    for n in range(20):
        benign[f"img{n}.static-example.com"] = [("CNAME", "edge.cdn-example.net")]
    return {**stage, **cdn, **pl}, benign


#: Ask each name of argv[2:] (NAME:TYPE) through the resolver argv[1], then the benign loop.
_CLIENT = r"""
import socket, sys, time
from dnslib import DNSRecord
server = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
for item in sys.argv[2:]:
    name, qtype = item.rsplit(":", 1)
    s.sendto(DNSRecord.question(name, qtype).pack(), (server, 53))
    try:
        s.recvfrom(4096)
    except socket.timeout:
        pass
    time.sleep(0.02)
"""


@pytest.fixture(scope="module")
def pcaps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    require_lab()
    out = tmp_path_factory.mktemp("answers")
    payload, benign = _zone()
    with Lab({**payload, **benign}) as lab:
        stager = lab.client_ns(timeout=1, attempts=1)
        neighbour = lab.client_ns(timeout=1, attempts=1)
        files = {"stager": out / "stager.pcap", "benign": out / "benign.pcap"}
        dumps = [_tcpdump(lab, stager, files["stager"]),
                 _tcpdump(lab, neighbour, files["benign"])]
        asks = [f"{n}:{'AAAA' if n.startswith('cdn') else 'TXT'}" for n in payload]
        r = lab.run(stager, [sys.executable, "-c", _CLIENT, lab.server_addr, *asks],
                    timeout=60)
        assert r.returncode == 0, r.stderr
        polls = ["_dmarc.mail-example.org:TXT", "config.app-example.com:TXT"] * 20
        imgs = [f"img{n}.static-example.com:A" for n in range(20)]
        r = lab.run(neighbour, [sys.executable, "-c", _CLIENT, lab.server_addr, *polls, *imgs],
                    timeout=60)
        assert r.returncode == 0, r.stderr
        for d in dumps:
            _stop(d)
        yield files


def _tunnels(findings: list[Finding]) -> dict[str, Finding]:
    return {str(f.registered_domain): f for f in findings if f.kind == "tunneling"}


@pytest.mark.lab
def test_download_stagers_are_flagged_at_their_domains(pcaps: dict[str, Path],
                                                       tmp_path: Path) -> None:
    cap = load(pcaps["stager"], work_dir=tmp_path)
    tx = cap.transactions
    assert (tx["status"] == "answered").all() and (tx["ancount"] > 0).all()
    hits = _tunnels(find(cap))
    assert set(hits) == {"stage-example.com", "stager-example.net", "payload-example.pl"}, \
        {d: f.severity for d, f in hits.items()}
    for f in hits.values():
        assert f.rank >= severity_rank("medium"), (f.registered_domain, f.explanation)
        assert "data_names" not in f.metrics["fired"]  # the names alone say nothing
        assert f.metrics["distinct_answer_share"] == 1.0
    stage = hits["stage-example.com"].metrics
    assert stage["answers_with_data"] == 14 and "counter_names" in stage["fired"]
    assert stage["answer_bytes_by_type"]["TXT"] >= 14 * 200
    assert stage["top_template"] == "0-0.id-0.down.x" and stage["counter_share"] == 1.0
    cdn = hits["stager-example.net"].metrics
    assert cdn["answer_bytes_by_type"] == {"A/AAAA": 16 * 4 * 16}
    assert "counter_names" in cdn["fired"]
    pl = hits["payload-example.pl"]
    assert "bulk_answers" in pl.metrics["fired"] and pl.metrics["answers_with_data"] == 12
    # the explanation names the features that fired, with their values
    assert "200 bytes of TXT/NULL/MX/CNAME data per answer" not in pl.explanation
    assert f"{pl.metrics['bulk_bytes_per_data_answer']:.0f} bytes of TXT/NULL/MX/CNAME data" \
        in pl.explanation
    assert "download/upload" in pl.explanation


@pytest.mark.lab
def test_polling_and_cdn_chains_stay_quiet(pcaps: dict[str, Path], tmp_path: Path) -> None:
    cap = load(pcaps["benign"], work_dir=tmp_path)
    assert cap.count("transactions") == 60
    found = find(cap)
    # polling a TTL-300 answer 20 times in a second is a real cache_miss, nothing else is
    loud = [(f.kind, f.severity, f.domain) for f in found
            if f.rank > severity_rank("low") and f.kind != "cache_miss"]
    assert loud == []
    assert _tunnels(found) == {}
    assert {f.kind for f in found} >= {"cache_miss"}


@pytest.mark.corpus
def test_corpus_sods_download_names_alone(tmp_path: Path) -> None:
    """sods' download channel alone (``0-12345.id-1605.down.tun.hsc.fr``, a real capture
    nobody here made): short templated names, the data in CNAME/TXT/NULL answers. The name
    rules see nothing in it; the answer rules flag it at hsc.fr."""
    from tests.test_detection_resolvers import _corpus

    corpus = _corpus()
    if corpus is None or not (corpus / "tunnels" / "sods.pcap").exists():
        pytest.skip("../shared/corpus/tunnels/sods.pcap is absent")
    cap = load(corpus / "tunnels" / "sods.pcap", work_dir=tmp_path)
    down = cap.filter(name="*.down.tun.hsc.fr")
    assert down.count("transactions") > 100
    hits = [f for f in find(down) if f.kind == "tunneling"]
    assert [(f.registered_domain, f.severity) for f in hits] == [("hsc.fr", "high")]
    m = hits[0].metrics
    assert not {"data_names", "bulk_types"} & set(m["fired"])
    assert {"bulk_answers", "template_names"} <= set(m["fired"])
    assert m["top_template"] == "0-0.id-0.down.tun" and m["distinct_answer_share"] >= 0.9
    assert "100% of the names follow one template" in hits[0].explanation
