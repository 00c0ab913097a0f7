"""A full ring buffer: every DNS message is counted once, whichever path drops it.

With nobody reading, a dnsperf burst fills the 1 MB main ring and the rescue ring. Then glibc
lookups run: their sockets are connected to port 53, so each message is counted as
ringbuf_full in sock_send_length/sock_recv_length without arming sys_exit (`ring_full()`
in `on_sock_io`, bpf/dnstrail.bpf.c), and glibc sends its A and AAAA queries with one sendmmsg, whose second
message must be counted too, and only once. Rows + counted losses must equal every message
the clients moved, exactly."""

from __future__ import annotations

import pyarrow as pa
import pytest

from capture.probe import Probe, ProbeConfig
from tests.lab import Lab
from tests.lab.require import require_root_bcc
from tests.test_probe_rescue import drain_messages

pytestmark = pytest.mark.live

QNAME = "www.lab.test"
LOOKUPS = 5


def test_full_ring_counts_every_message_once(lab: Lab) -> None:
    require_root_bcc()
    ns = lab.client_ns()
    cfg = ProbeConfig(comms=("dnsperf", "getent"), ringbuf_mb=1, trace_execs=False,
                      trace_connects=False)
    with Probe(cfg) as probe:
        res = lab.dnsperf(ns, lab.server_addr, queries=[(QNAME, "A")] * 6000,
                          duration=30, max_qps=5000, extra=["-n", "1"])
        full_after_dnsperf = probe.lost()["ringbuf_full"]
        for _ in range(LOOKUPS):
            r = lab.getent(ns, QNAME)
            assert r.returncode == 0, r.stderr
        lost = probe.lost()["ringbuf_full"]
        batches = drain_messages(probe)
        stats = probe.stats()
    assert res.sent == 6000
    assert full_after_dnsperf > 0  # the burst overflowed both rings
    msgs = pa.Table.from_batches(batches).to_pandas()
    mine = msgs[msgs.netns == ns.inode]
    assert (mine.comm == "getent").sum() == 0  # the ring stayed full through the lookups
    # each lookup: one sendmmsg of A + AAAA, two answers (dnsmasq answers both)
    assert lost - full_after_dnsperf == 4 * LOOKUPS
    assert len(mine) + lost == res.sent + res.completed + 4 * LOOKUPS
    assert stats["messages"] == len(msgs)


def test_full_ring_counts_a_servers_messages_exactly(lab: Lab) -> None:
    """unbound reads its port-53 socket until recvfrom fails with EAGAIN. Those failed reads
    pass sock_recv_length too, with a negative length: counting them as lost messages (a
    sign-extension slip in the raw tracepoint arguments did) would over-count."""
    require_root_bcc()
    ns = lab.client_ns()
    server = lab.unbound(ns, "127.0.0.1")
    cfg = ProbeConfig(comms=("unbound",), ringbuf_mb=1, trace_execs=False, trace_connects=False)
    with Probe(cfg) as probe:
        res = lab.dnsperf(ns, server.addr, queries=[(QNAME, "A")] * 20000, duration=30,
                          max_qps=10000, extra=["-n", "1"])
        lost = probe.lost()["ringbuf_full"]
        batches = drain_messages(probe)
    assert res.sent == 20000 and res.completed == 20000
    msgs = pa.Table.from_batches(batches).to_pandas()
    mine = msgs[msgs.netns == ns.inode]
    assert lost > 0 and len(mine) > 0
    # every query received and every answer sent by unbound, once: a row or counted
    assert len(mine) + lost == res.sent + res.completed
