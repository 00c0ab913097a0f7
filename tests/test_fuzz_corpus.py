"""The fuzz regression corpus (tests/fuzz/corpus/<target>/): every crasher and slow input the
fuzzers found, and the seeds, through the same entry points and the same property. Then the two
shapes the issue names end to end: non-DNS traffic on port 53 (iodine's raw mode) and an
oversized SIG answer over TCP (CVE-2020-1350), imported, loaded and reported."""

from __future__ import annotations

import json
import struct
import time
import tracemalloc
from pathlib import Path

import html5lib
import jsonschema
import pytest

from analyze.decode import MAX_RECORDS, decode_message, decode_messages, decode_table
from analyze.pcap import import_pcap
from tests.corpus import CORPUS
from tests.fuzz import wire
from tests.fuzz.targets import check_decode, check_pcap, check_tcp, corpus_files

DECODE = list(corpus_files("decode"))
TCP = list(corpus_files("tcp"))
PCAP = list(corpus_files("pcap"))
#: Largest corpus file kept (the corpus is for regressions, not bulk).
MAX_CORPUS_FILE = 16 * 1024
SIGRED_QUERY = wire.header(1, flags=0x0100) + wire.question(wire.name(b"sigred", b"example"), 24)


def test_corpus_is_there_and_small() -> None:
    for files in (DECODE, TCP, PCAP):
        assert any(f.name.startswith("seed-") for f in files)
        for f in files:
            assert f.stat().st_size <= MAX_CORPUS_FILE, f"{f.name} is too big for the corpus"
    assert any(f.name.startswith(("crash-", "slow-")) for f in DECODE)


@pytest.mark.parametrize("path", DECODE, ids=[p.name for p in DECODE])
def test_decode_corpus(path: Path) -> None:
    check_decode(path.read_bytes())


@pytest.mark.parametrize("path", TCP, ids=[p.name for p in TCP])
def test_tcp_corpus(path: Path) -> None:
    check_tcp(path.read_bytes())


@pytest.mark.parametrize("path", PCAP, ids=[p.name for p in PCAP])
def test_pcap_corpus(path: Path, tmp_path: Path) -> None:
    rows = check_pcap(path.read_bytes(), tmp_path)
    if path.name != "seed-cut.pcap":
        assert rows, "a seed capture imports rows"


def test_crashers_decode_as_fixed() -> None:
    # a pointer at the id bytes: decode_message and the batch path (id set aside) disagreed
    row = decode_message((Path(DECODE[0]).parent / "crash-pointer-to-id").read_bytes())
    assert row["error"] == "pointer into header" and row["qname"] is None
    # a cycle of labels through two pointers under RRSIG signers: seconds per record in
    # dnslib's name reader; now the scan reads those names (loop refused at once)
    slow = (Path(DECODE[0]).parent / "slow-rrsig-label-cycle").read_bytes()
    start = time.perf_counter()
    row = decode_message(slow)
    assert time.perf_counter() - start < 0.5
    assert [r[1] for r in row["answers"]] == ["NULL"] + ["RRSIG"] * 4
    assert all(r[3].startswith("\\# ") for r in row["answers"][1:])


def _widest_message() -> bytes:
    """MAX_RECORDS - 1 CNAME answers, owner and target a pointer to a 255-octet question name:
    the most text one 64 KiB payload can make the decoder build."""
    qname = wire.name(b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 61)
    rrs = wire.rr(wire.pointer(12), 5, wire.pointer(12)) * (MAX_RECORDS - 1)
    return wire.header(1, MAX_RECORDS - 1) + wire.question(qname) + rrs


