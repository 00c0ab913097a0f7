"""Tunnel names with a search suffix appended, grouped at the tunnel's registered domain.

Real clients in lab network namespaces, recorded with tcpdump into pcaps:
* glibc (Python's getaddrinfo) with a Kubernetes search list plus ``corp.local`` and ndots:5
  asks each tunnel name five times (``<hex>.tunnel.example.com.default.svc.cluster.local`` ...
  ``<hex>.tunnel.example.com.corp.local``, then the name itself): the walk;
* a client that only ever sends the suffixed name (``<hex>.t.example.net.corp.local``, TXT),
  as a Windows client's first try does, with no bare name to pair it with.
Both must be flagged at the registered domain the application asked for, with both names.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from analyze import load
from analyze.findings import Finding, find, severity_rank
from tests.lab import Lab
from tests.lab.require import require_lab
from tests.test_detection_resolvers import _stop, _tcpdump

SEARCH = ["default.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.local"]

#: Bounded: 24 lookups through glibc, each a new 40-hex-character label.
_WALKER = r"""
import os, socket, sys
for i in range(24):
    name = f"{os.urandom(20).hex()}.{i}.tunnel.{sys.argv[1]}"
    try:
        socket.getaddrinfo(name, None)
    except socket.gaierror:
        pass
"""

#: Bounded: 20 TXT queries for suffixed names only, one socket, 0.5 s timeout each.
_SUFFIXED = r"""
import base64, os, socket, sys
from dnslib import DNSRecord
server, domain = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
for i in range(20):
    data = base64.b32encode(os.urandom(25)).decode().rstrip("=").lower()
    s.sendto(DNSRecord.question(f"{data}.{i}.{domain}.corp.local", "TXT").pack(), (server, 53))
    try:
        s.recvfrom(4096)
    except socket.timeout:
        pass
"""


@pytest.fixture(scope="module")
def pcaps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    require_lab()
    out = tmp_path_factory.mktemp("suffix")
    with Lab() as lab:
        walk = lab.client_ns(search=SEARCH, ndots=5, timeout=1, attempts=1)
        plain = lab.client_ns(timeout=1, attempts=1)
        files = {"walk": out / "walk.pcap", "suffixed": out / "suffixed.pcap"}
        dumps = [_tcpdump(lab, walk, files["walk"]), _tcpdump(lab, plain, files["suffixed"])]
        r = lab.run(walk, [sys.executable, "-c", _WALKER, "example.com"], timeout=60)
        assert r.returncode == 0, r.stderr
        r = lab.run(plain, [sys.executable, "-c", _SUFFIXED, lab.server_addr, "t.example.net"],
                    timeout=60)
        assert r.returncode == 0, r.stderr
        for d in dumps:
            _stop(d)
        yield files


def _tunnels(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.kind == "tunneling"]


@pytest.mark.lab
def test_ndots_walk_is_grouped_at_the_asked_domain(pcaps: dict[str, Path],
                                                   tmp_path: Path) -> None:
    cap = load(pcaps["walk"], work_dir=tmp_path)
    names = cap.transactions["qname"]
    # glibc walks every name (A and AAAA; it sometimes leaves out a type on a try)
    assert names.str.endswith(".tunnel.example.com.corp.local").sum() >= 24
    bare = int(names.str.endswith(".tunnel.example.com").sum())
    assert bare >= 24
    hits = _tunnels(find(cap))
    assert [f.registered_domain for f in hits] == ["example.com"], \
        [(f.domain, f.severity) for f in hits]
    f = hits[0]
    assert f.rank >= severity_rank("medium")
    m = f.metrics
    assert m["distinct_subdomains"] == 24
    tail = ".tunnel.example.com"
    walks = {(q[:q.index(tail) + len(tail)], t) for q, t in
             zip(cap.transactions["qname"], cap.transactions["qtype"])}
    assert m["queries"] == len(walks)  # the walk of one name is one query (per type)
    assert "corp.local" in m["search_suffixes"]
    assert "default.svc.cluster.local" in m["search_suffixes"]
    asked, meant = m["suffixed_examples"][0]
    assert asked.startswith(meant + ".") and meant.endswith(".tunnel.example.com")
    assert "search suffix" in f.explanation and meant in f.explanation


@pytest.mark.lab
def test_suffixed_names_alone_are_grouped_at_the_asked_domain(pcaps: dict[str, Path],
                                                              tmp_path: Path) -> None:
    cap = load(pcaps["suffixed"], work_dir=tmp_path)
    assert cap.transactions["qname"].str.endswith(".t.example.net.corp.local").all()
    hits = _tunnels(find(cap))
    assert [f.registered_domain for f in hits] == ["example.net"], \
        [(f.domain, f.severity) for f in hits]
    f = hits[0]
    assert f.rank >= severity_rank("medium")
    assert f.metrics["search_suffixes"] == ["corp.local"]
    assert f.metrics["suffixed_names"] == 20
    assert all(".t.example.net.corp.local" in e["query"] for e in f.evidence)
