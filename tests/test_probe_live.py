"""Live tests of the BPF probe: load bpf/dnstrail.bpf.c through capture.probe and watch real
resolvers (glibc, musl, Go, dig over UDP and TCP, dnsmasq) in the lab's network namespaces."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from capture.probe import LOST_CAUSES, Probe, ProbeConfig, render_source
from capture.schema import CONNECTS_SCHEMA, EXECS_SCHEMA, MESSAGES_SCHEMA
from tests.lab import Lab, NetNS
from tests.lab.require import require_root_bcc

QNAME = "www.lab.test"
QNAME_WIRE = b"\x03www\x03lab\x04test\x00"
SCHEMAS = {"messages": MESSAGES_SCHEMA, "connects": CONNECTS_SCHEMA, "execs": EXECS_SCHEMA}


def test_render_source_has_constants_and_program() -> None:
    text = render_source(ProbeConfig(snaplen=2048, ports=(53, 5353)))
    assert "#define MAX_PAYLOAD 2048\n" in text
    assert "#define FILTER_PORTS 1\n" in text
    assert "RAW_TRACEPOINT_PROBE(sock_send_length)" in text


class Recorder:
    """A running Probe polled by a background thread; tests read what it collected."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.batches: dict[str, list[pa.RecordBatch]] = {k: [] for k in SCHEMAS}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                got = self.probe.poll(timeout_ms=20)
                with self.lock:
                    for kind, batches in got.items():
                        self.batches[kind].extend(batches)
        except BaseException as exc:  # noqa: BLE001  (surfaced by table())
            self.error = exc

    def table(self, kind: str) -> pd.DataFrame:
        if self.error is not None:
            raise self.error
        with self.lock:
            batches = list(self.batches[kind])
        for b in batches:
            assert b.schema.equals(SCHEMAS[kind], check_metadata=True)
        return pa.Table.from_batches(batches, schema=SCHEMAS[kind]).to_pandas()

    def wait(self, kind: str, pred: Callable[[pd.DataFrame], pd.Series],
             done: Callable[[pd.DataFrame], bool], timeout: float = 5.0) -> pd.DataFrame:
        """Rows of `kind` selected by pred, once done(rows) holds (or at the timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            df = self.table(kind)
            rows = df[pred(df)] if len(df) else df
            if (len(rows) and done(rows)) or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def _has_sock_tracepoints() -> bool:
    return Path("/sys/kernel/tracing/events/sock/sock_recv_length").is_dir()


# Both ways of finding the socket: the sock tracepoints (Linux >= 6.3) and the fd-table walk
# that older kernels use. This kernel has both, so both are tested here.
@pytest.fixture(scope="module", params=["tracepoint", "fdtable"])
def rec(request: pytest.FixtureRequest) -> Iterator[Recorder]:
    require_root_bcc()
    if request.param == "tracepoint" and not _has_sock_tracepoints():
        pytest.skip("this kernel has no sock:sock_recv_length tracepoint (Linux < 6.3)")
    with Probe(ProbeConfig(socket_source=request.param)) as probe:
        r = Recorder(probe)
        try:
            yield r
        finally:
            r.close()


pytestmark = pytest.mark.live


def test_probe_loads_and_counts_every_cause(rec: Recorder) -> None:
    lost = rec.probe.lost()
    assert set(lost) == set(LOST_CAUSES)
    assert all(isinstance(v, int) and v >= 0 for v in lost.values())
    assert rec.probe.boot_time_ns > 1_600_000_000 * 10**9
    assert {"messages", "connects", "execs"} <= set(rec.probe.stats())


def _messages_of(rec: Recorder, pid: int, want_recv: bool = True) -> pd.DataFrame:
    def done(rows: pd.DataFrame) -> bool:
        has_q = any(QNAME_WIRE in bytes(p) for p in rows[rows.direction == "send"].payload)
        return has_q and (not want_recv or (rows.direction == "recv").any())

    return rec.wait("messages", lambda df: df.tgid == pid, done)


def _check_udp_exchange(msgs: pd.DataFrame, lab: Lab, ns: NetNS) -> None:
    sends = msgs[msgs.direction == "send"]
    recvs = msgs[msgs.direction == "recv"]
    assert len(sends) and len(recvs), msgs
    assert (sends.dst_addr == lab.server_addr).all()
    assert (sends.dst_port == 53).all()
    assert (recvs.src_addr == lab.server_addr).all()
    assert (recvs.src_port == 53).all()
    assert (msgs.protocol == "udp").all()
    assert (msgs.netns == ns.inode).all()
    assert any(QNAME_WIRE in bytes(p) for p in sends.payload)
    assert any(QNAME_WIRE in bytes(p) for p in recvs.payload)
    # a response carries the query's id and the QR bit
    qids = {bytes(p)[:2] for p in sends.payload}
    assert any(bytes(p)[:2] in qids and bytes(p)[2] & 0x80 for p in recvs.payload)
    assert (msgs.orig_len == msgs.payload.map(len)).all()
    assert not msgs.truncated.any()


def test_glibc_getent(rec: Recorder, lab: Lab, lab_ns: NetNS) -> None:
    r = lab.getent(lab_ns, QNAME)
    assert r.returncode == 0, r.stderr
    msgs = _messages_of(rec, r.pid)
    _check_udp_exchange(msgs, lab, lab_ns)
    assert (msgs.comm == "getent").all()
    sends = msgs[msgs.direction == "send"]
    # glibc sends A and AAAA in one sendmmsg on a connected socket
    assert set(sends.syscall) == {"sendmmsg"}
    assert set(sends.msg_index) == {0, 1}
    assert sends.sock_id.nunique() == 1


def test_musl_static(rec: Recorder, lab: Lab, lab_ns: NetNS) -> None:
    r = lab.resolve_musl(lab_ns, [QNAME])
    assert r.returncode == 0, r.stderr
    msgs = _messages_of(rec, r.pid)
    _check_udp_exchange(msgs, lab, lab_ns)
    assert (msgs.comm == "resolve-musl").all()
    assert set(msgs.syscall) == {"sendto", "recvfrom"}


def test_go_pure_resolver(rec: Recorder, lab: Lab, lab_ns: NetNS) -> None:
    r = lab.resolve_go(lab_ns, [QNAME])
    assert r.returncode == 0, r.stderr
    msgs = _messages_of(rec, r.pid)
    _check_udp_exchange(msgs, lab, lab_ns)
    assert set(msgs.syscall) <= {"write", "read"}
    # Go reads on another thread of the process than the one that wrote
    assert (msgs.comm == "goresolve").all()


def test_dig_udp(rec: Recorder, lab: Lab, lab_ns: NetNS) -> None:
    r = lab.dig(lab_ns, QNAME)
    assert r.returncode == 0, r.stderr
    msgs = _messages_of(rec, r.pid)
    _check_udp_exchange(msgs, lab, lab_ns)
    assert set(msgs.syscall) == {"sendmmsg", "recvmsg"}


def test_dig_tcp_and_connect(rec: Recorder, lab: Lab, lab_ns: NetNS) -> None:
    r = lab.dig(lab_ns, QNAME, tcp=True)
    assert r.returncode == 0, r.stderr
    msgs = _messages_of(rec, r.pid)
    assert (msgs.protocol == "tcp").all()
    assert msgs.sock_id.nunique() == 1
    sent = b"".join(bytes(p) for p in msgs[msgs.direction == "send"].payload)
    got = b"".join(bytes(p) for p in msgs[msgs.direction == "recv"].payload)
    # DNS over TCP: 2-byte length prefix, kept in the chunks
    assert int.from_bytes(sent[:2], "big") == len(sent) - 2
    assert QNAME_WIRE in sent
    assert int.from_bytes(got[:2], "big") == len(got) - 2
    assert sent[2:4] == got[2:4]
    assert (msgs[msgs.direction == "send"].dst_addr == lab.server_addr).all()
    assert (msgs[msgs.direction == "send"].src_addr == lab_ns.addr).all()
    conns = rec.wait("connects", lambda df: (df.tgid == r.pid) & (df.dst_port == 53),
                     lambda rows: True)
    assert len(conns) == 1, conns
    c = conns.iloc[0]
    assert c.dst_addr == lab.server_addr and c.protocol == "tcp" and c.family == "inet"
    assert c.result in (0, -115)  # EINPROGRESS: dig connects non-blocking
    assert c.latency_ns >= 0
    assert c.netns == lab_ns.inode


def test_resolver_side_dnsmasq(rec: Recorder, lab: Lab, lab_ns: NetNS) -> None:
    r = lab.resolve_musl(lab_ns, [QNAME])
    assert r.returncode == 0, r.stderr
    client = lab_ns.addr
    assert lab.server_ns is not None
    server_netns = lab.server_ns.inode
    # the client's source ports tell its exchanges apart from earlier tests' (client
    # namespaces reuse addresses) and from other labs on this machine (same addresses)
    ports = set(_messages_of(rec, r.pid).query("direction == 'send'").src_port)

    def from_client(df: pd.DataFrame) -> pd.Series:
        return ((df.comm == "dnsmasq") & (df.netns == server_netns)
                & (((df.src_addr == client) & df.src_port.isin(ports))
                   | ((df.dst_addr == client) & df.dst_port.isin(ports))))

    msgs = rec.wait("messages", from_client,
                    lambda rows: (rows.direction == "send").sum() >= 2)
    recvs = msgs[msgs.direction == "recv"]
    sends = msgs[msgs.direction == "send"]
    assert len(recvs) == 2 and len(sends) == 2, msgs  # A and AAAA
    assert set(msgs.syscall) == {"recvmsg", "sendmsg"}
    assert (recvs.dst_port == 53).all() and (recvs.dst_addr == lab.server_addr).all()
    assert (sends.src_port == 53).all() and (sends.dst_addr == client).all()
    assert all(QNAME_WIRE in bytes(p) for p in recvs.payload)
    assert all(QNAME_WIRE in bytes(p) for p in sends.payload)
    assert msgs.sock_id.nunique() == 1  # answered on the socket the query came in on


def test_exec_event(rec: Recorder, lab: Lab, lab_ns: NetNS) -> None:
    r = lab.resolve_go(lab_ns, [QNAME])
    execs = rec.wait("execs", lambda df: df.tgid == r.pid,
                     lambda rows: rows.filename.str.endswith("goresolve").any())
    row = execs[execs.filename.str.endswith("goresolve")].iloc[0]
    assert row.filename == str(lab.go_client)
    assert row.ppid > 0 and row.ppid != r.pid
    assert row.netns == lab_ns.inode


def test_pod_cgroup_id_and_netns(rec: Recorder, lab: Lab, lab_ns: NetNS) -> None:
    pod = lab.fake_pod()
    r = lab.resolve_musl(lab_ns, [QNAME], pod=pod)
    assert r.returncode == 0, r.stderr
    msgs = _messages_of(rec, r.pid)
    assert (msgs.cgroup_id == pod.cgroup_id).all()
    assert (msgs.cgroup_id == os.stat(pod.cgroup_dir).st_ino).all()
    assert (msgs.netns == lab_ns.inode).all()


def test_cgroup_and_pid_filters(lab: Lab) -> None:
    """A probe filtered to one pod's cgroup records that pod's client and nobody else's."""
    require_root_bcc()
    pod = lab.fake_pod()
    ns = lab.client_ns(timeout=1, attempts=2)
    with Probe(ProbeConfig(cgroup_ids=(pod.cgroup_id,), trace_execs=False)) as probe:
        inside = lab.resolve_musl(ns, [QNAME], pod=pod)
        outside = lab.resolve_musl(ns, [QNAME])
        time.sleep(0.2)
        got = probe.poll(timeout_ms=50)["messages"]
        df = pa.Table.from_batches(got, schema=MESSAGES_SCHEMA).to_pandas()
        assert (df.tgid == inside.pid).any()
        assert not (df.tgid == outside.pid).any()
        assert (df.cgroup_id == pod.cgroup_id).all()
        # switch the filter to another (empty) set while running: nothing more is recorded
        probe.set_cgroup_ids([])
        again = lab.resolve_musl(ns, [QNAME], pod=pod)
        time.sleep(0.2)
        got = probe.poll(timeout_ms=50)["messages"]
        df = pa.Table.from_batches(got, schema=MESSAGES_SCHEMA).to_pandas()
        assert not (df.tgid == again.pid).any()