def test_widest_message_is_bounded_in_time_and_memory() -> None:
    msg = _widest_message()
    assert len(msg) < 65536
    decode_message(msg)  # warm the registered-domain memo
    tracemalloc.start()
    try:
        start = time.perf_counter()
        row = decode_message(msg)
        took = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert row["error"] is None and len(row["answers"]) == MAX_RECORDS - 1
    assert len(row["qname"]) == 253
    # 4095 records of two 253-character names: a few MB, however the pointers are arranged
    assert peak < 32 << 20, f"peak {peak >> 20} MiB"
    assert took < 2.0
    frame = decode_messages([msg] * 50)  # 50 copies: decoded once (the memo), shared lists
    assert len(frame) == 50 and frame["answers"].iloc[49] is frame["answers"].iloc[0]


@pytest.fixture(scope="module")
def hostile_pcap_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pcap with iodine's raw packets on UDP 53 and a SIGRed-shaped answer over TCP."""
    tmp = tmp_path_factory.mktemp("hostile-pcap")
    query, sig = SIGRED_QUERY, wire.oversized_sig()
    frames = [wire.ether(wire.ipv4(17, wire.udp(40000 + i, 53, wire.iodine_raw(100 + i))))
              for i in range(5)]
    frames += wire.tcp_stream([query], sport=41000, dport=53, src="10.0.0.1", dst="10.0.0.53")
    frames += wire.tcp_stream([sig], sport=53, dport=41000, src="10.0.0.53", dst="10.0.0.1",
                              seq=5000)
    path = tmp / "hostile.pcap"
    path.write_bytes(wire.pcap_file(frames))
    summary = import_pcap(path, tmp / "cap")
    assert summary.udp == 5 and summary.file_damaged is None
    return tmp / "cap"


def test_non_dns_and_sigred_import_and_report(hostile_pcap_capture: Path) -> None:
    from analyze import load
    from analyze.findings import find
    from analyze.report import render
    from analyze.report.schema import REPORT_SCHEMA

    cap = load(hostile_pcap_capture)
    msgs = cap.sql("SELECT protocol, qtype, error, octet_length(payload) AS n FROM messages "
                   "ORDER BY protocol, n")
    udp = msgs[msgs["protocol"] == "udp"]
    assert len(udp) == 5 and udp["error"].notna().all()  # iodine's packets: rows with errors
    tcp = msgs[msgs["protocol"] == "tcp"]
    assert list(tcp["n"]) == [len(SIGRED_QUERY), 65535]  # both messages whole
    assert tcp["error"].isna().all() and set(tcp["qtype"]) == {"SIG"}
    tx = cap.transactions
    assert len(tx[tx["qname"] == "sigred.example"]) == 1
    findings = find(cap)
    doc = json.loads(render(cap, findings, "json"))
    jsonschema.validate(doc, REPORT_SCHEMA)
    html5lib.parse(render(cap, findings, "html", plots=False), namespaceHTMLElements=False)
    assert render(cap, findings, "md").isascii()


def _many_flows_pcap(path: Path, flows: int, size: int) -> Path:
    frames = []
    for i in range(flows):
        src = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        msg = wire.header(1, flags=0x0100) + bytes(size)
        frames.append(wire.ether(wire.ipv4(6, wire.tcp(1024 + i % 60000, 53, 7,
                                                       struct.pack("!H", len(msg)) + msg),
                                           src, "10.255.0.53")))
    path.write_bytes(wire.pcap_file(frames))
    return path


