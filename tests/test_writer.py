"""CaptureWriter on real files: Parquet round trips, rotation, manifest, append, faults."""

from __future__ import annotations

import gc
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dnslib import QTYPE, RR, A, DNSRecord

from capture.errors import DiskFull, OutputNotEmpty
from capture.schema import (
    CONNECTS_SCHEMA,
    EXECS_SCHEMA,
    MANIFEST_KEYS,
    MESSAGES_SCHEMA,
    SNAPSHOT_KINDS,
    TMP_PREFIX,
    file_kind,
    read_manifest,
)
from capture.writer import CaptureWriter, sha256_file

REPO = Path(__file__).resolve().parents[1]


def dns_pair(name: str, qid: int) -> tuple[bytes, bytes]:
    """A real DNS query and its answer, as wire bytes."""
    q = DNSRecord.question(name, "A")
    q.header.id = qid
    r = q.reply()
    r.add_answer(RR(name, QTYPE.A, rdata=A(f"10.{qid % 250}.{qid % 7}.{qid % 200 + 1}"), ttl=30))
    return q.pack(), r.pack()


def message_batch(n: int, start: int = 0, rng: random.Random | None = None) -> pa.RecordBatch:
    """n message rows: alternating query/response pairs with random-looking names."""
    rng = rng or random.Random(start)
    now = time.time_ns()
    rows = []
    for i in range(start, start + n):
        label = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(20))
        q, r = dns_pair(f"{label}.svc.cluster.local", i & 0xFFFF)
        send = i % 2 == 0
        payload = q if send else r
        rows.append(
            {
                "ts": now + i * 1000, "mono_ns": 10_000 + i * 1000, "seq": 0, "tgid": 4242, "tid": 4243,
                "uid": 0, "comm": "getent", "cgroup_id": 1, "netns": 4026531833,
                "syscall": "sendmmsg" if send else "recvfrom",
                "direction": "send" if send else "recv", "fd": 3, "sock_id": 0xFFFF8880DEAD,
                "msg_index": 0, "protocol": "udp", "family": "inet",
                "src_addr": "10.0.0.2" if send else "10.0.0.1", "src_port": 40000 if send else 53,
                "dst_addr": "10.0.0.1" if send else "10.0.0.2", "dst_port": 53 if send else 40000,
                "payload": payload, "orig_len": len(payload), "truncated": False,
            }
        )
    return pa.RecordBatch.from_pylist(rows, schema=MESSAGES_SCHEMA)


def connect_batch(n: int) -> pa.RecordBatch:
    now = time.time_ns()
    return pa.RecordBatch.from_pylist(
        [{"ts": now + i, "mono_ns": i, "seq": 0, "tgid": 7, "tid": 7, "uid": 0, "comm": "curl", "cgroup_id": 1,
              "netns": 1, "fd": 4, "family": "inet", "protocol": "tcp", "dst_addr": "10.1.2.3",
              "dst_port": 443, "result": -115, "latency_ns": 2000} for i in range(n)],
        schema=CONNECTS_SCHEMA,
    )


def exec_batch(n: int) -> pa.RecordBatch:
    now = time.time_ns()
    return pa.RecordBatch.from_pylist(
        [{"ts": now + i, "mono_ns": i, "seq": 0, "tgid": 100 + i, "tid": 100 + i, "uid": 0, "comm": "sh",
              "cgroup_id": 1, "netns": 1, "ppid": 1, "filename": "/bin/sh"} for i in range(n)],
        schema=EXECS_SCHEMA,
    )


def check_capture(directory: Path, crashed: bool = False) -> dict:
    """Every manifest file reads and matches its sha256/rows/bytes; returns the manifest.

    After a crash (`crashed`), a snapshot file may be newer than the manifest (killed between
    its rename and the manifest rewrite): it must still read, its hash is not compared.
    """
    manifest = read_manifest(directory)
    assert set(manifest) == set(MANIFEST_KEYS)
    for entry in manifest["files"]:
        path = directory / entry["name"]
        if crashed and entry["kind"] in SNAPSHOT_KINDS:
            pq.read_table(path)
            continue
        assert sha256_file(path) == entry["sha256"], entry["name"]
        assert path.stat().st_size == entry["bytes"]
        if entry["kind"] == "spool":  # a segment not yet in Parquet (capture.spool)
            from capture.spool import count_records

            assert count_records(path) == entry["rows"]
        else:
            assert pq.read_table(path).num_rows == entry["rows"]
        assert file_kind(entry["name"]) == entry["kind"]
    return manifest


