"""The rescue ring (RINGBUF_RETRY in bpf/dnstrail.bpf.c) is read like the main ring.

With nobody reading, a burst fills the 1 MB main ring; the first write it refuses goes to the
1 MB rescue ring, and so on until that is full too; then writes are counted as lost. After the
burst the probe reads both: every message is either a row or counted, and the rows from the
rescue ring are whole."""

from __future__ import annotations

import pyarrow as pa
import pytest

from capture.probe import Probe, ProbeConfig
from tests.lab import Lab
from tests.lab.require import require_root_bcc

pytestmark = pytest.mark.live

QNAME = "www.lab.test"
QNAME_WIRE = b"\x03www\x03lab\x04test\x00"


def drain_messages(probe: Probe, rounds: int = 20) -> list[pa.RecordBatch]:
    """Every message batch left in the rings (a drain reads a bounded number of chunks)."""
    batches: list[pa.RecordBatch] = []
    for _ in range(rounds):
        got = probe.drain()["messages"]
        if not got:
            break
        batches += got
    return batches


def test_rescue_ring_is_read_and_every_message_accounted(lab: Lab) -> None:
    require_root_bcc()
    ns = lab.client_ns()
    cfg = ProbeConfig(comms=("dnsperf",), ringbuf_mb=1, trace_execs=False,
                      trace_connects=False)
    with Probe(cfg) as probe:
        # nobody polls while dnsperf runs: 6000 queries and answers are ~4 MB of records
        res = lab.dnsperf(ns, lab.server_addr, queries=[(QNAME, "A")] * 6000,
                          duration=30, max_qps=5000, extra=["-n", "1"])
        batches = drain_messages(probe)
        lost = probe.lost()["ringbuf_full"]
        stats = probe.stats()
    assert res.sent == 6000
    msgs = pa.Table.from_batches(batches).to_pandas()
    mine = msgs[msgs.netns == ns.inode]
    main_capacity = 2**20 // (8 + 112 + 256)  # records of one small slot in the main ring
    assert stats["rescued_records"] > 0
    assert len(mine) > main_capacity  # more than the main ring alone could have held
    assert len(mine) + lost == res.sent + res.completed
    payloads = [bytes(p) for p in mine.payload]
    assert all(QNAME_WIRE in p and len(p) == n for p, n in zip(payloads, mine.orig_len))