def test_many_tcp_flows_import_in_bounded_memory(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Every flow's last row was held (to patch a later hole into it) even once written: a pcap
    # of many short TCP flows kept all their payloads in memory for the whole import.
    import analyze.pcap

    monkeypatch.setattr(analyze.pcap, "ROWS_PER_FILE", 200)
    monkeypatch.setattr(analyze.pcap, "MAX_FLOWS", 500, raising=False)
    src = _many_flows_pcap(tmp_path / "flows.pcap", 3000, 4000)
    tracemalloc.start()
    try:
        summary = import_pcap(src, tmp_path / "cap")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.tcp == 3000 and summary.messages == 3000
    assert peak < 6 << 20, f"peak {peak >> 20} MiB for 12 MB of payloads"


def test_payloads_that_differ_past_one_mebibyte_keep_their_rows() -> None:
    # The batch decoders keyed each payload by its first MiB after the id: two payloads that
    # differed only later shared one row (and the later bytes read as "truncated rdata").
    def big(address: bytes) -> bytes:
        null = wire.rr(b"\0", 10, b"\0" * 65535)
        return wire.header(0, 17) + null * 16 + wire.rr(b"\0", 1, address)

    a, b = big(b"\1\2\3\4"), big(b"\5\6\7\x08")
    assert len(a) > 1 << 20
    rows = decode_table([a, b]).to_pylist()
    assert [r["answer_ips"] for r in rows] == [["1.2.3.4"], ["5.6.7.8"]]
    assert [r["error"] for r in rows] == [None, None]
    assert list(decode_messages([a, b])["answer_ips"]) == [["1.2.3.4"], ["5.6.7.8"]]


def test_pinned_timestamps_import_and_report(tmp_path: Path) -> None:
    # pcapng times past 2262 are pinned to the top of the range; that top was the int64
    # maximum, which DuckDB reads as `infinity`, and the report's overview failed on it
    from analyze import load
    from analyze.findings import find
    from analyze.report import render

    real = wire.real_messages()
    q = wire.ether(wire.ipv4(17, wire.udp(40000, 53, real[0])))
    r = wire.ether(wire.ipv4(17, wire.udp(53, 40000, real[2]), "10.0.0.53", "10.0.0.1"))
    src = tmp_path / "late.pcapng"
    src.write_bytes(wire.pcapng_file([q, r], t0_ns=(1 << 64) - 3000))
    summary = import_pcap(src, tmp_path / "cap")
    assert summary.bad_timestamps == 2 and summary.first_ts.startswith("2262-04-11")
    cap = load(tmp_path / "cap")
    findings = find(cap)
    doc = json.loads(render(cap, findings, "json"))
    assert doc["summary"]["transactions"] >= 1
    assert render(cap, findings, "md") and render(cap, findings, "html", plots=False)


def test_error_strings_are_the_documented_ones() -> None:
    # the property's list of decode errors, the decoder's and docs/decode.md's table agree
    import re

    import analyze.decode
    from tests.fuzz.targets import DECODE_ERRORS

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "decode.md").read_text()
    table = doc.split("### Errors", 1)[1].split("Bounds:", 1)[0]
    documented = set(re.findall(r"^\| `([^`]+)` \|", table, re.MULTILINE))
    raised = set(re.findall(r'_Stop\("([^"]+)"', Path(analyze.decode.__file__).read_text()))
    assert documented == set(DECODE_ERRORS) == raised | {"trailing bytes"}


SHARED = sorted(p for sub in ("tunnels", "benign") for p in (CORPUS / sub).glob("*.pcap*")) \
    if CORPUS.is_dir() else []


@pytest.mark.corpus
@pytest.mark.skipif(not SHARED, reason=f"corpus not found at {CORPUS}")
@pytest.mark.parametrize("path", SHARED, ids=[p.name for p in SHARED])
def test_real_captures_hold_the_property(path: Path, tmp_path: Path) -> None:
    # third-party captures (tunnels among them) through the same property as the fuzz inputs
    rows = check_pcap(path.read_bytes(), tmp_path)
    assert rows
    distinct = sorted({r["payload"] for r in rows if r["protocol"] == "udp"})
    for payload in distinct[:150]:
        check_decode(payload)


def test_hostile_pcap_through_the_cli(hostile_pcap_capture: Path, tmp_path: Path) -> None:
    # the same capture through the commands a responder types: report, then replay
    from click.testing import CliRunner

    from dnstrail.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["report", str(hostile_pcap_capture), "-o",
                               str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and (tmp_path / "r.html").stat().st_size > 0
    res = runner.invoke(main, ["replay", str(hostile_pcap_capture)])
    assert res.exit_code == 0, res.output
    assert "sigred.example" in res.output and "\x1b" not in res.output
