"""`dnstrail export`: pcapng read back by tshark, dns.log by a Zeek log reader, jsonl and csv.

Two captures: the bundled real recording (samples/incident: pods, namespaces, containers) and
one written from real DNS wire messages (dnslib) with IPv4 and IPv6, UDP and TCP, a timeout
and hostile names (``wire_capture``, also used by tests/test_injection.py). Every output is
parsed by an independent reader and compared with the capture's own rows.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from click.testing import CliRunner
from dnslib import AAAA, QTYPE, RR, TXT, A, DNSLabel, DNSQuestion, DNSRecord

from analyze import export as export_mod
from analyze import load
from analyze.export import (
    COLUMNS,
    ZEEK_FIELDS,
    BadOutput,
    UnknownFormat,
    csv_cell,
    export,
    printable,
)
from analyze.pcap import write_capture
from dnstrail.cli import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "incident"
T0 = 1_790_000_000_000_000_000

#: Names from the wire that try to be live in some output (HTML, Markdown, a terminal, a
#: spreadsheet) or are not UTF-8.
HOSTILE_LABELS = [
    [b"<script>alert(1)</script>", b"com"],
    [b"[x](javascript:alert(1))", b"a|b", b"com"],
    [b"=cmd|' /C calc'!A0", b"com"],
    [b"+1+1", b"com"],
    [b"-2", b"com"],
    [b"@sum(1)", b"com"],
    [b"\x1b[31mred\x1b[0m", b"\x1b]0;owned\x07", b"com"],
    [b"\xff\xfe\xc3(", b"com"],
    [b"\tTAB", b"\rCR", b"com"],
]
HOSTILE_TXT = [b"\x1b]0;owned\x07", b"<img src=x onerror=alert(1)>",
               b"[x](javascript:alert(1)) | a | b", b"=HYPERLINK(\"http://x\")", b"\xff\xfe"]
#: A process name set by the process itself (prctl PR_SET_NAME): raw escapes included.
HOSTILE_COMM = "\x1b[31m=evil|<b>"


def _rows() -> tuple[list[dict[str, Any]], int]:
    rows: list[dict[str, Any]] = []
    dns_id = [100]

    def message(t: int, payload: bytes, direction: str, src: str, sport: int, dst: str,
                dport: int, *, comm: str, tgid: int, protocol: str = "udp",
                sock: int = 1) -> None:
        family = "inet6" if ":" in src else "inet"
        rows.append({
            "ts": t, "mono_ns": t - T0 + 10**12, "tgid": tgid, "tid": tgid, "uid": 1000,
            "comm": comm, "cgroup_id": 5000 + tgid, "netns": 4026531000 + tgid,
            "syscall": ("sendto" if direction == "send" else "recvfrom") if protocol == "udp"
            else ("write" if direction == "send" else "read"),
            "direction": direction, "fd": 5, "sock_id": tgid * 1000 + sock, "msg_index": 0,
            "protocol": protocol, "family": family, "src_addr": src, "src_port": sport,
            "dst_addr": dst, "dst_port": dport, "payload": payload, "orig_len": len(payload),
            "truncated": False})

    def exchange(t: int, name: Any, qtype: str, answers: list[Any], *, client: str,
                 server: str, comm: str, tgid: int, port: int, protocol: str = "udp",
                 respond: bool = True, rcode: int = 0) -> None:
        q = DNSRecord(q=DNSQuestion(name, getattr(QTYPE, qtype)))
        q.header.id = dns_id[0]
        dns_id[0] += 1
        qb = q.pack()
        prefix = (lambda b: len(b).to_bytes(2, "big") + b) if protocol == "tcp" else bytes
        message(t, prefix(qb), "send", client, port, server, 53, comm=comm, tgid=tgid,
                protocol=protocol, sock=port)
        if not respond:
            return
        r = q.reply()
        r.header.rcode = rcode
        for rdata in answers:
            rtype = {A: "A", AAAA: "AAAA", TXT: "TXT"}[type(rdata)]
            r.add_answer(RR(name, getattr(QTYPE, rtype), rdata=rdata, ttl=120))
        message(t + 1_500_000, prefix(r.pack()), "recv", server, 53, client, port,
                comm=comm, tgid=tgid, protocol=protocol, sock=port)

    t = T0
    exchange(t, "api.example.com", "A", [A("192.0.2.10"), A("192.0.2.11")],
             client="10.1.0.5", server="10.96.0.10", comm="curl", tgid=101, port=40001)
    t += 10_000_000
    exchange(t, "v6.example.com", "AAAA", [AAAA("2001:db8::7")], client="fd00::5",
             server="fd00::53", comm="curl", tgid=101, port=40002)
    t += 10_000_000
    exchange(t, "big.example.com", "TXT", [TXT(b"x" * 40)], client="10.1.0.5",
             server="10.96.0.10", comm="dig", tgid=102, port=40003, protocol="tcp")
    t += 10_000_000
    exchange(t, "lost.example.com", "A", [], client="10.1.0.5", server="10.96.0.10",
             comm="curl", tgid=101, port=40004, respond=False)
    t += 10_000_000
    exchange(t, "nope.example.com", "A", [], client="10.1.0.5", server="10.96.0.10",
             comm="curl", tgid=101, port=40005, rcode=3)
    for i, labels in enumerate(HOSTILE_LABELS):
        t += 10_000_000
        # the hostile client asks many times, so findings (rates, tunnels) name it
        for k in range(3):
            exchange(t + k * 1_000_000, DNSLabel(labels), "TXT", [TXT(HOSTILE_TXT)],
                     client="10.1.0.66", server="10.96.0.10", comm=HOSTILE_COMM, tgid=666,
                     port=41000 + i * 10 + k, rcode=3 if k == 2 else 0)
    return rows, t


def wire_capture(out: Path) -> Path:
    """A capture of real DNS wire messages: IPv4, IPv6, TCP, a timeout, NXDOMAIN and the
    hostile names and process name above."""
    rows, _ = _rows()
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    return write_capture(out, pa.table(cols))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return wire_capture(tmp_path_factory.mktemp("wire") / "cap")


def _tshark(path: Path, *fields: str, extra: tuple[str, ...] = ()) -> list[list[str]]:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed (deploy/setup.sh installs it)")
    args = ["tshark", "-r", str(path), "-n", *extra, "-T", "fields", "-E", "separator=\t",
            "-E", "occurrence=a", "-E", "aggregator=,"]
    for f in fields:
        args += ["-e", f]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120)
    return [line.split("\t") for line in out.stdout.splitlines()]


def test_pcapng_read_back_by_tshark_matches_the_messages(tmp_path: Path, work: Path) -> None:
    cap = load(SAMPLE, work_dir=work)
    out = export(cap, tmp_path / "sample.pcapng", "pcapng")
    msgs = cap.messages.sort_values(["ts", "msg_id"], kind="stable").reset_index(drop=True)
    assert out.records == len(msgs) > 0
    got = _tshark(out.path, "frame.comment", "dns.qry.name", "dns.id", "ip.src", "ip.dst",
                  "udp.srcport", "udp.dstport", "frame.time_epoch", "frame.interface_name",
                  "dns.flags.response", "dns.qry.name.len", "udp.payload")
    assert len(got) == len(msgs)
    pods_seen = set()
    binary_names = 0
    for (comment, qname, dns_id, src, dst, sport, dport, epoch, iface, resp, qlen,
         payload), (_, m) in zip(got, msgs.iterrows(), strict=True):
        # the very bytes that were captured, and the name in them
        assert payload == bytes(m.payload).hex()
        wire_name = re.sub(rb"\\(\d{3})", lambda d: bytes([int(d.group(1))]), m.qname.encode())
        assert int(qlen) == len(wire_name)
        if wire_name.isascii():
            # the capture's qname is lower case; tshark shows the case sent (iodine's
            # case check mixes it)
            assert qname.lower() == m.qname
        else:
            binary_names += 1  # iodine's raw labels: tshark renders such bytes lossily
        assert int(dns_id, 16) == m.dns_id
        # an address the probe did not learn is 0.0.0.0 on the wire and said so in the comment
        want_src = m.src_addr if isinstance(m.src_addr, str) else "0.0.0.0"
        want_dst = m.dst_addr if isinstance(m.dst_addr, str) else "0.0.0.0"
        assert (src, dst) == (want_src, want_dst)
        assert (int(sport), int(dport)) == (m.src_port, m.dst_port)
        for side, value in (("src", m.src_addr), ("dst", m.dst_addr)):
            assert (f"{side}_addr=unknown" in comment) == (not isinstance(value, str))
        # nanoseconds survive: tshark prints the epoch with 9 decimals
        sec, frac = epoch.split(".")
        assert int(sec) * 10**9 + int(frac.ljust(9, "0")) == m.ts.value
        assert iface.endswith(f"netns:{m.netns}")
        assert (resp in ("1", "True")) == bool(m.qr)
        assert f"pid={m.tgid}" in comment.split()
        assert f"process={m.comm}" in comment.split()
        assert f"pod={m.pod}" in comment.split()
        assert f"namespace={m.namespace}" in comment.split()
        assert f"container={m.container}" in comment.split()
        pods_seen.add(m.pod)
    assert len(pods_seen) >= 5  # the sample's pods, each on its own interface
    assert binary_names < len(msgs) / 10  # the tunnel's raw labels, not the ordinary names
    ifaces = {row[8] for row in got}
    assert len(ifaces) == msgs.netns.nunique()


def test_pcapng_ipv6_and_tcp(tmp_path: Path, wire: Path, work: Path) -> None:
    cap = load(wire, work_dir=work)
    out = export(cap, tmp_path / "wire.pcapng", "pcapng")
    got = _tshark(out.path, "dns.qry.name", "ipv6.src", "ipv6.dst", "tcp.srcport",
                  "tcp.dstport", "udp.srcport", "dns.a", "dns.aaaa", "frame.comment",
                  "_ws.expert.message", extra=("-o", "tcp.check_checksum:TRUE",
                                               "-o", "udp.check_checksum:TRUE"))
    by_name: dict[str, list[list[str]]] = {}
    for row in got:
        by_name.setdefault(row[0], []).append(row)
    v6 = by_name["v6.example.com"]
    assert [(r[1], r[2]) for r in v6] == [("fd00::5", "fd00::53"), ("fd00::53", "fd00::5")]
    assert v6[1][7] == "2001:db8::7"
    tcp = by_name["big.example.com"]
    assert [(r[3], r[4]) for r in tcp] == [("40003", "53"), ("53", "40003")]
    assert all(r[5] == "" for r in tcp)  # TCP segments, not UDP
    assert by_name["api.example.com"][1][6] == "192.0.2.10,192.0.2.11"
    # checksums are right: tshark reports no bad checksum
    assert not any("checksum" in r[9].lower() and "bad" in r[9].lower() for r in got)
    assert "process=dig" in tcp[0][8]


def test_pcapng_imports_back_to_the_same_transactions(tmp_path: Path, wire: Path,
                                                       work: Path) -> None:
    cap = load(wire, work_dir=work)
    out = export(cap, tmp_path / "wire.pcapng", "pcapng")
    back = load(out.path, work_dir=work)
    cols = ["qname", "qtype", "dns_id", "client_addr", "client_port", "server_addr",
            "server_port", "protocol", "status", "rcode_name"]
    want = cap.transactions[cols].astype(str).sort_values(cols).values.tolist()
    got = back.transactions[cols].astype(str).sort_values(cols).values.tolist()
    assert got == want


def test_zeek_dns_log_read_by_a_zeek_reader(tmp_path: Path, wire: Path, work: Path) -> None:
    from parsezeeklogs import ZeekLog

    cap = load(wire, work_dir=work)
    out = export(cap, tmp_path / "dns.log", "zeek")
    with ZeekLog(out.path) as log:
        assert log.header is not None and tuple(log.header.fields) == ZEEK_FIELDS
        records = list(log)
    txns = cap.transactions.sort_values("txn_id").reset_index(drop=True)
    assert out.records == len(records) == len(txns)
    uids = set()
    for rec, (_, t) in zip(records, txns.iterrows(), strict=True):
        assert abs(rec["ts"] - t.ts.value / 1e9) < 1e-6
        assert rec["id.orig_h"] == t.client_addr and rec["id.orig_p"] == t.client_port
        assert rec["id.resp_h"] == t.server_addr and rec["id.resp_p"] == t.server_port
        assert rec["proto"] == t.protocol and rec["trans_id"] == t.dns_id
        assert rec["qtype_name"] == t.qtype and rec["qtype"] == getattr(QTYPE, t.qtype)
        assert rec["qclass"] == 1 and rec["qclass_name"] == "C_INTERNET"
        assert rec["RD"] is True
        uids.add(rec["uid"])
        # Zeek's escapes decoded give back the name exactly as the capture holds it
        assert rec["query"] == t.qname
        if t.status == "timeout":
            assert rec["rcode"] is None and rec["rtt"] is None and rec["answers"] is None
            continue
        assert rec["rcode_name"] == t.rcode_name and rec["rcode"] == t.rcode
        assert abs(rec["rtt"] - t.latency_s) < 1e-6
        datas = [a["data"] for a in t.answers]
        assert rec["answers"] == (datas or None)
        assert rec["TTLs"] == ([float(a["ttl"]) for a in t.answers] or None)
        assert rec["AA"] is True and rec["RA"] is True  # dnslib's reply() sets both
        assert rec["rejected"] is (not datas)
    assert len(uids) == len(records)
    text = out.path.read_bytes()
    assert all(32 <= b < 127 or b in (9, 10) for b in text)  # ASCII, Zeek-escaped
    for line in text.decode().splitlines():
        if not line.startswith("#"):
            assert line.count("\t") == len(ZEEK_FIELDS) - 1


def test_jsonl_and_csv_one_transaction_per_line(tmp_path: Path, wire: Path,
                                                 work: Path) -> None:
    cap = load(wire, work_dir=work)
    txns = cap.transactions.sort_values("txn_id").reset_index(drop=True)
    j = export(cap, tmp_path / "t.jsonl", "jsonl")
    lines = [json.loads(x) for x in j.path.read_text().splitlines()]
    assert j.records == len(lines) == len(txns)
    assert [x["txn_id"] for x in lines] == txns.txn_id.tolist()
    assert [x["qname"] for x in lines] == txns.qname.tolist()
    assert list(lines[0]) == list(COLUMNS)
    assert lines[0]["answers"] == [dict(a) for a in txns.answers[0]]
    timeout = next(x for x in lines if x["status"] == "timeout")
    assert timeout["latency_s"] is None and timeout["response_ts"] is None
    c = export(cap, tmp_path / "t.csv", "csv")
    with open(c.path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert c.records == len(rows) == len(txns)
    assert list(rows[0]) == list(COLUMNS)
    for row, x in zip(rows, lines, strict=True):
        assert row["txn_id"] == str(x["txn_id"])
        assert row["qname"] == csv_cell(x["qname"])
        assert row["ts"] == x["ts"]
    assert rows[0]["answer_ips"] == "192.0.2.10 192.0.2.11"


@pytest.mark.parametrize("fmt", ["pcapng", "zeek", "jsonl", "csv"])
def test_batches_change_nothing(fmt: str, tmp_path: Path, wire: Path, work: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    cap = load(wire, work_dir=work)
    whole = export(cap, tmp_path / f"whole.{fmt}", fmt)
    monkeypatch.setattr(export_mod, "BATCH_ROWS", 3)
    small = export(cap, tmp_path / f"small.{fmt}", fmt)
    assert small.records == whole.records

    def body(p: Path) -> bytes:  # zeek's #open/#close carry the time of writing
        return b"\n".join(x for x in p.read_bytes().split(b"\n")
                          if not x.startswith((b"#open", b"#close")))

    assert body(small.path) == body(whole.path)


def test_cli_filters_and_errors(tmp_path: Path, work: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "shop.jsonl"
    res = runner.invoke(main, ["export", str(SAMPLE), "--format", "jsonl", "-o", str(out),
                               "--namespace", "shop", "--work-dir", str(work)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    cap = load(SAMPLE, work_dir=work)
    assert len(rows) == cap.filter(namespace="shop").count("transactions") > 0
    assert {r["namespace"] for r in rows} == {"shop"}
    assert f"{len(rows)} transactions -> {out}" in res.output
    res = runner.invoke(main, ["export", str(SAMPLE), "--format", "pcap", "-o", str(out)])
    assert res.exit_code == 2 and "pcapng" in res.output
    res = runner.invoke(main, ["export", str(SAMPLE), "--format", "csv", "-o",
                               str(tmp_path / "x.csv"), "--rcode", "BOGUS",
                               "--work-dir", str(work)])
    assert res.exit_code == 1 and "Error:" in res.output and "BOGUS" in res.output
    assert not (tmp_path / "x.csv").exists()
    with pytest.raises(UnknownFormat):
        export(cap, tmp_path / "y", "xml")
    res = runner.invoke(main, ["export", str(SAMPLE), "--format", "zeek", "-o",
                               str(tmp_path / "missing" / "dns.log"), "--work-dir", str(work)])
    assert res.exit_code == 1 and "no such directory for the export" in res.output
    with pytest.raises(BadOutput):
        export(cap, tmp_path, "csv")
    assert list(tmp_path.glob(".*tmp")) == []  # no half-written file left behind


def test_printable_and_csv_cell() -> None:
    assert printable("a\x1b[31m\u202eb\x00é") == "a\\x1b[31m\\u202eb\\x00é"
    assert csv_cell("=1+2") == "'=1+2" and csv_cell("@x") == "'@x"
    assert csv_cell("-1") == "'-1" and csv_cell("+x") == "'+x"
    assert csv_cell("\tx") == "\\x09x" and csv_cell("ok") == "ok"
