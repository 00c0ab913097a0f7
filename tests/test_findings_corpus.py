"""Findings on the shared corpus of real captures: every tunnel flagged, no benign file flagged."""

from __future__ import annotations

from pathlib import Path

import pytest

from analyze import load
from analyze.findings import find, severity_rank
from tests.corpus import CORPUS

pytestmark = [
    pytest.mark.corpus,
    pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not present at {CORPUS}"),
]

#: file -> registered domain the tunnel runs under (corpus README).
TUNNELS = {
    "dns2tcp.pcap": "hsc.fr",
    "dnscat2.pcap": "biillpi.com",
    "dnsextrator.pcap": "hsc.fr",
    "iodine.pcap": "biillpi.com",
    "sods.pcap": "hsc.fr",
}


def _files(sub: str) -> list[Path]:
    d = CORPUS / sub
    return sorted(d.iterdir()) if d.is_dir() else []


@pytest.mark.parametrize("name", sorted(TUNNELS))
def test_each_tunnel_is_flagged_at_its_registered_domain(name: str) -> None:
    path = CORPUS / "tunnels" / name
    if not path.exists():
        pytest.skip(f"{path} not in the corpus")
    findings = find(load(path))
    tunnels = [f for f in findings if f.kind == "tunneling"]
    assert tunnels, f"{name}: no tunneling finding"
    top = max(tunnels, key=lambda f: f.rank)
    assert top.rank >= severity_rank("medium")
    assert top.registered_domain == TUNNELS[name]
    # no tunneling finding points anywhere else
    assert {f.registered_domain for f in tunnels} == {TUNNELS[name]}
    assert top.client and top.evidence
    for ev in top.evidence:
        assert ev["query"].split()[0].endswith("." + TUNNELS[name])


@pytest.mark.parametrize("path", _files("benign"), ids=lambda p: p.name)
def test_benign_files_raise_nothing_above_low(path: Path) -> None:
    findings = find(load(path))
    loud = [(f.kind, f.severity, f.domain) for f in findings if f.rank > severity_rank("low")]
    assert loud == []


def test_http_espn_dns_to_connect_delay() -> None:
    """The corpus README: an answer for www.espn.com then a SYN to it about 0.2 ms later."""
    path = CORPUS / "benign" / "http_espn.pcapng"
    if not path.exists():
        pytest.skip(f"{path} not in the corpus")
    findings = [f for f in find(load(path)) if f.kind == "dns_to_connect"]
    assert len(findings) == 1
    f = findings[0]
    espn = [e for e in f.evidence if e["query"].startswith("www.espn.com ")]
    delays = f.metrics["delays_s"]
    assert f.metrics["connects_after_answer"] == len(delays) > 0
    assert min(delays) < 0.001  # the sub-millisecond join of the README
    assert f.metrics["connects_without_answer"] == 0
    assert espn or "www.espn.com" in f.metrics["names"]
