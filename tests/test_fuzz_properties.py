"""Property tests (hypothesis) on the three readers of wire bytes: DNS payload -> row, TCP
reassembly, and the pcap importer. The inputs are hostile by construction: compression pointers
(loops, forward, into the header, chains), counts far above the data, labels over 63 bytes,
names over 255, EDNS garbage, truncated headers, random bytes, non-DNS traffic on port 53,
oversized answers. The property (tests/fuzz/targets.py): no exception escapes, every input ends
as rows (decoded or with an error), names obey the limits, output is bounded and deterministic.

Time: ``deadline=None`` (a loaded machine must not make a test flaky); the targets bound the
time of each call themselves (``MAX_SECONDS``, timed twice before it fails). Examples are
capped so the file runs in about 30 s.
"""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import wire
from tests.fuzz.targets import check_decode, check_pcap, check_tcp, tcp_rows

#: DNSTRAIL_FUZZ_SCALE=N runs N times the examples, with a random seed (docs/fuzzing.md); the
#: default run is derandomized, so the suite sees the same inputs every time.
SCALE = max(1, int(os.environ.get("DNSTRAIL_FUZZ_SCALE", "1")))


def examples(n: int) -> settings:
    return settings(max_examples=n * SCALE, deadline=None, derandomize=SCALE == 1,
                    database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- DNS messages -------------------------------------------------------------------------------

RTYPES = (1, 2, 5, 6, 12, 15, 16, 24, 28, 33, 35, 39, 41, 43, 46, 47, 48, 52, 64, 65, 257,
          10, 29, 17, 0, 255, 65535)


@st.composite
def names(draw: st.DrawFn, size: int) -> bytes:
    """A name as it may be on the wire. Mostly sound (so decoding goes on to what follows):
    a few short labels then the root or a pointer to the question (``c0 0c``). Else hostile:
    labels of 0..70 bytes (a length byte over 63 is a reserved type or a pointer), many long
    labels (over 255 octets), a pointer to itself, ahead, into the header, anywhere, or no end.
    """
    hostile = draw(st.integers(0, 19)) >= 17
    if not hostile:
        labels = draw(st.lists(st.sampled_from((b"www", b"a", b"example", b"com", b"\xff\x2e",
                                                b"A.b", b"-" * 63)), min_size=0, max_size=3))
        ptr = size > 12 and draw(st.booleans())
        return wire.name(*labels, end=wire.pointer(12) if ptr else b"\x00")
    if draw(st.booleans()):
        labels = [b"x" * draw(st.integers(60, 63))] * draw(st.integers(3, 6))
    else:
        labels = draw(st.lists(st.binary(min_size=0, max_size=70), max_size=4))
    end = draw(st.sampled_from(("root", "pointer", "self", "ahead", "header", "none")))
    here = size + sum(1 + len(label) for label in labels)
    if end == "pointer":
        tail = wire.pointer(draw(st.integers(12, max(12, size))))
    elif end == "self":
        tail = wire.pointer(here)
    elif end == "ahead":
        tail = wire.pointer(here + draw(st.integers(1, 300)))
    elif end == "header":
        tail = wire.pointer(draw(st.integers(0, 11)))
    elif end == "none":
        tail = b""
    else:
        tail = b"\x00"
    return wire.name(*labels, end=tail)


@st.composite
def rdatas(draw: st.DrawFn, rtype: int, size: int) -> bytes:
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(st.binary(max_size=40))
    if rtype == 1 and choice == 1:
        return bytes(draw(st.binary(min_size=4, max_size=4)))
    if rtype == 28 and choice == 1:
        return bytes(draw(st.binary(min_size=16, max_size=16)))
    if rtype == 16:
        parts = draw(st.lists(st.binary(max_size=30), max_size=3))
        return b"".join(bytes([len(p) + draw(st.integers(0, 1))]) + p for p in parts)
    if rtype == 41:  # EDNS options, lengths right or wrong
        opts = draw(st.lists(st.tuples(st.integers(0, 65535), st.integers(0, 40),
                                       st.binary(max_size=20)), max_size=3))
        return b"".join(struct.pack("!HH", c, n) + v for c, n, v in opts)
    if rtype in (46, 24):  # RRSIG / SIG: fixed part, signer name, signature
        return (struct.pack("!HBBIIIH", 1, 8, 2, 300, 0, 0, 7) + draw(names(size + 18))
                + draw(st.binary(max_size=draw(st.sampled_from((8, 300))))))
    if rtype in (47, 65):  # NSEC next name / HTTPS target
        prefix = b"" if rtype == 47 else b"\x00\x01"
        return prefix + draw(names(size + len(prefix))) + draw(st.binary(max_size=12))
    if rtype == 6:
        return draw(names(size)) + draw(names(size)) + draw(st.binary(min_size=20, max_size=21))
    if rtype in (15, 33):
        head = draw(st.binary(min_size=2 if rtype == 15 else 6, max_size=6))
        return head + draw(names(size + len(head)))
    return draw(names(size))


@st.composite
def dns_messages(draw: st.DrawFn) -> bytes:
    """A DNS message assembled from hostile parts, then perhaps cut or with bytes changed."""
    nq = draw(st.integers(0, 3))
    nr = draw(st.integers(0, 6))
    msg = bytearray(b"\0" * 12)
    for _ in range(nq):
        qtype = struct.pack("!HH", draw(st.sampled_from(RTYPES)), 1)
        msg += draw(names(len(msg))) + draw(st.sampled_from((qtype,) * 12 + (qtype[:3], b"")))
    for _ in range(nr):
        rtype = draw(st.sampled_from(RTYPES))
        owner = draw(names(len(msg)))
        rdata = draw(rdatas(rtype, len(msg) + len(owner) + 10))
        bad_len = draw(st.sampled_from((None,) * 16 + (0, 1, 0xFFFF, len(rdata) + 1)))
        msg += wire.rr(owner, rtype, rdata, rclass=draw(st.sampled_from((1, 1, 3, 4096, 0xFFFF))),
                       ttl=draw(st.sampled_from((0, 60, 0xFFFFFFFF, 0x80000000))), rdlen=bad_len)
    an = draw(st.integers(0, nr))
    ns = draw(st.integers(0, nr - an))
    counts = [nq, an, ns, nr - an - ns]
    if draw(st.integers(0, 3)) == 0:
        counts = [draw(st.sampled_from((c, c + 1, 0, 0xFFFF, 4097))) for c in counts]
    msg[:12] = wire.header(*counts, dns_id=draw(st.integers(0, 0xFFFF)),
                           flags=draw(st.integers(0, 0xFFFF)))
    edit = draw(st.sampled_from(("none", "none", "none", "cut", "flip", "append")))
    if edit == "cut":
        del msg[draw(st.integers(0, len(msg))):]
    elif edit == "flip" and msg:
        for _ in range(draw(st.integers(1, 4))):
            msg[draw(st.integers(0, len(msg) - 1))] = draw(st.integers(0, 255))
    elif edit == "append":
        msg += draw(st.binary(min_size=1, max_size=20))
    return bytes(msg)


@examples(400)
@given(dns_messages())
def test_hostile_messages_decode_to_rows(payload: bytes) -> None:
    check_decode(payload)


@examples(150)
@given(st.binary(max_size=600))
def test_random_bytes_decode_to_rows(payload: bytes) -> None:
    check_decode(payload)


@examples(60)
@given(st.sampled_from(wire.real_messages()), st.integers(0, 200), st.integers(0, 255))
def test_real_messages_edited_decode_to_rows(msg: bytes, at: int, value: int) -> None:
    b = bytearray(msg)
    b[at % len(b)] = value
    check_decode(bytes(b))
    check_decode(msg[: at % len(msg)])


@examples(20)
@given(st.integers(1, 4000), st.integers(0, 0xFFFF))
def test_large_messages_decode_to_rows(records: int, qd: int) -> None:
    # up to MAX_RECORDS records of the smallest size, names compressed to the question's,
    # with the counts right or far above
    q = wire.question(wire.name(b"big", b"example"))
    rrs = wire.rr(wire.pointer(12), 5, wire.pointer(12)) * records
    check_decode(wire.header(1, records, 0, 0) + q + rrs)
    check_decode(wire.header(qd, records * 2, 0, 0) + q + rrs)


@pytest.mark.parametrize("case", sorted(wire.hostile_messages()))
def test_named_hostile_shapes(case: str) -> None:
    row = check_decode(wire.hostile_messages()[case])
    expected = {"pointer_loop": "compression loop", "forward_pointer": "forward pointer",
                "long_labels": "bad label type", "long_name": "name too long",
                "long_name_by_pointers": "name too long",
                "counts_above_data": "count exceeds packet", "edns_garbage": None,
                "truncated_header": "truncated header", "pointer_into_header":
                "pointer into header"}
    if case in expected:
        assert row["error"] == expected[case]
    if case == "edns_garbage":
        assert row["edns_udp_size"] == 0xFFFF and row["qname"] == "e.example"
    if case == "iodine_raw":
        assert row["error"] is not None


# --- TCP reassembly -----------------------------------------------------------------------------


@st.composite
def tcp_inputs(draw: st.DrawFn) -> bytes:
    """tcp_rows input: chunks of framed messages (real, hostile, or random lengths) cut at
    random places, across streams, with some chunks cut short and some UDP rows."""
    stream_bytes = []
    for _ in range(draw(st.integers(1, 3))):
        parts = draw(st.lists(st.one_of(dns_messages(), st.sampled_from(wire.real_messages())),
                              max_size=4))
        data = b"".join(struct.pack("!H", len(p)) + p for p in parts)
        if draw(st.booleans()):
            data += draw(st.binary(max_size=5))  # a dangling prefix or partial message
        stream_bytes.append(data)
    out = bytearray()
    for sid, data in enumerate(stream_bytes):
        pos = 0
        while pos < len(data):
            n = draw(st.integers(1, 80))
            chunk = data[pos : pos + n]
            pos += n
            flags = sid | (draw(st.integers(0, 15)) << 4)
            lost = 0
            if draw(st.integers(0, 9)) == 0:
                flags |= 8
                lost = draw(st.integers(0, 255))
            if draw(st.integers(0, 9)) == 0:
                udp = draw(st.binary(max_size=40))
                out += bytes([4]) + struct.pack("!H", len(udp)) + b"\0" + udp
            out += bytes([flags]) + struct.pack("!H", len(chunk)) + bytes([lost]) + chunk
    return bytes(out)


@examples(120)
@given(tcp_inputs())
def test_tcp_streams_reassemble_to_rows(data: bytes) -> None:
    rows = tcp_rows(data)
    out = check_tcp(data)
    if not any(r["truncated"] for r in rows):
        assert all(r["stream_error"] in (None, "incomplete TCP message") for r in out)


@examples(60)
@given(st.binary(max_size=800))
def test_tcp_random_bytes_reassemble_to_rows(data: bytes) -> None:
    check_tcp(data)


# --- pcap import --------------------------------------------------------------------------------

LINKS = {
    1: lambda ip: wire.ether(ip),
    113: lambda ip: struct.pack("!HHH8s", 0, 1, 6, b"\0" * 8) + (
        b"\x86\xdd" if ip[:1] and ip[0] >> 4 == 6 else b"\x08\x00") + ip,
    0: lambda ip: struct.pack("<I", 30 if ip[:1] and ip[0] >> 4 == 6 else 2) + ip,
    101: lambda ip: ip,
}


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    """One IP packet: UDP or TCP on port 53 (or 5353, or another port), carrying DNS,
    hostile DNS, iodine's raw packets or random bytes; IPv4 or IPv6; maybe damaged."""
    payload = draw(st.one_of(dns_messages(), st.sampled_from(wire.real_messages()),
                             st.just(wire.iodine_raw(60)), st.binary(max_size=60)))
    port = draw(st.sampled_from((53, 53, 5353, 8080)))
    client = draw(st.integers(1024, 65535))
    sport, dport = (client, port) if draw(st.booleans()) else (port, client)
    if draw(st.booleans()):
        l4, proto = wire.udp(sport, dport, payload), 17
    else:
        framed = struct.pack("!H", len(payload)) + payload
        flags = draw(st.sampled_from((0x18, 0x18, 0x02, 0x12, 0x10, 0x11)))
        l4, proto = wire.tcp(sport, dport, draw(st.sampled_from((1, 1000, 0xFFFFFFF0))), framed,
                             flags=flags), 6
    ip = wire.ipv4(proto, l4) if draw(st.booleans()) else wire.ipv6(proto, l4)
    b = bytearray(ip)
    edit = draw(st.sampled_from(("none", "none", "none", "cut", "flip")))
    if edit == "cut":
        del b[draw(st.integers(0, len(b))):]
    elif edit == "flip" and b:
        b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
    return bytes(b)


@st.composite
def pcap_files(draw: st.DrawFn) -> bytes:
    linktype = draw(st.sampled_from(sorted(LINKS)))
    frames = [LINKS[linktype](p) for p in draw(st.lists(packets(), max_size=6))]
    if draw(st.booleans()):
        data = wire.pcap_file(frames, linktype, big=draw(st.booleans()),
                              nanos=draw(st.booleans()))
    else:
        t0 = draw(st.sampled_from((1_700_000_000 * 10**9, 0, (1 << 63) - 5000, (1 << 64) - 9000)))
        data = wire.pcapng_file(frames, linktype, t0_ns=t0)
    b = bytearray(data)
    edit = draw(st.sampled_from(("none", "none", "cut", "flip", "append")))
    if edit == "cut":
        del b[draw(st.integers(0, len(b))):]
    elif edit == "flip":
        for _ in range(draw(st.integers(1, 6))):
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
    elif edit == "append":
        b += draw(st.binary(min_size=1, max_size=40))
    return bytes(b)


@examples(50)
@given(pcap_files())
def test_pcap_files_import_to_rows(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check_pcap(data, Path(tmp))


@examples(25)
@given(st.sampled_from((b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x0a\x0d\x0d\x0a", b"")),
       st.binary(max_size=300))
def test_random_bytes_after_a_magic_import_or_are_refused(magic: bytes, rest: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check_pcap(magic + rest, Path(tmp))