def test_burst_recorded_completely_or_counted(rec: Recorder, lab: Lab) -> None:
    """10k dnsperf queries: every query and answer dnsperf moved is a row, unless the lost
    counters say how many are missing."""
    ns = lab.client_ns()
    names = [("www.lab.test", "A")] * 10_000
    before = sum(rec.probe.lost().values())
    res = lab.dnsperf(ns, lab.server_addr, queries=names, duration=30, max_qps=8000,
                      extra=["-n", "1"])
    assert res.sent == 10_000

    def mine(df: pd.DataFrame) -> pd.Series:
        return (df.comm == "dnsperf") & (df.netns == ns.inode)

    msgs = rec.wait("messages", mine, lambda rows: len(rows) >= res.sent + res.completed,
                    timeout=10)
    lost = sum(rec.probe.lost().values()) - before
    sends = int((msgs.direction == "send").sum())
    recvs = int((msgs.direction == "recv").sum())
    if lost == 0:
        assert sends == res.sent
        assert recvs == res.completed
    else:
        assert sends + recvs + lost >= res.sent + res.completed
    assert msgs.seq.is_monotonic_increasing or msgs.seq.is_unique


def test_ipv6_server(rec: Recorder, lab: Lab, lab_ns: NetNS) -> None:
    server6 = "fd00:213::1"
    r = lab.dig(lab_ns, QNAME, server=server6)
    assert r.returncode == 0, r.stdout + r.stderr
    msgs = _messages_of(rec, r.pid)
    assert (msgs.family == "inet6").all()
    sends = msgs[msgs.direction == "send"]
    recvs = msgs[msgs.direction == "recv"]
    assert (sends.dst_addr == server6).all() and (sends.dst_port == 53).all()
    assert (recvs.src_addr == server6).all() and (recvs.src_port == 53).all()
    assert lab_ns.addr6 is not None
    assert (sends.src_addr == lab_ns.addr6).all()


