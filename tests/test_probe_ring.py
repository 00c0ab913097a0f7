"""The probe's ring reader on a ring written by the test: no root, no BPF.

The ring is a memfd laid out as the kernel lays out a BPF ring buffer map (consumer page, then
the producer page, then the data area), mapped by ``Probe._map_ring`` exactly as it maps the
real one. Records are written as the BPF program writes them (8-byte header, the fixed message
header, the payload slot), starting near the end of the ring so that every kind of wrap
happens: a fixed header cut by the end of the ring, a payload cut by it, a short (inline)
payload cut by it, a payload that starts exactly at the ring's start.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
from collections.abc import Iterator

import numpy as np
import pytest

from capture import probe as P

RING = 1 << 20
PAGE = mmap.PAGESIZE
SLOT = 256
STRIDE = (P._MSG_DTYPE.itemsize + SLOT + 8 + 7) & ~7


def _records(n: int, seed: int) -> list[tuple[np.void, bytes]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        r = np.zeros((), P._MSG_DTYPE)
        if i % 10 == 0:  # inline (<= 12 bytes) and longer than the 8 bytes before a wrap
            cap = int(rng.integers(9, 13))
        elif i % 10 == 5:
            cap = int(rng.integers(1, 9))
        else:
            cap = int(rng.integers(13, SLOT + 1))
        v6 = i % 11 == 3
        r["kind"], r["syscall"], r["direction"] = 1, 1 + i % 10, i % 2
        r["protocol"], r["family"] = (6 if i % 3 == 0 else 17), (10 if v6 or i % 7 == 1 else 2)
        r["flags"] = 63 if i % 13 else 63 & ~(1 | 16)  # some rows: no source address, no sock
        r["tgid"], r["tid"], r["uid"], r["netns"] = 100 + i % 4, 200 + i, i % 3, 4026531840
        r["mono_ns"], r["cgroup_id"], r["sock_id"] = 10**9 + 1000 * i, 7 + i % 2, 99 + i
        r["comm"] = [b"dnsperf", b"unbound", b"x" * 16, b"caf\xc3\xa9"][i % 4].ljust(16, b"\0")
        if v6:
            addr = bytes.fromhex("fd000213000000000000000000000001")
        elif r["family"] == 10:  # v4-mapped
            addr = b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1 + i % 3])
        else:
            addr = bytes([10, 0, i % 3, 1]) + b"\0" * 12
        r["src_addr"], r["dst_addr"] = addr, addr
        r["src_port"], r["dst_port"], r["fd"] = 1024 + i, 53, 5
        r["orig_len"], r["cap_len"] = cap + (i % 2) * 10, cap
        out.append((r, rng.integers(0, 256, cap, dtype=np.uint8).tobytes()))
    return out


@pytest.fixture
def ring_fd() -> Iterator[int]:
    fd = os.memfd_create("dnstrail-test-ring")
    os.ftruncate(fd, 2 * PAGE + RING)
    yield fd


def _write_ring(fd: int, start: int, recs: list[tuple[np.void, bytes]]) -> int:
    """Write the records from ring position `start` on (wrapping); return the producer pos."""
    pos = start
    for r, payload in recs:
        length = P._MSG_DTYPE.itemsize + SLOT
        body = struct.pack("<II", length, 0) + r.tobytes() + payload
        body += b"\0" * (STRIDE - len(body))
        at = pos % RING
        first = min(len(body), RING - at)
        os.pwrite(fd, body[:first], 2 * PAGE + at)
        if first < len(body):
            os.pwrite(fd, body[first:], 2 * PAGE)
        pos += STRIDE
    os.pwrite(fd, struct.pack("<Q", start), 0)  # consumer position
    os.pwrite(fd, struct.pack("<Q", pos), PAGE)  # producer position
    return pos


def _addr(family: int, raw: bytes) -> str:
    if family == 2:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if raw[:12] == b"\0" * 10 + b"\xff\xff":
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)


# Starting positions: the 3rd record's fixed header cut by the ring's end; its payload cut
# after 8 bytes; the 11th record's short (inline) payload cut after 8 bytes; a payload
# starting exactly at offset 0; no wrap at all.
_STARTS = {
    "header": RING - 2 * STRIDE - 48,
    "payload": RING - 2 * STRIDE - P._MSG_DTYPE.itemsize - 8 - 8,
    "inline": RING - 10 * STRIDE - P._MSG_DTYPE.itemsize - 8 - 8,
    "payload_at_zero": RING - 2 * STRIDE - P._MSG_DTYPE.itemsize - 8,
    "none": 0,
}


@pytest.mark.parametrize("where", sorted(_STARTS))
def test_ring_records_read_back_exactly(ring_fd: int, where: str) -> None:
    recs = _records(400, seed=len(where))
    prod = _write_ring(ring_fd, _STARTS[where], recs)
    probe = P.Probe(P.ProbeConfig(snaplen=SLOT))
    probe._maps = {"events": ring_fd}
    probe._map_ring(RING)
    try:
        batches = probe.drain()["messages"]
        assert probe.pending_bytes() == 0 and probe._positions()[0] == prod
    finally:
        probe.close()
    rows = [row for b in batches for row in b.to_pylist()]
    assert len(rows) == len(recs)
    for i, (row, (r, payload)) in enumerate(zip(rows, recs, strict=True)):
        flags = int(r["flags"])
        want = {
            "seq": i, "mono_ns": int(r["mono_ns"]), "tgid": int(r["tgid"]),
            "tid": int(r["tid"]), "uid": int(r["uid"]), "netns": int(r["netns"]),
            "cgroup_id": int(r["cgroup_id"]),
            "comm": bytes(r["comm"]).split(b"\0")[0].decode("utf-8", "backslashreplace"),
            "syscall": P.SYSCALLS[int(r["syscall"]) - 1],
            "direction": ("send", "recv")[int(r["direction"])],
            "fd": 5, "sock_id": int(r["sock_id"]) if flags & 16 else None, "msg_index": 0,
            "protocol": "tcp" if r["protocol"] == 6 else "udp",
            "family": "inet6" if r["family"] == 10 else "inet",
            "src_addr": _addr(int(r["family"]), bytes(r["src_addr"])) if flags & 1 else None,
            "dst_addr": _addr(int(r["family"]), bytes(r["dst_addr"])),
            "src_port": int(r["src_port"]), "dst_port": 53, "payload": payload,
            "orig_len": int(r["orig_len"]), "truncated": int(r["orig_len"]) > len(payload),
        }
        got = {k: row[k] for k in want}
        assert got == want, (where, i)


@pytest.mark.parametrize("distinct", [1, 2, 3, 4, 5, 40])
def test_distinct_value_helpers_match_per_row_decoding(distinct: int) -> None:
    """comm and addresses are decoded once per distinct value, by comparison when there are
    a few, by hashing when there are more: both give what a per-row decoding gives."""
    rng = np.random.default_rng(distinct)
    pool = [b"dnsperf", b"unbound", b"x" * 16, b"caf\xc3\xa9", b"\xff\xfe", b"abcdefg"]
    pool += [f"p{i}".encode() for i in range(40)]
    names = [pool[i] for i in rng.integers(0, distinct, 3000)]
    raw = np.array([n.ljust(16, b"\0") for n in names], dtype="V16")
    assert P._strings16(raw).to_pylist() == [
        n.split(b"\0")[0].decode("utf-8", "backslashreplace") for n in names]
    same_len = [b"dnsperf", b"unbound", b"abcdefg"][: min(distinct, 3)]
    names = [same_len[i] for i in rng.integers(0, len(same_len), 3000)]
    raw = np.array([n.ljust(16, b"\0") for n in names], dtype="V16")
    assert P._strings16(raw).to_pylist() == [n.decode() for n in names]

    addrs = np.zeros((3000, 16), dtype=np.uint8)
    pick = rng.integers(0, distinct, 3000)
    addrs[:, 0], addrs[:, 3] = 10, pick
    fam = np.full(3000, 2, dtype=np.uint8)
    mapped = rng.random(3000) < 0.3
    fam[mapped] = 10
    addrs[mapped, 12:] = addrs[mapped, :4]
    addrs[mapped, :12] = 0
    addrs[mapped, 10:12] = 0xFF
    null = rng.random(3000) < (0.1 if distinct > 1 else 0)
    got = P._addresses(fam, addrs.view("V16").reshape(3000), null).to_pylist()
    assert got == [None if z else f"10.0.0.{p}" for z, p in zip(null, pick, strict=True)]


def test_unique_rows_survives_a_hash_collision() -> None:
    """Two different rows built to hash alike (few distinct values: the comparison path)."""
    m0, m1 = int(P._MULTS[0]), int(P._MULTS[1])
    a0, a1, b1 = 12345, 678, 679
    b0 = ((a0 * m0 ^ a1 * m1 ^ b1 * m1) % 2**64) * pow(m0, -1, 2**64) % 2**64
    rows = np.array([[a0, a1], [b0, b1]] * 50, dtype=np.uint64)
    h = rows[:, 0] * P._MULTS[0] ^ rows[:, 1] * P._MULTS[1]
    assert h[0] == h[1]  # the collision is real
    first, inverse = P._unique_rows(rows)
    assert (rows[first[inverse]] == rows).all()
    assert len(first) == 2


@pytest.mark.parametrize(("max_chunks", "expected"), [(None, [200, 200, 50]),
                                                     (1, [100, 100, 100, 100, 50])])
def test_poll_parses_at_most_two_chunks(ring_fd: int, monkeypatch: pytest.MonkeyPatch,
                                        max_chunks: int | None, expected: list[int]) -> None:
    """A recorder that fell behind gets the backlog a bounded piece at a time, in order: two
    chunks per poll by default, one when asked (the recorder while auto caps its CPU)."""
    monkeypatch.setattr(P, "_CHUNK_RECORDS", 100)
    recs = _records(450, seed=9)
    _write_ring(ring_fd, RING - 3 * STRIDE, recs)
    probe = P.Probe(P.ProbeConfig(snaplen=SLOT))
    probe._maps = {"events": ring_fd}
    probe._map_ring(RING)
    sizes, seqs = [], []
    try:
        while batches := probe.poll(timeout_ms=0, max_chunks=max_chunks)["messages"]:
            sizes.append(sum(b.num_rows for b in batches))
            seqs += [s for b in batches for s in b.column("seq").to_pylist()]
        assert probe.pending_bytes() == 0
    finally:
        probe.close()
    assert sizes == expected
    assert seqs == list(range(450))
