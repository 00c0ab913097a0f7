"""pcap/pcapng import: every corpus file, every link type (real frames re-wrapped), damage."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from analyze.decode import decode_messages
from analyze.errors import AnalyzeError, OutputExists, PcapError, UnsupportedLinkType
from analyze.pcap import import_pcap, write_capture
from analyze.tcp import reassemble
from capture import schema
from tests.corpus import CORPUS

FILES = sorted(p for sub in ("tunnels", "benign") for p in (CORPUS / sub).glob("*.pcap*")) \
    if CORPUS.is_dir() else []
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not found at {CORPUS}")


# --- helpers: read a classic pcap's frames, write pcap/pcapng with any link type ----------

def read_classic(path: Path) -> list[tuple[int, bytes, int]]:
    data = path.read_bytes()
    assert data[:4] == b"\xd4\xc3\xb2\xa1", "helper reads little-endian microsecond pcaps"
    frames, pos = [], 24
    while pos + 16 <= len(data):
        sec, usec, caplen, origlen = struct.unpack_from("<IIII", data, pos)
        frames.append(((sec * 1_000_000 + usec) * 1000, data[pos + 16 : pos + 16 + caplen],
                       origlen))
        pos += 16 + caplen
    return frames


def write_pcap(path: Path, linktype: int, frames: list[tuple[int, bytes, int]], *,
               nanos: bool = False, big: bool = False) -> Path:
    e = ">" if big else "<"
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = bytearray(struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype))
    for ts, frame, orig in frames:
        sec, frac = divmod(ts, 1_000_000_000)
        out += struct.pack(e + "IIII", sec, frac if nanos else frac // 1000, len(frame), orig)
        out += frame
    path.write_bytes(bytes(out))
    return path


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def write_pcapng(path: Path, linktype: int, frames: list[tuple[int, bytes, int]]) -> Path:
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    # if_tsresol = 9 (nanoseconds), then opt_endofopt
    idb = _block(1, struct.pack("<HHI", linktype, 0, 65535)
                 + struct.pack("<HH", 9, 1) + b"\x09\0\0\0" + b"\0\0\0\0")
    out = bytearray(shb + idb)
    for ts, frame, orig in frames:
        out += _block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(frame), orig)
                      + frame)
    path.write_bytes(bytes(out))
    return path


def _ether_to(frame: bytes, kind: str) -> bytes:
    ip = frame[14:]
    etype = frame[12:14]
    if kind == "sll":
        return struct.pack("!HHH8s", 0, 1, 6, frame[6:12]) + etype + ip
    if kind == "sll2":
        return etype + b"\0\0" + struct.pack("!IHBB8s", 2, 1, 0, 6, frame[6:12]) + ip
    if kind == "null":
        return struct.pack("<I", 2) + ip
    if kind == "raw":
        return ip
    if kind == "vlan":
        return frame[:12] + b"\x81\x00\x00\x07" + etype + ip
    raise ValueError(kind)


def _messages(out: Path) -> list[dict[str, object]]:
    return pq.read_table(out / "messages-000001.parquet").to_pylist()  # type: ignore[no-any-return]


# --- corpus --------------------------------------------------------------------------------

@needs_corpus
@pytest.mark.corpus
@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_import_corpus_file(path: Path, tmp_path: Path) -> None:
    out = tmp_path / "cap"
    summary = import_pcap(path, out, command_line=["dnstrail", "import", str(path)])
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(schema.MANIFEST_KEYS) <= set(manifest)
    assert (manifest["source"], manifest["status"], manifest["format"]) == (
        "pcap", "complete", "dnstrail-capture")
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for entry in manifest["files"]:
        f = out / entry["name"]
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        assert hashlib.sha256(f.read_bytes()).hexdigest() == entry["sha256"]
        assert pq.read_metadata(f).num_rows == entry["rows"]
    assert not [p for p in out.iterdir() if p.name.startswith(schema.TMP_PREFIX)]
    table = pq.read_table(out / "messages-000001.parquet")
    assert table.schema.equals(schema.MESSAGES_SCHEMA, check_metadata=False)
    rows = table.to_pylist()
    assert len(rows) == summary.messages > 0
    assert {r["syscall"] for r in rows} == {"pcap"}
    assert all(r["direction"] is None and r["tgid"] is None and r["mono_ns"] is None
               for r in rows)
    assert all(53 in (r["src_port"], r["dst_port"]) for r in rows)
    seqs = [r["seq"] for r in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert summary.packets == summary.messages + summary.skipped_non_dns + \
        summary.tcp_duplicates + summary.skipped_malformed + summary.skipped_fragments
    if shutil.which("tshark"):
        # Every UDP datagram and TCP segment with data on port 53, as tshark counts them.
        flt = "(udp.port == 53) || (tcp.port == 53 && tcp.len > 0)"
        res = subprocess.run(["tshark", "-n", "-r", str(path), "-Y", flt, "-T", "fields",
                              "-e", "frame.number"], capture_output=True, text=True,
                             check=True, timeout=60)
        frames = [int(x) for x in res.stdout.split()]
        assert sorted(seqs) == [f for f in frames if f in set(seqs)] and \
            len(frames) == len(rows) + summary.tcp_duplicates


@needs_corpus
@pytest.mark.corpus
def test_espn_answer_then_syn(tmp_path: Path) -> None:
    import_pcap(CORPUS / "benign" / "http_espn.pcapng", tmp_path / "cap")
    connects = pq.read_table(tmp_path / "cap" / "connects-000001.parquet")
    assert connects.schema.equals(schema.CONNECTS_SCHEMA, check_metadata=False)
    conns = connects.to_pylist()
    assert conns and all(c["protocol"] == "tcp" and c["result"] is None for c in conns)
    msgs = reassemble(pq.read_table(tmp_path / "cap" / "messages-000001.parquet"))
    decoded = decode_messages(msgs["payload"].tolist())
    decoded["ts"] = msgs["ts"]
    espn = decoded[(decoded["qname"] == "www.espn.com") & decoded["qr"].astype(bool)]
    assert len(espn)
    answered = espn.iloc[0]
    ips = set(answered["answer_ips"])
    after = [c for c in conns if c["dst_addr"] in ips and c["ts"] >= answered["ts"]]
    assert after, "a SYN to the address www.espn.com resolved to, after the answer"
    delay = (after[0]["ts"] - answered["ts"]).total_seconds()
    assert 0 <= delay < 0.01


# --- link types (real frames re-wrapped) -----------------------------------------------------

@needs_corpus
@pytest.mark.parametrize("kind,linktype", [("sll", 113), ("sll2", 276), ("null", 0),
                                           ("raw", 101), ("raw", 228), ("vlan", 1)])
@pytest.mark.parametrize("container", ["pcap", "pcap-ns-be", "pcapng"])
def test_link_types_give_the_same_rows(kind: str, linktype: int, container: str,
                                       tmp_path: Path) -> None:
    src = CORPUS / "tunnels" / "dns2tcp.pcap"
    import_pcap(src, tmp_path / "ref")
    ref = _messages(tmp_path / "ref")
    frames = [(ts, _ether_to(f, kind), orig - len(f) + len(_ether_to(f, kind)))
              for ts, f, orig in read_classic(src)]
    if container == "pcapng":
        path = write_pcapng(tmp_path / "x.pcapng", linktype, frames)
    else:
        path = write_pcap(tmp_path / "x.pcap", linktype, frames,
                          nanos=container == "pcap-ns-be", big=container == "pcap-ns-be")
    summary = import_pcap(path, tmp_path / "cap")
    got = _messages(tmp_path / "cap")
    assert summary.link_types == [linktype]
    keys = ("ts", "seq", "protocol", "family", "src_addr", "src_port", "dst_addr", "dst_port",
            "payload", "orig_len", "truncated")
    assert [{k: r[k] for k in keys} for r in got] == [{k: r[k] for k in keys} for r in ref]


def _ipv6_udp(payload: bytes, sport: int, dport: int, *, hop_by_hop: bool) -> bytes:
    src = bytes.fromhex("20010db8000000000000000000000001")
    dst = bytes.fromhex("20010db8000000000000000000000035")
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ext = b"\x11\x00" + b"\x01\x04\x00\x00\x00\x00" if hop_by_hop else b""  # PadN option
    nh = 0 if hop_by_hop else 17
    hdr = struct.pack("!IHBB", 6 << 28, len(ext) + len(udp), nh, 64) + src + dst
    return hdr + ext + udp


def test_ipv6_with_extension_header(tmp_path: Path) -> None:
    from dnslib import DNSRecord

    q = bytes(DNSRecord.question("v6.example", "AAAA").pack())
    frames = [(1_700_000_000_000_000_000, _ipv6_udp(q, 5353, 53, hop_by_hop=True), 0),
              (1_700_000_000_100_000_000, _ipv6_udp(q, 40000, 53, hop_by_hop=False), 0)]
    frames = [(ts, f, len(f)) for ts, f, _ in frames]
    import_pcap(write_pcap(tmp_path / "v6.pcap", 229, frames), tmp_path / "cap")
    rows = _messages(tmp_path / "cap")
    assert [r["family"] for r in rows] == ["inet6", "inet6"]
    assert rows[0]["src_addr"] == "2001:db8::1" and rows[0]["dst_addr"] == "2001:db8::35"
    assert [r["payload"] for r in rows] == [q, q]
    assert decode_messages([r["payload"] for r in rows])["qname"].tolist() == ["v6.example"] * 2


# --- damage --------------------------------------------------------------------------------

@needs_corpus
def test_cut_packets_are_kept_and_flagged(tmp_path: Path) -> None:
    frames = read_classic(CORPUS / "tunnels" / "iodine.pcap")
    cut = [(ts, f[: 14 + 20 + 8 + 20] if i % 2 else f, orig)
           for i, (ts, f, orig) in enumerate(frames)]
    summary = import_pcap(write_pcap(tmp_path / "cut.pcap", 1, cut), tmp_path / "cap")
    rows = _messages(tmp_path / "cap")
    assert len(rows) == len(frames)  # nothing dropped
    assert summary.truncated == len(frames) // 2
    flagged = [r for r in rows if r["truncated"]]
    assert all(len(r["payload"]) == 20 < r["orig_len"] for r in flagged)
    decoded = decode_messages([r["payload"] for r in flagged])
    assert decoded["error"].notna().all()


def _duplicate_frame(src: Path, frame: int, dst: Path) -> Path:
    """Copy a little-endian pcapng file with one enhanced packet block (frame) sent twice."""
    data = src.read_bytes()
    out, pos, n = bytearray(), 0, 0
    while pos < len(data):
        btype, length = struct.unpack_from("<II", data, pos)
        raw = data[pos : pos + length]
        out += raw
        if btype == 6:
            n += 1
            if n == frame:
                out += raw
        pos += length
    dst.write_bytes(bytes(out))
    return dst


@needs_corpus
def test_retransmitted_syn_is_one_connect(tmp_path: Path) -> None:
    src = CORPUS / "benign" / "http_espn.pcapng"
    import_pcap(src, tmp_path / "ref")
    ref = pq.read_table(tmp_path / "ref" / "connects-000001.parquet").to_pylist()
    summary = import_pcap(_duplicate_frame(src, ref[0]["seq"], tmp_path / "dup.pcapng"),
                          tmp_path / "cap")
    got = pq.read_table(tmp_path / "cap" / "connects-000001.parquet").to_pylist()
    assert summary.syn_retransmissions == 1
    assert len(got) == len(ref)


@needs_corpus
def test_retransmitted_tcp_segment_is_dropped_once(tmp_path: Path) -> None:
    src = CORPUS / "benign" / "dns_tcp.pcapng"
    import_pcap(src, tmp_path / "ref")
    ref = _messages(tmp_path / "ref")
    # Re-read the frames through tshark-free means: the ref rows tell which frames are TCP.
    tcp_seq = next(r["seq"] for r in ref if r["protocol"] == "tcp")
    summary = import_pcap(_duplicate_frame(src, tcp_seq, tmp_path / "dup.pcapng"),
                          tmp_path / "cap")
    assert summary.tcp_duplicates == 1
    a = reassemble(pq.read_table(tmp_path / "ref" / "messages-000001.parquet"))
    b = reassemble(pq.read_table(tmp_path / "cap" / "messages-000001.parquet"))
    assert a["payload"].tolist() == b["payload"].tolist()
    assert b["stream_error"].isna().all()


@pytest.mark.parametrize("content", [b"", b"hello, this is text\n", b"\x0a\x0d\x0d\x0a\x1c"])
def test_not_a_pcap_is_a_one_line_error(content: bytes, tmp_path: Path) -> None:
    bad = tmp_path / "notes.pcap"
    bad.write_bytes(content)
    with pytest.raises(PcapError) as info:
        import_pcap(bad, tmp_path / "cap")
    msg = str(info.value)
    assert "\n" not in msg and str(bad) in msg
    assert isinstance(info.value, AnalyzeError)
    assert not (tmp_path / "cap").exists()  # nothing written for a bad file


@pytest.mark.parametrize("writer", [write_pcap, write_pcapng])
def test_unsupported_link_type(writer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = writer(tmp_path / "wifi.cap", 105, [(0, b"\0" * 40, 40)])
    with pytest.raises(UnsupportedLinkType, match="unsupported link type 105"):
        import_pcap(path, tmp_path / "cap")
    assert not (tmp_path / "cap").exists()


@needs_corpus
def test_output_must_be_empty_and_append_continues(tmp_path: Path) -> None:
    src = CORPUS / "benign" / "dns_lab.pcapng"
    out = tmp_path / "cap"
    first = import_pcap(src, out)
    with pytest.raises(OutputExists):
        import_pcap(src, out)
    import_pcap(CORPUS / "benign" / "dns_reverse_lookup.pcapng", out, append=True)
    manifest = json.loads((out / "manifest.json").read_text())
    names = [f["name"] for f in manifest["files"]]
    assert "messages-000002.parquet" in names
    second = pq.read_table(out / "messages-000002.parquet").to_pylist()
    assert min(r["seq"] for r in second) > first.packets
    assert manifest["counts"]["messages"] == first.messages + len(second)


def test_write_capture_round_trip(tmp_path: Path) -> None:
    import pyarrow as pa
    from dnslib import DNSRecord

    q = bytes(DNSRecord.question("w.example", "A").pack())
    msgs = pa.table({"ts": pa.array([1_700_000_000_000_000_000], pa.timestamp("ns", "UTC")),
                     "protocol": ["udp"], "payload": pa.array([q], pa.binary())})
    out = write_capture(tmp_path / "cap", msgs, None, {"host": "node-a"})
    manifest = schema.read_manifest(out)
    assert manifest["host"] == "node-a" and manifest["status"] == "complete"
    rows = _messages(out)
    assert rows[0]["payload"] == q and rows[0]["orig_len"] == len(q) and rows[0]["seq"] == 1


@needs_corpus
def test_messages_split_across_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import analyze.pcap as pcap_mod

    monkeypatch.setattr(pcap_mod, "ROWS_PER_FILE", 100)
    summary = import_pcap(CORPUS / "tunnels" / "sods.pcap", tmp_path / "cap")
    manifest = schema.read_manifest(tmp_path / "cap")
    files = sorted(f["name"] for f in manifest["files"] if f["kind"] == "messages")
    assert len(files) >= 10
    assert all(f["rows"] <= 100 for f in manifest["files"] if f["kind"] == "messages")
    seqs = [s for name in files
            for s in pq.read_table(tmp_path / "cap" / name).column("seq").to_pylist()]
    assert len(seqs) == summary.messages == 986
    assert seqs == sorted(seqs)
    assert manifest["counts"]["messages"] == 986


@needs_corpus
def test_fuzzed_files_import_or_fail_cleanly(tmp_path: Path) -> None:
    import random

    rng = random.Random(20261126)
    sources = [p.read_bytes() for p in FILES if p.stat().st_size < 200_000]
    imported = refused = 0
    for i in range(300):
        data = bytearray(rng.choice(sources))
        for _ in range(rng.randint(1, 6)):
            op = rng.randrange(3)
            if op == 0:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif op == 1:
                del data[rng.randrange(8, len(data)):]
            else:
                pos = rng.randrange(len(data))
                data[pos:pos + 4] = rng.randbytes(4)
        path = tmp_path / f"f{i}.pcap"
        path.write_bytes(bytes(data))
        try:
            import_pcap(path, tmp_path / f"o{i}")
        except AnalyzeError as exc:
            assert "\n" not in str(exc)
            refused += 1
            continue
        imported += 1
        manifest = schema.read_manifest(tmp_path / f"o{i}")
        assert manifest["status"] == "complete"
        for entry in manifest["files"]:
            pq.read_table(tmp_path / f"o{i}" / entry["name"])
        shutil.rmtree(tmp_path / f"o{i}")
    assert imported and refused  # both paths were exercised
