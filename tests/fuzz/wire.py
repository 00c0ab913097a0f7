"""Byte builders for the fuzz tests: DNS messages (well-formed and hostile), IP/UDP/TCP packets,
link-layer frames and whole pcap/pcapng files. Plain functions, so the hypothesis strategies,
the corpus seeds and the atheris harnesses build their inputs the same way."""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence

from dnslib import EDNS0, RR, DNSRecord

# --- DNS ----------------------------------------------------------------------------------------


def header(qd: int = 0, an: int = 0, ns: int = 0, ar: int = 0, *, dns_id: int = 0x1234,
           flags: int = 0x8180) -> bytes:
    return struct.pack("!HHHHHH", dns_id, flags, qd, an, ns, ar)


def name(*labels: bytes, end: bytes = b"\x00") -> bytes:
    """Wire form of labels (a length byte each, taken mod 256) then ``end`` (root or pointer)."""
    return b"".join(bytes([len(lab) & 0xFF]) + lab for lab in labels) + end


def pointer(target: int) -> bytes:
    return struct.pack("!H", 0xC000 | (target & 0x3FFF))


def rr(owner: bytes, rtype: int, rdata: bytes, *, rclass: int = 1, ttl: int = 60,
       rdlen: int | None = None) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, ttl & 0xFFFFFFFF,
                               len(rdata) if rdlen is None else rdlen & 0xFFFF) + rdata


def question(qname: bytes, qtype: int = 1, qclass: int = 1) -> bytes:
    return qname + struct.pack("!HH", qtype, qclass)


def real_query(qname: str = "www.example.com", qtype: str = "A") -> bytes:
    q = DNSRecord.question(qname, qtype)
    q.header.id = 0x2A2A  # dnslib draws a random id; seeds must not change between runs
    return bytes(q.pack())


def real_response(qname: str, qtype: str, zone: str, *, edns: bool = False) -> bytes:
    q = DNSRecord.question(qname, qtype)
    q.header.id = 0x2A2B
    r = q.reply()
    for record in RR.fromZone(zone):
        r.add_answer(record)
    if edns:
        r.add_ar(EDNS0(udp_len=1232))
    return bytes(r.pack())


@functools.cache
def real_messages() -> tuple[bytes, ...]:
    """A few real messages of the common shapes (seeds)."""
    return (
        real_query(),
        real_query("_ldap._tcp.dc.example.org", "SRV"),
        real_response("www.example.com", "A", """
www.example.com. 300 IN CNAME edge.example.net.
edge.example.net. 60 IN A 192.0.2.7
edge.example.net. 60 IN A 192.0.2.8""", edns=True),
        real_response("example.com", "MX", "example.com. 60 IN MX 10 mail.example.com."),
        real_response("t.example.com", "TXT", 't.example.com. 5 IN TXT "hello" "a b"'),
        real_response("example.com", "SOA", "example.com. 60 IN SOA ns1.example.com. "
                      "hostmaster.example.com. 1 7200 3600 1209600 300"),
        real_response("v6.example.com", "AAAA", "v6.example.com. 60 IN AAAA 2001:db8::1"),
        real_response("example.com", "CAA", 'example.com. 60 IN CAA 0 issue "ca.example.net"'),
    )


def pointer_loop() -> bytes:
    """A question whose name is a pointer to itself."""
    return header(qd=1, flags=0x0100) + pointer(12) + struct.pack("!HH", 1, 1)


def forward_pointer() -> bytes:
    """A question name pointing past itself, at a name that is really there."""
    return header(qd=1, flags=0x0100) + pointer(14 + 4) + struct.pack("!HH", 1, 1) + name(b"x")


def long_labels() -> bytes:
    """A label announced as 64..127 bytes (a reserved label type) and one of 63."""
    return header(qd=2, flags=0x0100) + question(name(b"a" * 63, b"com")) + question(
        b"\x40" + b"b" * 64 + b"\x00")


def long_name() -> bytes:
    """A 320-octet name: five 63-octet labels."""
    return header(qd=1, flags=0x0100) + question(name(*([b"c" * 63] * 5)))


def long_name_by_pointers() -> bytes:
    """Each answer adds a 63-octet label before a pointer to the previous owner: the fourth
    owner is over 255 octets only through compression."""
    body = question(name(b"q", b"example"))
    msg = bytearray(header(qd=1, an=5) + body)
    prev = 12
    for _ in range(5):
        at = len(msg)
        msg += rr(name(b"d" * 63, end=pointer(prev)), 1, b"\x7f\x00\x00\x01")
        prev = at
    return bytes(msg)


def counts_above_data() -> bytes:
    return header(qd=0xFFFF, an=0xFFFF, ns=0xFFFF, ar=0xFFFF) + question(name(b"a"))


def edns_garbage() -> bytes:
    """Two OPT records (one with a non-root owner, one in the answers) with garbage options
    and a wrong option length."""
    opt_rdata = struct.pack("!HH", 10, 200) + b"\xff" * 9
    return (header(qd=1, an=1, ar=2) + question(name(b"e", b"example")) +
            rr(b"\x00", 41, opt_rdata, rclass=0xFFFF, ttl=0xFF008000) +
            rr(name(b"x"), 41, b"\x00\x0c", rclass=4096) +
            rr(b"\x00", 41, b"", rclass=512, ttl=0x01000000))