V4MAPPED_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(2)
q = bytes.fromhex("beef01000001000000000000") + bytes.fromhex(sys.argv[2]) + b"\\x00\\x01\\x00\\x01"
s.sendto(q, ("::ffff:" + sys.argv[1], 53))
print(len(s.recvfrom(4096)[0]))
"""


def test_v4_mapped_addresses(rec: Recorder, lab: Lab, lab_ns: NetNS) -> None:
    """An AF_INET6 socket talking to an IPv4 server through a v4-mapped address: the
    addresses read as plain IPv4, the family stays the socket's."""
    r = lab.run(lab_ns, [sys.executable, "-c", V4MAPPED_CLIENT, lab.server_addr,
                         QNAME_WIRE.hex()])
    assert r.returncode == 0 and int(r.stdout) > 0, r.stderr
    msgs = _messages_of(rec, r.pid)
    assert (msgs.family == "inet6").all()
    sends = msgs[msgs.direction == "send"]
    recvs = msgs[msgs.direction == "recv"]
    assert (sends.dst_addr == lab.server_addr).all()
    assert (recvs.src_addr == lab.server_addr).all()
    assert set(msgs.syscall) == {"sendto", "recvfrom"}
    assert bytes(sends.payload.iloc[0])[:2] == b"\xbe\xef"


