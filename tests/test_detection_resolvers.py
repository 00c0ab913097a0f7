"""resolver_unreachable on tiny captures, from real packets.

glibc's resolver (getent) in a lab network namespace asks nameservers that are silent: the
lab's second dnsmasq, stopped before the queries, and its refused address (the host is up,
nothing listens on port 53). (The lab's dead address is never on the wire: with no host
there, the kernel holds the packets for ARP and drops them, so tcpdump sees nothing.) tcpdump in the namespace
writes the packets to a pcap, the analyzer imports it: a capture of a few queries over a few
seconds, like a responder's first look at a failing pod.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from analyze import load
from analyze.findings import Finding, find
from tests.lab import Lab
from tests.lab.require import require_lab

#: A nameserver that hangs: port 53 open, every query read, none answered (bounded: 120 s).
_HUNG = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
s.settimeout(0.5)
print("ready", flush=True)
end = time.monotonic() + 120
while time.monotonic() < end:
    try:
        s.recvfrom(4096)
    except socket.timeout:
        pass
"""


def _tcpdump(lab: Lab, ns: Any, out: Path) -> Any:
    proc = lab.spawn(ns, ["tcpdump", "-i", "any", "-U", "-B", "32768", "-n", "-Z", "root", "-w", str(out),
                          "udp port 53"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.output()
        if "listening on" in proc.output():
            return proc
        time.sleep(0.05)
    raise AssertionError(f"tcpdump did not start: {proc.output()}")


def _stop(proc: Any) -> None:
    """End tcpdump; a test must not judge a capture that lost packets."""
    time.sleep(1.5)  # the last packets reach the file (a ring block times out in 1 s)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=10)
    out = proc.output()
    assert "\n0 packets dropped by kernel" in out, out


@pytest.fixture(scope="module")
def pcaps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    require_lab()
    out = tmp_path_factory.mktemp("silent")
    with Lab() as lab:
        stopped = next(s for s in lab.servers if s.addr == lab.server2_addr)
        stopped.proc.terminate()
        stopped.proc.wait(timeout=10)
        hung = lab.spawn(lab.server_ns, [sys.executable, "-c", _HUNG, lab.server2_addr])
        deadline = time.monotonic() + 10
        while "ready" not in hung.output():
            assert hung.poll() is None and time.monotonic() < deadline, hung.output()
            time.sleep(0.05)
        silent = lab.client_ns([lab.server2_addr, lab.refused_addr], timeout=1, attempts=2)
        half = lab.client_ns([lab.refused_addr, lab.server_addr], timeout=1, attempts=1)
        retry = lab.client_ns([lab.server2_addr], timeout=3, attempts=3)
        files = {"silent": out / "silent.pcap", "half": out / "half.pcap",
                 "retry": out / "retry.pcap"}
        dumps = [_tcpdump(lab, silent, files["silent"]), _tcpdump(lab, half, files["half"]),
                 _tcpdump(lab, retry, files["retry"])]
        r = lab.resolve_musl(retry, ["www.lab.test"])
        assert r.returncode != 0, r.stdout
        for _ in range(2):
            r = lab.run(silent, ["getent", "ahosts", "www.lab.test"], timeout=30)
            assert r.returncode != 0  # nothing answered
        for _ in range(3):
            r = lab.run(half, ["getent", "ahosts", "www.lab.test"], timeout=30)
            assert "10.213.0.80" in r.stdout  # the second nameserver answers
        for d in dumps:
            _stop(d)
        yield files


def _unreachable(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.kind == "resolver_unreachable"]


@pytest.mark.lab
def test_every_nameserver_silent_is_no_nameserver_answered(pcaps: dict[str, Path],
                                                           tmp_path: Path) -> None:
    cap = load(pcaps["silent"], work_dir=tmp_path)
    tx = cap.transactions
    assert len(tx) > 0 and (tx["status"] == "timeout").all()
    sent = len(tx) + int(tx["retransmissions"].fillna(0).sum())
    assert sent >= 3
    found = _unreachable(find(cap))
    per_server = {f.explanation.split()[1]: f for f in found
                  if f.explanation.startswith("Nameserver ")}
    assert set(per_server) == {"10.213.0.2", "10.213.0.253"}, [f.explanation for f in found]
    assert all(f.severity == "high" for f in per_server.values())
    client = [f for f in found if f.explanation.startswith("No nameserver answered")]
    assert len(client) == 1
    f = client[0]
    assert f.severity == "high"
    assert f.explanation.startswith("No nameserver answered")
    assert f.metrics["nameservers"] == ["10.213.0.2", "10.213.0.253"]
    assert f.metrics["sent"] == sent and f.metrics["span_s"] >= 2.0
    assert f.evidence and all("TIMEOUT" in str(e.get("answer", "")).upper() or
                              e.get("status") == "timeout" for e in f.evidence), f.evidence


@pytest.mark.lab
def test_one_silent_nameserver_of_two(pcaps: dict[str, Path], tmp_path: Path) -> None:
    cap = load(pcaps["half"], work_dir=tmp_path)
    found = _unreachable(find(cap))
    assert [(f.severity, f.explanation.split()[1]) for f in found] == \
        [("high", "10.213.0.253")]
    assert not found[0].metrics.get("no_nameserver_answered")
    assert found[0].metrics["answered"] == 0 and found[0].metrics["sent"] >= 3


@pytest.mark.lab
def test_retransmissions_count_as_queries(pcaps: dict[str, Path], tmp_path: Path) -> None:
    """musl asks a hung nameserver for A and AAAA and resends the same two packets every
    second (timeout:3 attempts:3): two transactions, six queries sent over two seconds."""
    cap = load(pcaps["retry"], work_dir=tmp_path)
    tx = cap.transactions
    assert len(tx) == 2 and tx["retransmissions"].tolist() == [2, 2]
    found = _unreachable(find(cap))
    assert [(f.severity, f.metrics["queries"], f.metrics["sent"]) for f in found] == \
        [("high", 2, 6)]
    f = found[0]
    assert f.metrics["span_s"] >= 2.0 and f.explanation.startswith("Nameserver 10.213.0.2 ")
    # its only nameserver: said on the nameserver's finding, not in a second one
    assert f.metrics["no_nameserver_answered"] and f.metrics["silent_clients"] == 1
    assert "No nameserver answered: it was the only nameserver of its client" in f.explanation


@pytest.mark.lab
def test_a_capture_cut_short_is_not_judged(pcaps: dict[str, Path], tmp_path: Path) -> None:
    """The musl client's capture cut after its first two packets (A and AAAA, no resend
    yet): not judged; with the thresholds set lower (--set resolvers.min_queries=2
    --set silent_span_s=0) it is."""
    from analyze.findings.settings import load_settings

    short = tmp_path / "short.pcap"
    subprocess.run(["tcpdump", "-r", str(pcaps["retry"]), "-c", "2", "-w", str(short)],
                   check=True, capture_output=True)
    cap = load(short, work_dir=tmp_path / "work")
    assert cap.count("transactions") == 2
    assert _unreachable(find(cap)) == []
    loose = load_settings(sets=["resolvers.min_queries=2", "silent_span_s=0"])
    assert {f.severity for f in _unreachable(find(cap, settings=loose))} == {"high"}


def _corpus() -> Path | None:
    """../shared/corpus beside the checkout (a worktree is one level deeper)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "shared" / "corpus").is_dir():
            return parent / "shared" / "corpus"
    return None


@pytest.mark.corpus
def test_corpus_benign_files_have_no_silent_nameserver(tmp_path: Path) -> None:
    """Real captures nobody here made: every nameserver in the benign files answers."""
    corpus = _corpus()
    if corpus is None:
        pytest.skip("../shared/corpus is absent")
    files = sorted((corpus / "benign").iterdir())
    assert files
    for i, path in enumerate(files):
        found = _unreachable(find(load(path, work_dir=tmp_path / str(i))))
        assert found == [], (path.name, [f.explanation for f in found])