def rrsig_label_loop(labels: int = 1500, records: int = 4) -> bytes:
    """A NULL record whose rdata is a cycle of labels through two pointers, and RRSIG records
    whose signer name points into it (dnslib's own name reader followed the cycle until its
    recursion limit: seconds per record)."""
    start = 12 + 1 + 10  # the NULL record's rdata
    body = bytearray()
    while not (len(body) >= 2 * labels and (start + len(body) + 1) & 0xFF == 4):
        body += b"\x01a"  # start + len + 1 is even: it reaches 4 mod 256
    body += pointer(start + len(body) + 1)  # its low byte, 0x04, is read as a label length
    body += b"bbbb" + b"\x01c" * labels + pointer(start)
    msg = bytearray(header(an=1 + records) + rr(b"\x00", 10, bytes(body)))
    rdata = struct.pack("!HBBIIIH", 1, 8, 2, 300, 0, 0, 1) + pointer(start) + b"\0" * 64
    for _ in range(records):
        msg += rr(b"\x00", 46, rdata)
    return bytes(msg)


def oversized_sig(total: int = 65535) -> bytes:
    """The CVE-2020-1350 (SIGRed) shape: a response whose one SIG answer fills a 64 KiB TCP
    message, the signer name compressed to a pointer at the question."""
    q = question(name(b"sigred", b"example"), 24)
    head = header(qd=1, an=1) + q
    fixed = struct.pack("!HBBIIIH", 1, 5, 2, 300, 0, 0, 7) + pointer(12)
    sig_len = total - len(head) - 2 - 10 - len(fixed)
    return head + rr(pointer(12), 24, fixed + b"\x41" * sig_len)


def iodine_raw(n: int = 200) -> bytes:
    """iodine's raw mode: its own packets (magic 0x10d19e) on UDP port 53, not DNS at all."""
    return b"\x10\xd1\x9e\x01" + bytes((i * 37 + 11) & 0xFF for i in range(n))


def hostile_messages() -> dict[str, bytes]:
    return {
        "pointer_loop": pointer_loop(),
        "forward_pointer": forward_pointer(),
        "long_labels": long_labels(),
        "long_name": long_name(),
        "long_name_by_pointers": long_name_by_pointers(),
        "counts_above_data": counts_above_data(),
        "edns_garbage": edns_garbage(),
        "truncated_header": real_query()[:7],
        "iodine_raw": iodine_raw(),
        "pointer_into_header": header(qd=1) + name(b"www", end=pointer(0)) + b"\0\1\0\1",
    }


# --- packets ------------------------------------------------------------------------------------


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, (8 + len(payload)) & 0xFFFF, 0) + payload


def tcp(sport: int, dport: int, seq: int, payload: bytes, *, flags: int = 0x18,
        ack: int = 0) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack, 5 << 4, flags,
                       65535, 0, 0) + payload


def ipv4(proto: int, l4: bytes, src: str = "10.0.0.1", dst: str = "10.0.0.53") -> bytes:
    import socket

    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, (20 + len(l4)) & 0xFFFF, 1, 0x4000, 64, proto,
                      0, socket.inet_aton(src), socket.inet_aton(dst))
    return hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:] + l4


def ipv6(proto: int, l4: bytes, src: str = "fd00::1", dst: str = "fd00::53") -> bytes:
    import socket

    return struct.pack("!IHBB16s16s", 6 << 28, len(l4) & 0xFFFF, proto, 64,
                       socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst)) + l4


def ether(ip: bytes) -> bytes:
    etype = 0x86DD if ip[:1] and ip[0] >> 4 == 6 else 0x0800
    return b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + struct.pack("!H", etype) + ip


def tcp_stream(messages: Sequence[bytes], *, sport: int = 40000, dport: int = 53,
               seq: int = 1000, mss: int = 1460, src: str = "10.0.0.53",
               dst: str = "10.0.0.1") -> list[bytes]:
    """Ethernet frames of one TCP direction: SYN, then the messages (each behind its length
    prefix) in segments of at most ``mss`` bytes."""
    frames = [ether(ipv4(6, tcp(sport, dport, seq, b"", flags=0x02), src, dst))]
    data = b"".join(struct.pack("!H", len(m)) + m for m in messages)
    pos, nxt = 0, seq + 1
    while pos < len(data):
        chunk = data[pos : pos + mss]
        frames.append(ether(ipv4(6, tcp(sport, dport, nxt, chunk), src, dst)))
        pos += len(chunk)
        nxt += len(chunk)
    return frames


# --- files --------------------------------------------------------------------------------------


def pcap_file(frames: Sequence[bytes], linktype: int = 1, *, t0: int = 1_700_000_000,
              big: bool = False, nanos: bool = False) -> bytes:
    e = ">" if big else "<"
    out = bytearray(struct.pack(e + "IHHiIII", 0xA1B23C4D if nanos else 0xA1B2C3D4, 2, 4, 0, 0,
                                262144, linktype))
    for i, frame in enumerate(frames):  # a frame a millisecond
        frac = (i % 1000) * (1_000_000 if nanos else 1000)
        out += struct.pack(e + "IIII", t0 + i // 1000, frac, len(frame), len(frame)) + frame
    return bytes(out)


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def pcapng_file(frames: Sequence[bytes], linktype: int = 1, *,
                t0_ns: int = 1_700_000_000_000_000_000) -> bytes:
    out = bytearray(_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
    out += _block(1, struct.pack("<HHI", linktype, 0, 262144) + struct.pack("<HH", 9, 1)
                  + b"\x09\0\0\0" + b"\0\0\0\0")
    for i, frame in enumerate(frames):
        ts = t0_ns + i * 1000
        out += _block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(frame),
                                     len(frame)) + frame)
    return bytes(out)