MMSG_CLIENT = r"""
import ctypes, socket, sys, struct
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure): _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class msghdr(ctypes.Structure): _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(iovec)), ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t), ("flags", ctypes.c_int)]
class mmsghdr(ctypes.Structure): _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
server, n, qname_hex = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((server, 53)); s.settimeout(3)
qs = [struct.pack(">H", 0x7000 + i) + bytes.fromhex("01000001000000000000") + bytes.fromhex(qname_hex) + b"\x00\x01\x00\x01" for i in range(n)]
bufs = [ctypes.create_string_buffer(q, len(q)) for q in qs]
iovs = [iovec(ctypes.cast(b, ctypes.c_void_p), len(q)) for b, q in zip(bufs, qs)]
vec = (mmsghdr * n)()
for i in range(n):
    vec[i].hdr.iov = ctypes.pointer(iovs[i]); vec[i].hdr.iovlen = 1
sent = libc.sendmmsg(s.fileno(), vec, n, 0)
rbufs = [ctypes.create_string_buffer(4096) for _ in range(n)]
riovs = [iovec(ctypes.cast(b, ctypes.c_void_p), 4096) for b in rbufs]
rvec = (mmsghdr * n)()
for i in range(n):
    rvec[i].hdr.iov = ctypes.pointer(riovs[i]); rvec[i].hdr.iovlen = 1
got = 0
import select, time
deadline = time.monotonic() + 3
while got < sent and time.monotonic() < deadline:
    select.select([s], [], [], 0.5)
    r = libc.recvmmsg(s.fileno(), ctypes.byref(rvec, 0), min(n, 10), 0x40, None)  # MSG_DONTWAIT
    if r > 0:
        got += r
        print("recvmmsg", r)
print("sent", sent, "got", got)
"""


