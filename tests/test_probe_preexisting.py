"""The sock tracepoints see every socket message, so a DNS connection that was open before the
capture started is recorded (read/write on it), and socket I/O on a DNS port in a syscall the
probe does not read (sendfile) is counted as ``untracked_socket_io``, not missed silently.

A client in a lab namespace connects to the lab's dnsmasq over TCP, then the probe starts, then
the client writes a query and reads the answer on that connection, and sends one more query
with sendfile(2). A second test sends DNS through io_uring, inline and in an io-wq worker
thread: each message is counted as ``untracked_socket_io``."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from capture.probe import Probe, ProbeConfig
from tests.lab import Lab, NetNS, uring_client
from tests.lab.require import require_root_bcc

pytestmark = pytest.mark.live

QNAME_WIRE = b"\x03www\x03lab\x04test\x00"

# Connects, says "connected", waits for "go", then: write()+read() a query, sendfile() another
_CLIENT = r"""
import os, socket, struct, sys, tempfile
server = sys.argv[1]
def query(qid):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"\x03www\x03lab\x04test\x00" \
        + struct.pack(">HH", 1, 1)
    return struct.pack(">H", len(q)) + q
s = socket.create_connection((server, 53), timeout=5)
s.setblocking(True)  # os.read/os.write below: no EAGAIN
print("connected", flush=True)
sys.stdin.readline()
os.write(s.fileno(), query(0x4242))
n = struct.unpack(">H", os.read(s.fileno(), 2))[0]
answer = b""
while len(answer) < n:
    answer += os.read(s.fileno(), n - len(answer))
with tempfile.TemporaryFile() as f:
    f.write(query(0x4343)); f.flush()
    os.sendfile(s.fileno(), f.fileno(), 0, len(query(0x4343)))
s.recv(4096)
print("done", flush=True)
"""


def test_connection_opened_before_the_capture(lab: Lab, lab_ns: NetNS) -> None:
    require_root_bcc()
    if not Path("/sys/kernel/tracing/events/sock/sock_recv_length").is_dir():
        pytest.skip("this kernel has no sock tracepoints (Linux < 6.3): fdtable mode only "
                    "sees sockets connected while it runs")
    proc = subprocess.Popen(["ip", "netns", "exec", lab_ns.name, sys.executable, "-c", _CLIENT,
                             lab.server_addr], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "connected", proc.stderr
        with Probe(ProbeConfig(socket_source="tracepoint")) as probe:
            untracked0 = probe.lost()["untracked_socket_io"]
            proc.stdin.write("go\n")
            proc.stdin.flush()
            line = proc.stdout.readline().strip()
            assert line == "done", proc.stderr.read() if proc.stderr else ""
            time.sleep(0.2)
            batches = probe.drain()["messages"]
            untracked = probe.lost()["untracked_socket_io"] - untracked0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    table = pa.Table.from_batches(batches).to_pandas() if batches else None
    assert table is not None
    mine = table[table.tgid == proc.pid]
    sends = mine[mine.direction == "send"]
    recvs = mine[mine.direction == "recv"]
    assert list(sends.syscall) == ["write"], mine
    sent = bytes(sends.payload.iloc[0])
    assert sent[2:4] == b"\x42\x42" and QNAME_WIRE in sent
    # the answer to the write()n query, by read(); the sendfile()d one's by recv (recvfrom)
    assert set(recvs.syscall) == {"read", "recvfrom"}
    got = b"".join(bytes(p) for p in recvs[recvs.syscall == "read"].payload)
    assert got[2:4] == b"\x42\x42" and QNAME_WIRE in got  # the answer, length prefix first
    assert (sends.dst_port == 53).all() and (sends.dst_addr == lab.server_addr).all()
    assert (mine.protocol == "tcp").all() and mine.sock_id.nunique() == 1
    # the sendfile()d query is not a row, but it is counted
    assert not any(b"\x43\x43" == bytes(p)[2:4] for p in sends.payload)
    assert untracked >= 1


def test_io_uring_socket_io_is_counted_per_message(lab: Lab, lab_ns: NetNS) -> None:
    """DNS through io_uring is not read (no syscall of ours carries it) but every message is
    counted as untracked_socket_io: in an io-wq worker thread, which makes no syscall (two
    rounds of sendmsg + recvmsg with IOSQE_ASYNC: 4), and inline in one io_uring_enter that
    runs three sendmsg (3, not 1 for the syscall). No row comes from the client."""
    require_root_bcc()
    if not Path("/sys/kernel/tracing/events/sock/sock_recv_length").is_dir():
        pytest.skip("this kernel has no sock tracepoints (Linux < 6.3)")
    client = uring_client()
    counted = {}
    with Probe(ProbeConfig(socket_source="tracepoint")) as probe:
        for mode in ("async", "batch"):
            before = probe.lost()["untracked_socket_io"]
            r = subprocess.run(["ip", "netns", "exec", lab_ns.name, str(client), lab.server_addr,
                                mode], check=False, capture_output=True, text=True, timeout=30)
            if r.returncode != 0 and "io_uring_setup" in r.stderr:
                pytest.skip(f"io_uring is not available here: {r.stderr.strip()}")
            assert r.returncode == 0 and r.stdout.strip() == f"ok {4 if mode == 'async' else 3}", \
                (r.stdout, r.stderr)
            time.sleep(0.2)
            counted[mode] = probe.lost()["untracked_socket_io"] - before
        batches = probe.drain()["messages"]
    assert counted == {"async": 4, "batch": 3}
    table = pa.Table.from_batches(batches).to_pandas() if batches else None
    if table is not None:
        comms = set(table.comm)
        assert "uring_dns" not in comms and not any(c.startswith("iou-") for c in comms), comms