def event_table(directory: Path, kind: str) -> pa.Table:
    names = sorted(p.name for p in directory.glob(f"{kind}-*.parquet"))
    return pa.concat_tables([pq.read_table(directory / n) for n in names])


def test_round_trip_rotates_by_size_and_keeps_every_row(tmp_path: Path) -> None:
    out = tmp_path / "cap"
    batches = [message_batch(200, start=i * 200) for i in range(20)]
    with CaptureWriter(out, max_file_bytes=24_000, row_group_bytes=16_000) as w:
        for i, b in enumerate(batches):
            w.write("messages", b)
            if i % 5 == 0:
                w.write("connects", connect_batch(3))
        w.write("execs", exec_batch(4))
    manifest = check_capture(out)
    assert manifest["status"] == "complete" and manifest["error"] is None
    assert manifest["stopped_at"] is not None
    msg_files = [f for f in manifest["files"] if f["kind"] == "messages"]
    assert len(msg_files) > 3, "size rotation did not happen"
    assert manifest["counts"] == {"messages": 4000, "connects": 12, "execs": 4}
    table = event_table(out, "messages")
    expected = pa.Table.from_batches(batches)
    assert table.column("payload").to_pylist() == expected.column("payload").to_pylist()
    assert table.column("seq").to_pylist() == list(range(4000))
    assert table.schema.field("payload").metadata[b"doc"]  # docs travel with the file
    # Payloads are still real DNS.
    assert DNSRecord.parse(table.column("payload")[0].as_py()).q.qtype == QTYPE.A
    # Permissions and leftovers.
    assert out.stat().st_mode & 0o777 == 0o700
    for p in out.iterdir():
        assert not p.name.startswith(TMP_PREFIX)
        assert p.stat().st_mode & 0o777 == 0o600, p.name


def test_rotation_by_time_and_manifest_updates(tmp_path: Path) -> None:
    now = [1000.0]
    out = tmp_path / "cap"
    w = CaptureWriter(out, rotate_seconds=60, clock=lambda: now[0]).start()
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "running" and m["files"] == [] and m["stopped_at"] is None
    w.write("messages", message_batch(10))
    w.tick()
    assert not list(out.glob("messages-*.parquet"))  # still open, only the tmp file exists
    assert list(out.glob(TMP_PREFIX + "messages-000001.parquet"))
    now[0] += 61
    w.tick()
    m = json.loads((out / "manifest.json").read_text())
    assert [f["name"] for f in m["files"]] == ["messages-000001.parquet"]
    assert m["status"] == "running" and m["counts"]["messages"] == 10
    w.write("messages", message_batch(5, start=10))
    w.set_lost({"ringbuf_full": 7, "payload_unreadable": 0})
    w.close()
    m = check_capture(out)
    assert [f["name"] for f in m["files"] if f["kind"] == "messages"] == [
        "messages-000001.parquet", "messages-000002.parquet"]
    assert m["lost"]["ringbuf_full"] == 7 and m["lost"]["payload_unreadable"] == 0
    # Kinds that saw no event still get one (empty) file with the schema.
    assert pq.read_table(out / "execs-000001.parquet").schema.names == EXECS_SCHEMA.names


def test_refuses_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputNotEmpty, match="not empty.*--append"):
        CaptureWriter(tmp_path).start()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "manifest.json").exists()


def test_append_continues_numbering_counts_and_seq(tmp_path: Path) -> None:
    out = tmp_path / "cap"
    with CaptureWriter(out, max_file_bytes=10_000, row_group_bytes=8_000) as w:
        w.write("messages", message_batch(300))
        w.set_lost({"ringbuf_full": 2})
    first = check_capture(out)
    first_names = [f["name"] for f in first["files"]]
    # A crash leftover must not be clobbered.
    (out / (TMP_PREFIX + "messages-000099.parquet")).write_bytes(b"partial")
    with CaptureWriter(out, append=True, max_file_bytes=10_000, row_group_bytes=8_000) as w:
        w.write("messages", message_batch(100, start=300))
        w.set_lost({"ringbuf_full": 3})
    second = check_capture(out)
    names = [f["name"] for f in second["files"]]
    assert all(n in names for n in first_names)
    new = [n for n in names if n not in first_names and n.startswith("messages")]
    assert new and min(new) > "messages-000099.parquet"
    assert second["counts"]["messages"] == 400
    assert second["lost"]["ringbuf_full"] == 5
    assert second["started_at"] == first["started_at"]
    assert sorted(event_table(out, "messages").column("seq").to_pylist()) == list(range(400))


def test_append_refuses_a_directory_that_is_not_a_capture(tmp_path: Path) -> None:
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(Exception, match="cannot append.*not a dnstrail capture"):
        CaptureWriter(tmp_path, append=True).start()