def test_sendmmsg_recvmmsg_every_message_and_bound(rec: Recorder, lab: Lab,
                                                   lab_ns: NetNS) -> None:
    """20 queries in one sendmmsg: the first max_mmsg (16) are rows with their msg_index, the
    other 4 are counted as mmsg_over_bound; every recvmmsg message (at most 10 per call) is a
    row."""
    before = rec.probe.lost()["mmsg_over_bound"]
    r = lab.run(lab_ns, [sys.executable, "-c", MMSG_CLIENT, lab.server_addr, "20",
                         QNAME_WIRE.hex()])
    assert r.returncode == 0 and "sent 20 got 20" in r.stdout, r.stdout + r.stderr
    msgs = rec.wait("messages", lambda df: df.tgid == r.pid,
                    lambda rows: (rows.syscall == "recvmmsg").sum() >= 20)
    sends = msgs[msgs.syscall == "sendmmsg"].sort_values("msg_index")
    assert list(sends.msg_index) == list(range(16))
    # each message's own payload: query ids 0x7000 + index
    assert [int.from_bytes(bytes(p)[:2], "big") for p in sends.payload] == \
        [0x7000 + i for i in range(16)]
    assert rec.probe.lost()["mmsg_over_bound"] - before == 4
    recvs = msgs[msgs.syscall == "recvmmsg"]
    assert len(recvs) == 20
    ids = sorted(int.from_bytes(bytes(p)[:2], "big") for p in recvs.payload)
    assert ids == [0x7000 + i for i in range(20)]
    assert (recvs.src_addr == lab.server_addr).all() and (recvs.src_port == 53).all()


