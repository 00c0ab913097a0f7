"""The spool (capture/spool.py, capture/_spool.c) on a ring written by the test: no root, no BPF.

The ring is laid out as the kernel lays out a BPF ring buffer (see test_probe_ring). The same
records are read once by the probe's own ring parser and once through the spool (the compiled
drain into a segment file, then ``read_segment``): the rows must be the same, for every way a
record can wrap past the ring's end, with connects, execs, discarded and unfinished records in
between.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from capture import probe as P
from capture import spool
from tests.test_probe_ring import _STARTS, PAGE, RING, SLOT, STRIDE, _records, _write_ring

pytestmark = pytest.mark.skipif(not spool.available() and not os.environ.get("CI"),
                                reason="the compiled spool routine is not built")

_BUSY, _DISCARD = 1 << 31, 1 << 30


def test_the_compiled_routine_is_built() -> None:
    # pip install builds it (pyproject ext-modules); the recorder falls back without it
    assert spool.available()


def _probe(fd: int) -> P.Probe:
    probe = P.Probe(P.ProbeConfig(snaplen=SLOT))
    probe._maps = {"events": fd}
    probe._map_ring(RING)
    return probe


def _ring(start: int, recs: list[tuple[np.void, bytes]]) -> tuple[int, int]:
    fd = os.memfd_create("dnstrail-test-ring")
    os.ftruncate(fd, 2 * PAGE + RING)
    return fd, _write_ring(fd, start, recs)


def _segment(tmp_path: Path, probe: P.Probe, name: str = "spool-000001.spool",
             first_seq: int = 0) -> tuple[Path, spool.SpoolSink, dict[str, list[pa.RecordBatch]]]:
    path = tmp_path / name
    header = spool.SpoolHeader(P._MSG_DTYPE.itemsize, SLOT, 5_000, first_seq)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(fd, header.pack())
    sink = spool.SpoolSink(probe, SLOT, P._MSG_DTYPE.itemsize, stage_bytes=1 << 16)
    sink.fd = fd
    try:
        side, spooled = sink.drain()
    finally:
        os.close(fd)
    assert spooled == sink.messages
    return path, sink, side


def _rows(batches: list[pa.RecordBatch]) -> list[dict[str, object]]:
    rows = [r for b in batches for r in b.to_pylist()]
    for r in rows:  # seq is the writer's (order of arrival), ts depends on boot time
        r.pop("seq")
        r.pop("ts")
    return rows


@pytest.mark.parametrize("where", sorted(_STARTS))
def test_spooled_records_read_back_as_the_ring_parser_reads_them(tmp_path: Path,
                                                                 where: str) -> None:
    recs = _records(400, seed=len(where))
    fd_a, _ = _ring(_STARTS[where], recs)
    fd_b, prod = _ring(_STARTS[where], recs)
    direct = _probe(fd_a)
    try:
        want = _rows(direct.drain()["messages"])
    finally:
        direct.close()
    probe = _probe(fd_b)
    try:
        path, sink, side = _segment(tmp_path, probe)
        assert probe._positions()[0] == prod and probe.pending_bytes() == 0
        assert probe.stats()["messages"] == len(recs)
    finally:
        probe.close()
    assert not any(side.values())
    got = _rows([b for part in spool.read_segment(path) for b in part["messages"]])
    assert got == want
    # cut to the captured payload: the segment is far smaller than the ring's slots
    assert path.stat().st_size < len(recs) * STRIDE * 0.75
    assert sink.payload_bytes == sum(len(p) for _, p in recs)


def _raw(body: bytes, flags: int = 0) -> bytes:
    rec = struct.pack("<II", len(body) | flags, 0) + body
    return rec + b"\0" * (-len(rec) % 8)


def test_other_records_come_back_parsed_and_unfinished_ones_stay(tmp_path: Path) -> None:
    msgs = _records(5, seed=9)
    conn = np.zeros((), P._CONNECT_DTYPE)
    conn["kind"], conn["tgid"], conn["dst_port"], conn["result"] = 2, 42, 443, -115
    conn["family"], conn["protocol"] = 2, 6
    execr = np.zeros((), P._EXEC_DTYPE)
    execr["kind"], execr["tgid"], execr["ppid"] = 3, 43, 1
    execr["filename"] = b"/usr/bin/dig".ljust(256, b"\0")
    body = b""
    for i, (r, payload) in enumerate(msgs):
        body += _raw(r.tobytes() + payload + b"\xee" * (SLOT - len(payload)))
        if i == 1:
            body += _raw(conn.tobytes())
            body += _raw(b"\x01" + b"\0" * 200, flags=_DISCARD)  # discarded: skipped
        if i == 2:
            body += _raw(execr.tobytes())
    busy_at = len(body)
    body += _raw(msgs[0][0].tobytes() + b"\0" * SLOT, flags=_BUSY)  # still being written
    fd = os.memfd_create("dnstrail-test-ring")
    os.ftruncate(fd, 2 * PAGE + RING)
    os.pwrite(fd, body, 2 * PAGE)
    os.pwrite(fd, struct.pack("<Q", 0), 0)
    os.pwrite(fd, struct.pack("<Q", len(body)), PAGE)
    probe = _probe(fd)
    try:
        path, sink, side = _segment(tmp_path, probe)
        assert probe._positions()[0] == busy_at  # stops before the unfinished record
    finally:
        probe.close()
    assert sink.messages == 5
    assert [r["dst_port"] for r in side["connects"][0].to_pylist()] == [443]
    assert side["connects"][0].to_pylist()[0]["result"] == -115
    assert [r["filename"] for r in side["execs"][0].to_pylist()] == ["/usr/bin/dig"]
    got = [b for part in spool.read_segment(path) for b in part["messages"]]
    assert [r["payload"] for r in got[0].to_pylist()] == [p for _, p in msgs]


def test_a_segment_cut_mid_record_reads_up_to_its_last_whole_record(tmp_path: Path) -> None:
    recs = _records(300, seed=3)
    fd, _ = _ring(0, recs)
    probe = _probe(fd)
    try:
        path, _, _ = _segment(tmp_path, probe)
    finally:
        probe.close()
    whole = _rows([b for part in spool.read_segment(path) for b in part["messages"]])
    size = path.stat().st_size
    os.truncate(path, size - 37)  # what a recorder killed during a write leaves
    cut = _rows([b for part in spool.read_segment(path, read_bytes=1 << 16)
                 for b in part["messages"]])
    assert cut == whole[:-1]


def test_a_failed_write_leaves_the_records_in_the_ring(tmp_path: Path) -> None:
    recs = _records(50, seed=4)
    fd, _ = _ring(0, recs)
    probe = _probe(fd)
    try:
        ro = os.open(tmp_path / "ro", os.O_RDONLY | os.O_CREAT, 0o600)
        sink = spool.SpoolSink(probe, SLOT, P._MSG_DTYPE.itemsize)
        sink.fd = ro
        with pytest.raises(OSError):
            sink.drain()
        os.close(ro)
        assert probe._positions()[0] == 0  # nothing consumed
        _, sink2, _ = _segment(tmp_path, probe)
        assert sink2.messages == len(recs)
    finally:
        probe.close()


def test_a_file_that_is_not_a_segment_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "spool-000001.spool"
    bad.write_bytes(b"PAR1" + b"\0" * 60)
    with pytest.raises(spool.SpoolDamaged):
        list(spool.read_segment(bad))
    short = tmp_path / "spool-000002.spool"
    short.write_bytes(spool.SPOOL_MAGIC)
    with pytest.raises(spool.SpoolDamaged):
        spool.read_header(short)


def test_segment_header_round_trips(tmp_path: Path) -> None:
    h = spool.SpoolHeader(P._MSG_DTYPE.itemsize, 1232, 1_700_000_000_123_456_789, 77)
    p = tmp_path / "spool-000003.spool"
    p.write_bytes(h.pack())
    assert spool.read_header(p) == h
    assert list(spool.read_segment(p)) == []
    assert mmap.PAGESIZE >= 4096


def test_a_write_cut_short_keeps_the_records_it_wrote_whole(tmp_path: Path) -> None:
    # a non-blocking pipe takes 64 KiB, then refuses (EAGAIN): a full disk does the same
    # with ENOSPC after a partial write
    recs = _records(400, seed=5)
    fd, _ = _ring(0, recs)
    probe = _probe(fd)
    r, w = os.pipe()
    os.set_blocking(w, False)
    os.set_blocking(r, False)
    try:
        sink = spool.SpoolSink(probe, SLOT, P._MSG_DTYPE.itemsize, stage_bytes=1 << 20)
        sink.fd = w
        with pytest.raises(BlockingIOError):
            sink.drain()
        kept = sink.messages
        assert 0 < kept < len(recs)
        data = b""
        while True:
            try:
                chunk = os.read(r, 1 << 16)
            except BlockingIOError:
                break
            data += chunk
            if len(chunk) < 1 << 16:
                break
        assert sink.spool_bytes <= len(data) < sink.spool_bytes + STRIDE
        # the consumer moved past exactly the records now whole in the file
        cons = probe._positions()[0]
        assert cons == kept * STRIDE
        seg = tmp_path / "spool-000001.spool"
        seg.write_bytes(spool.SpoolHeader(P._MSG_DTYPE.itemsize, SLOT, 0, 0).pack()
                        + data[:sink.spool_bytes])
        got = [row["payload"] for part in spool.read_segment(seg) for b in part["messages"]
               for row in b.to_pylist()]
        assert got == [p for _, p in recs[:kept]]
        assert sink.pending_records() == len(recs) - kept
    finally:
        os.close(r)
        os.close(w)
        probe.close()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _write_stat(path: Path, idle: int, busy: int) -> None:
    # user nice system idle iowait irq softirq steal
    path.write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\n")


def test_the_gate_stops_the_converter_while_the_node_is_saturated(tmp_path: Path) -> None:
    import subprocess
    import time

    stat = tmp_path / "stat"
    child = subprocess.Popen(["sleep", "60"])
    try:
        gate = spool.ConversionGate(child.pid, interval=0.0, hold=1.0, stat_path=str(stat))
        _write_stat(stat, idle=1000, busy=1000)
        assert gate.update(0.0)  # the first sample only sets the baseline
        _write_stat(stat, idle=1010, busy=1090)  # 10 % idle: saturated
        assert not gate.update(0.5) and gate.paused and gate.pauses == 1
        deadline = time.monotonic() + 5
        while _state(child.pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _state(child.pid) == "T"  # stopped
        _write_stat(stat, idle=1060, busy=1140)  # 50 % idle, but not for long enough yet
        assert not gate.update(1.0)
        _write_stat(stat, idle=1110, busy=1190)
        assert gate.update(2.0) and not gate.paused  # held above 40 % for 1 s: resumed
        while _state(child.pid) == "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _state(child.pid) != "T"
        _write_stat(stat, idle=1111, busy=1289)  # saturated again
        assert not gate.update(2.5)
        gate.release()  # the capture is over
        assert not gate.paused
    finally:
        child.kill()
        child.wait()


def test_the_gate_counts_the_converters_own_time_as_idle(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    stat = tmp_path / "stat"
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        gate = spool.ConversionGate(burner.pid, interval=0.0, stat_path=str(stat))
        _write_stat(stat, idle=0, busy=0)
        gate.update(0.0)
        start = gate._own_ticks()
        time.sleep(0.6)
        used = gate._own_ticks() - start
        assert used > 0
        # the node reports no idle time at all, all of it the converter's: it may go on
        _write_stat(stat, idle=0, busy=used)
        assert gate.update(1.0) and not gate.paused, gate.share
    finally:
        burner.kill()
        burner.wait()
