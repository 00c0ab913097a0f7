"""`dnstrail replay` and `dnstrail import` through click's CliRunner, on real captures."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner
from dnslib import QTYPE, RR, A, DNSRecord

from analyze.pcap import write_capture
from analyze.replay import fit, sanitize
from dnstrail.cli import main
from tests.corpus import corpus


@pytest.fixture
def lab_dir(tmp_path: Path) -> Path:
    out = tmp_path / "cap"
    r = CliRunner().invoke(main, ["import", str(corpus("benign/dns_lab.pcapng")), "-o",
                                  str(out)])
    assert r.exit_code == 0, r.output
    assert "22 packets, 22 DNS messages" in r.output
    return out


def test_replay_table_fits_80_columns(lab_dir: Path) -> None:
    r = CliRunner().invoke(main, ["replay", str(lab_dir)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split()[:3] == ["TIME", "WHO", "QUERY"]
    assert len(lines) == 12                    # header + 11 transactions
    assert max(len(ln) for ln in lines) <= 80
    assert any("NXDOMAIN" in ln and "test.chrissand" in ln for ln in lines)
    times = [ln.split()[0] for ln in lines[1:]]
    assert times == sorted(times)
    wide = CliRunner().invoke(main, ["replay", str(lab_dir), "--width", "160"])
    assert any("25.206.119.75.in-addr.arpa" in ln for ln in wide.output.splitlines())
    assert "PROC" in wide.output.splitlines()[0] and "PROC" not in lines[0]
    assert max(len(ln) for ln in wide.output.splitlines()) <= 160


def test_replay_filters_and_modes(lab_dir: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["replay", str(lab_dir), "--rcode", "NXDOMAIN"])
    assert r.exit_code == 0 and len(r.output.splitlines()) == 2
    r = runner.invoke(main, ["replay", str(lab_dir), "--name", "*.google.com", "--messages"])
    assert r.exit_code == 0 and len(r.output.splitlines()) == 5     # 2 queries + 2 answers
    r = runner.invoke(main, ["replay", str(lab_dir), "--lookups", "--since", "+3s"])
    assert r.exit_code == 0, r.output
    assert len(r.output.splitlines()) == 3
    r = runner.invoke(main, ["replay", str(lab_dir), "--lookups", "--messages"])
    assert r.exit_code != 0


def test_replay_jsonl_is_full_fidelity(lab_dir: Path) -> None:
    r = CliRunner().invoke(main, ["replay", str(lab_dir), "--format", "jsonl"])
    assert r.exit_code == 0
    rows = [json.loads(ln) for ln in r.output.splitlines()]
    assert len(rows) == 11
    arpa = [x for x in rows if x["qtype"] == "PTR"]
    assert arpa[0]["qname"] == "25.206.119.75.in-addr.arpa"
    assert all(0.025 <= x["latency_s"] <= 0.1 for x in rows)
    msgs = CliRunner().invoke(main, ["replay", str(lab_dir), "--format", "jsonl", "--messages"])
    first = json.loads(msgs.output.splitlines()[0])
    assert bytes.fromhex(first["payload"])[2:4] == b"\x01\x00"    # an RD query, from the wire


def test_replay_errors_are_one_line(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["replay", str(tmp_path / "missing")])
    assert r.exit_code == 1
    assert r.output.strip().startswith("Error:") and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(main, ["replay", str(tmp_path)])
    assert r.exit_code == 1 and "not a dnstrail capture" in r.output
    r = CliRunner().invoke(main, ["import", str(tmp_path / "none.pcap"), "-o",
                                  str(tmp_path / "x")])
    assert r.exit_code == 1 and r.output.startswith("Error:")


def test_hostile_strings_are_sanitized_in_the_table(tmp_path: Path) -> None:
    name = "x\x1b[2J.evil.example"
    q = DNSRecord.question("evil.example", "A")
    q.header.id = 7
    resp = q.reply()
    resp.add_answer(RR("evil.example", QTYPE.A, rdata=A("10.0.0.1"), ttl=5))
    t0 = 1_790_000_000_000_000_000
    table = pa.table({
        "ts": pa.array([t0, t0 + 1_000_000], pa.timestamp("ns", tz="UTC")),
        "tgid": [50, 50], "comm": ["ev\x1b]0;pwn\x07il\u202e", "ev\x1b]0;pwn\x07il\u202e"],
        "direction": ["send", "recv"], "syscall": ["sendto", "recvfrom"],
        "sock_id": pa.array([9, 9], pa.uint64()), "protocol": ["udp", "udp"],
        "src_addr": ["10.0.0.2", "10.0.0.53"], "src_port": [40000, 53],
        "dst_addr": ["10.0.0.53", "10.0.0.2"], "dst_port": [53, 40000],
        "payload": [q.pack(), resp.pack()],
    })
    out = write_capture(tmp_path / "cap", table, manifest_extra={"source": "ebpf"})
    r = CliRunner().invoke(main, ["replay", str(out), "--width", "120"])
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\x07" not in r.output and "\u202e" not in r.output
    assert "ev\\x1b]0;pwn\\x07i" in r.output         # shown escaped (and cut to fit)
    assert sanitize(name) == "x\\x1b[2J.evil.example"
    assert fit("abcdef", 4) == "abc…" and fit("abc", 4) == "abc"


def test_import_append_and_ports(tmp_path: Path) -> None:
    out = tmp_path / "cap"
    runner = CliRunner()
    a = runner.invoke(main, ["import", str(corpus("benign/dns_lab.pcapng")), "-o", str(out)])
    assert a.exit_code == 0
    again = runner.invoke(main, ["import", str(corpus("benign/dns_lab.pcapng")), "-o",
                                 str(out)])
    assert again.exit_code == 1 and "Error:" in again.output
    b = runner.invoke(main, ["import", str(corpus("benign/dns_query_nonexistent.pcapng")),
                             "-o", str(out), "--append", "--port", "5353"])
    assert b.exit_code == 0, b.output
    r = runner.invoke(main, ["replay", str(out), "--rcode", "NXDOMAIN"])
    assert len(r.output.splitlines()) == 3