def test_compile_error_is_load_failed_with_reason(tmp_path: Path) -> None:
    """A program the compiler rejects becomes LoadFailed carrying the compiler's words (the
    loader child's stderr), not a hang or a traceback."""
    from capture.errors import LoadFailed
    from capture.probe import _run_loader

    require_root_bcc()
    bad = tmp_path / "bad.bpf.c"
    bad.write_text("int broken( { return 0; }\n")
    req = {"source": str(bad), "cflags": [], "ports": [], "pids": [], "comms": [],
           "cgroup_ids": [], "maps": ["events"]}
    with pytest.raises(LoadFailed) as info:
        _run_loader(req)
    assert "failed to compile" in str(info.value)
    assert "error" in str(info.value)


def test_distinct_value_helpers_are_exact() -> None:
    """The consumer decodes comm/addresses once per distinct value: check it against a plain
    per-row decoding on values with many repeats and some near-duplicates."""
    import numpy as np

    from capture.probe import _addresses, _strings16, _unique_rows

    rng = np.random.default_rng(7)
    base = rng.integers(0, 2**63, size=(40, 3), dtype=np.uint64)
    base[1] = base[0]
    base[1, 2] ^= np.uint64(1)  # differs from row 0 in one bit
    words = base[rng.integers(0, 40, size=5000)]
    first, inverse = _unique_rows(words)
    assert (words[first[inverse]] == words).all()
    assert len(first) == len(np.unique(words, axis=0))

    names = [b"dnsmasq", b"unbound", b"x" * 15, b"caf\xc3\xa9", b"\xff\xfe"]
    raw = np.array([n.ljust(16, b"\0") for n in names * 30], dtype="V16")
    got = _strings16(raw).to_pylist()
    assert got == [n.decode("utf-8", "backslashreplace") for n in names * 30]

    fam = np.array([2, 10, 10, 2] * 10, dtype=np.uint8)
    addrs = np.zeros((40, 16), dtype=np.uint8)
    addrs[0::4, :4] = [10, 213, 0, 1]
    addrs[1::4, :] = list(bytes.fromhex("fd000213000000000000000000000001"))
    addrs[2::4, 10:16] = [0xFF, 0xFF, 127, 0, 0, 1]
    null = np.zeros(40, dtype=bool)
    null[3::4] = True
    got = _addresses(fam, addrs.view("V16").reshape(40), null).to_pylist()
    assert got == ["10.213.0.1", "fd00:213::1", "127.0.0.1", None] * 10


def test_small_ring_wraps_many_times_without_corruption(lab: Lab) -> None:
    """A 1 MiB ring filled 4 times over: records that straddle the end of the ring are
    read back whole (headers and payloads), and the comm filter lets only dnsperf through."""
    require_root_bcc()
    ns = lab.client_ns()
    cfg = ProbeConfig(comms=("dnsperf",), ringbuf_mb=1, trace_execs=False,
                      trace_connects=False)
    with Probe(cfg) as probe:
        r = Recorder(probe)
        try:
            res = lab.dnsperf(ns, lab.server_addr, queries=[(QNAME, "A")] * 6000,
                              duration=30, max_qps=5000, extra=["-n", "1"])
            msgs = r.wait("messages", lambda df: df.netns == ns.inode,
                          lambda rows: len(rows) >= res.sent + res.completed, timeout=30)
        finally:
            r.close()
        lost = probe.lost()
    assert res.sent == 6000
    everything = r.table("messages")
    assert (everything.comm == "dnsperf").all()
    assert probe.stats()["ring_bytes"] > 4 * 2**20  # wrapped at least 4 times
    if lost["ringbuf_full"] == 0:
        assert len(msgs) == res.sent + res.completed
    payloads = [bytes(p) for p in msgs.payload]
    assert all(QNAME_WIRE in p and len(p) == n for p, n in zip(payloads, msgs.orig_len))
    assert (msgs.dst_port[msgs.direction == "send"] == 53).all()
    # dnsperf receives with recvfrom(fd, buf, len, 0, NULL, NULL) on an unconnected socket:
    # recorded (the socket sent to :53) with the peer unknown
    assert msgs.src_addr[msgs.direction == "recv"].isna().all()