def test_snapshots_replace_atomically(tmp_path: Path) -> None:
    from capture.schema import CGROUPS_SCHEMA

    out = tmp_path / "cap"
    with CaptureWriter(out) as w:
        t1 = pa.Table.from_pylist([{"cgroup_id": 1, "path": "/", "resolved_at": 0}],
                                  schema=CGROUPS_SCHEMA)
        w.write_snapshot("cgroups", t1)
        t2 = pa.Table.from_pylist(
            [{"cgroup_id": 1, "path": "/", "resolved_at": 0},
             {"cgroup_id": 99, "path": "/kubepods/x", "resolved_at": 5}],
            schema=CGROUPS_SCHEMA)
        w.write_snapshot("cgroups", t2)
    m = check_capture(out)
    assert [f["name"] for f in m["files"]].count("cgroups.parquet") == 1
    assert pq.read_table(out / "cgroups.parquet").column("cgroup_id").to_pylist() == [1, 99]


def test_memory_stays_bounded(tmp_path: Path) -> None:
    """Arrow memory in use never approaches the data written (streamed row groups)."""
    rng = random.Random(1)
    big = message_batch(2000, rng=rng)
    per_batch = big.nbytes
    peak = 0
    base = pa.total_allocated_bytes()
    with CaptureWriter(tmp_path / "cap", row_group_bytes=2 * per_batch) as w:
        for i in range(60):
            fresh = big.take(pa.array(range(2000)))  # a new allocation every time, as from a probe
            assert fresh.column(0).buffers()[1].address != big.column(0).buffers()[1].address
            w.write("messages", fresh)
            del fresh
            peak = max(peak, pa.total_allocated_bytes() - base)
    total = 60 * per_batch
    assert peak < total / 5, (peak, total)


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)


@pytest.fixture
def small_disk(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    try:
        _mount_tmpfs(mnt, "2m")
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount tmpfs: {exc}")
    try:
        yield mnt
    finally:
        gc.collect()  # drop any file handle still open on the mount
        if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_stops_keeps_finished_files_and_says_failed(small_disk: Path) -> None:
    out = small_disk / "cap"
    rng = random.Random(7)
    w = CaptureWriter(out, max_file_bytes=150_000, row_group_bytes=50_000).start()
    written = 0
    with pytest.raises(DiskFull) as info:
        for _ in range(2000):  # bounded: 2000 x 300 rows is far beyond 2 MB
            b = message_batch(300, start=written, rng=rng)
            # incompressible payloads so the disk fills quickly
            b = b.set_column(b.schema.get_field_index("payload"), MESSAGES_SCHEMA.field("payload"),
                             pa.array([os.urandom(400) for _ in range(300)], pa.binary()))
            w.write("messages", b)
            written += 300
    assert info.value.exit_code != 0
    assert "disk full" in str(info.value)
    m = check_capture(out)
    assert m["status"] == "failed" and "disk full" in m["error"]
    assert len(m["files"]) >= 2, "some files should have finished before the disk filled"
    assert m["lost"]["disk_full"] > 0
    assert not [p for p in out.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert w.closed


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys, random
    sys.path.insert(0, {repo!r})
    from tests.test_writer import message_batch
    from capture.writer import CaptureWriter
    w = CaptureWriter(sys.argv[1], max_file_bytes=40_000, row_group_bytes=20_000).start()
    rng = random.Random(3)
    for i in range(100000):
        w.write("messages", message_batch(100, start=i * 100, rng=rng))
    """
)


def test_kill_9_mid_capture_leaves_only_good_files(tmp_path: Path) -> None:
    out = tmp_path / "cap"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT.format(repo=str(REPO)), str(out)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if len(json.loads((out / "manifest.json").read_text())["files"]) >= 4:
                    break
            except (OSError, ValueError):
                pass
            assert proc.poll() is None, "writer exited early"
            time.sleep(0.05)
        else:
            pytest.fail("writer did not finish 4 files in 60 s")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    m = check_capture(out)  # every listed file reads and its sha256 matches
    assert m["status"] == "running" and m["stopped_at"] is None
    finished = sorted(p.name for p in out.glob("messages-*.parquet"))
    listed = [f["name"] for f in m["files"]]
    assert set(listed) <= set(finished)
    for name in finished:  # finished but not yet listed files are whole too
        assert pq.read_table(out / name).num_rows > 0
    seqs = event_table(out, "messages").column("seq").to_pylist()
    assert seqs == list(range(len(seqs))), "finished files hold a gap-free prefix"
