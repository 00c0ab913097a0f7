"""`dnstrail replay` and `dnstrail import` through click's CliRunner, on real captures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
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


def test_replay_table_fits_80_columns_without_a_terminal(lab_dir: Path) -> None:
    r = CliRunner().invoke(main, ["replay", str(lab_dir)], env={"COLUMNS": None})
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    # the date and the zone head the TIME column (one day), the times follow
    assert lines[0].split()[:4] == ["2017-03-31", "UTC", "WHO", "QUERY"]
    assert len(lines) == 12                    # header + 11 transactions
    assert max(len(ln) for ln in lines) <= 80
    assert any("NXDOMAIN" in ln and "test.chrissand" in ln for ln in lines)
    times = [ln.split()[0] for ln in lines[1:]]
    assert times == sorted(times) and all(len(t) == 12 and t[2] == ":" for t in times)
    wide = CliRunner().invoke(main, ["replay", str(lab_dir), "--width", "160"])
    assert any("25.206.119.75.in-addr.arpa" in ln for ln in wide.output.splitlines())
    assert "PROC" in wide.output.splitlines()[0] and "PROC" not in lines[0]
    assert max(len(ln) for ln in wide.output.splitlines()) <= 160


def test_replay_fits_the_terminal_width_from_columns() -> None:
    sample = Path(__file__).parent.parent / "samples" / "incident"
    narrow = CliRunner().invoke(main, ["replay", str(sample)], env={"COLUMNS": "80"})
    wide = CliRunner().invoke(main, ["replay", str(sample)], env={"COLUMNS": "200"})
    assert narrow.exit_code == 0 and wide.exit_code == 0, wide.output
    n_lines = [ln for ln in narrow.stdout.splitlines()]
    w_lines = [ln for ln in wide.stdout.splitlines()]
    assert max(map(len, n_lines)) <= 80 < max(map(len, w_lines)) <= 200
    # 80 columns cut the pod and the name; 200 show them whole
    assert not any("payments/cart-7c6b8d5f9-q4vnt" in ln for ln in n_lines)
    assert any("payments/cart-7c6b8d5f9-q4vnt" in ln
               and "redis.payments.svc.cluster.local" in ln for ln in w_lines)
    unlimited = CliRunner().invoke(main, ["replay", str(sample), "--width", "0"])
    assert max(map(len, unlimited.stdout.splitlines())) > 200     # nothing cut
    assert "…" not in unlimited.stdout


def test_replay_timeouts_in_words() -> None:
    sample = Path(__file__).parent.parent / "samples" / "incident"
    r = CliRunner().invoke(main, ["replay", str(sample), "--rcode", "TIMEOUT"],
                           env={"COLUMNS": "120"})
    assert r.exit_code == 0, r.output
    rows = r.stdout.splitlines()[1:]
    assert rows and all("TIMEOUT" in ln for ln in rows)
    # the ledger's glibc retried each query once (attempts:2); iodine's last queries, in
    # flight when the lab stopped it, were never retried
    ledger = [ln for ln in rows if "payments/ledger-0" in ln]
    assert ledger and all(ln.rstrip().endswith("1 retry") for ln in ledger)
    assert all(ln.rstrip().endswith("none") for ln in rows if ln not in ledger)
    assert "-+" not in r.stdout and "+1r" not in r.stdout
    lk = CliRunner().invoke(main, ["replay", str(sample), "--lookups", "--width", "0",
                                   "--name", "db.payments.svc.cluster.local*"])
    assert "4 queries, 2 timed out" in lk.stdout, lk.stdout


def test_replay_spanning_midnight_dates_every_row(tmp_path: Path) -> None:
    t0 = int(pd.Timestamp("2026-11-26T23:59:59.5Z").value)
    msgs = []
    for i, ts in enumerate((t0, t0 + 1_000_000_000)):
        q = DNSRecord.question(f"n{i}.example.com", "A")
        q.header.id = 100 + i
        resp = q.reply()
        resp.add_answer(RR(f"n{i}.example.com", QTYPE.A, rdata=A("192.0.2.1"), ttl=5))
        msgs += [(ts, q.pack(), "send"), (ts + 1_000_000, resp.pack(), "recv")]
    table = pa.table({
        "ts": pa.array([m[0] for m in msgs], pa.timestamp("ns", tz="UTC")),
        "tgid": [50] * 4, "comm": ["app"] * 4, "direction": [m[2] for m in msgs],
        "syscall": ["sendto", "recvfrom"] * 2, "sock_id": pa.array([9] * 4, pa.uint64()),
        "protocol": ["udp"] * 4,
        "src_addr": ["10.0.0.2", "10.0.0.53"] * 2, "src_port": [40000, 53] * 2,
        "dst_addr": ["10.0.0.53", "10.0.0.2"] * 2, "dst_port": [53, 40000] * 2,
        "payload": [m[1] for m in msgs],
    })
    out = write_capture(tmp_path / "cap", table, manifest_extra={"source": "ebpf"})
    r = CliRunner().invoke(main, ["replay", str(out), "--width", "100"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("TIME UTC ")
    assert lines[1].startswith("2026-11-26 23:59:59.500 ")
    assert lines[2].startswith("2026-11-27 00:00:00.500 ")


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
    r = runner.invoke(main, ["replay", str(lab_dir), "--format", "json"])
    assert r.exit_code == 2 and "--against" in r.output


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
