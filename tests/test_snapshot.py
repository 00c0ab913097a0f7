"""Snapshots on real things: this machine's /proc and cgroup2, directory trees laid out like a
kubelet's, kubectl JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from capture import snapshot as snap
from capture.errors import CaptureError
from capture.schema import EXECS_SCHEMA

UID_A = "3f1c2a8e-5b6d-4e7f-8a9b-0c1d2e3f4a5b"
UID_B = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
CID_A = "a" * 63 + "1"
CID_B = "b" * 63 + "2"


def kubelet_tree(root: Path) -> dict[str, Path]:
    """A cgroup-like directory tree holding one cgroupfs-style and one systemd-style pod."""
    a = root / "kubepods" / "burstable" / f"pod{UID_A}" / CID_A
    b_uid = UID_B.replace("-", "_")
    b = (root / "kubepods.slice" / "kubepods-besteffort.slice"
         / f"kubepods-besteffort-pod{b_uid}.slice" / f"cri-containerd-{CID_B}.scope")
    other = root / "system.slice" / "dnsmasq.service"
    for d in (a, b, other):
        d.mkdir(parents=True)
    return {"a": a, "b": b, "other": other}


def pods_layout(root: Path) -> None:
    """var/log/pods and var/log/containers as a kubelet writes them."""
    for ns, pod, uid, container, cid in (
        ("default", "web-7d9f", UID_A, "nginx", CID_A),
        ("kube-system", "coredns-5d78c", UID_B, "coredns", CID_B),
    ):
        d = root / "var/log/pods" / f"{ns}_{pod}_{uid}" / container
        d.mkdir(parents=True)
        (d / "0.log").write_text("log\n")
        cdir = root / "var/log/containers"
        cdir.mkdir(parents=True, exist_ok=True)
        os.symlink(d / "0.log", cdir / f"{pod}_{ns}_{container}-{cid}.log")
    # noise that must be ignored
    (root / "var/log/pods" / "not-a-pod").mkdir()
    (root / "var/log/containers" / "garbage.log").write_text("")


def test_find_cgroup2_mount_reads_mounts_file(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"
        "cgroup2 /sys/fs/cgroup/my\\040unified cgroup2 rw 0 0\n"
    )
    assert snap.find_cgroup2_mount(mounts) == Path("/sys/fs/cgroup/my unified")
    mounts.write_text("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n")
    assert snap.find_cgroup2_mount(mounts) is None
    real = snap.find_cgroup2_mount()
    if real is not None:
        assert (real / "cgroup.procs").exists()


def test_resolver_maps_inodes_and_rewalks_for_new_ids(tmp_path: Path) -> None:
    dirs = kubelet_tree(tmp_path)
    r = snap.CgroupResolver(tmp_path, min_interval=0)
    a_id = os.stat(dirs["a"]).st_ino
    assert r.path_of(a_id) == f"/kubepods/burstable/pod{UID_A}/{CID_A}"
    assert r.path_of(os.stat(tmp_path).st_ino) == "/"
    late = tmp_path / "kubepods" / "besteffort" / "podnew"
    late.mkdir(parents=True)
    late_id = os.stat(late).st_ino
    assert r.path_of(late_id) is None
    r.resolve([late_id, a_id])
    assert r.path_of(late_id) == "/kubepods/besteffort/podnew"
    assert not r.unresolved
    # rate limit: with a long interval an unknown id waits for the next walk
    slow = snap.CgroupResolver(tmp_path, min_interval=3600)
    walks = slow.walks
    newer = tmp_path / "newer"
    newer.mkdir()
    slow.resolve([os.stat(newer).st_ino])
    assert slow.walks == walks and os.stat(newer).st_ino in slow.unresolved
    # an id no walk can find stops costing walks after a few tries
    ghost = 2**60 + 12345
    before = r.walks
    for _ in range(10):
        r.resolve([ghost])
    assert r.walks - before == 3 and ghost in r.unresolved
    table = r.table()
    assert table.schema.names == ["cgroup_id", "path", "resolved_at"]
    assert dict(zip(table.column("cgroup_id").to_pylist(), table.column("path").to_pylist(),
                    strict=True))[a_id].endswith(CID_A)


def test_read_process_of_a_child_with_a_hostile_name(tmp_path: Path) -> None:
    # comm containing ") " and spaces is the classic /proc/PID/stat parsing trap.
    evil = tmp_path / "a) b (c"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", evil)
    child = subprocess.Popen([str(evil), "30", "1s"])
    try:
        time.sleep(0.1)
        r = snap.CgroupResolver()
        row = snap.read_process(child.pid, resolver=r)
        assert row is not None
        assert row.tgid == child.pid and row.ppid == os.getpid()
        assert row.comm == "a) b (c"
        assert row.uid == os.getuid()
        assert row.exe == str(evil)
        assert row.cmdline == f"{evil} 30 1s"
        assert row.netns == os.stat("/proc/self/ns/net").st_ino
        now = time.time_ns()
        assert row.start_time is not None
        assert now - 5 * 10**9 < row.start_time <= now + 10**9  # started just now
        cg = Path(f"/proc/{child.pid}/cgroup").read_text()
        v2 = [line[3:] for line in cg.splitlines() if line.startswith("0::")]
        assert row.cgroup_path == (v2[0] if v2 else None)
        if r.mount is not None and row.cgroup_path:
            assert row.cgroup_id == os.stat(r.mount / row.cgroup_path.lstrip("/")).st_ino
    finally:
        child.kill()
        child.wait()
    assert snap.read_process(child.pid) is None  # gone: skipped, not an error


def test_scan_processes_finds_this_process() -> None:
    rows = snap.scan_processes(resolver=snap.CgroupResolver())
    me = [r for r in rows if r.tgid == os.getpid()]
    assert len(me) == 1 and me[0].source == "scan"
    assert me[0].exe == os.path.realpath(sys.executable)
    table = snap.processes_table(rows)
    assert table.num_rows == len(rows) and table.column("tgid").null_count == 0


def test_process_in_a_real_cgroup(tmp_path: Path) -> None:
    mount = snap.find_cgroup2_mount()
    if os.geteuid() != 0 or mount is None:
        pytest.skip("needs root and a cgroup2 mount to create a cgroup")
    cg = mount / f"dnstrail-test-{uuid.uuid4().hex[:8]}"
    cg.mkdir()
    child = subprocess.Popen(["sleep", "30"])
    try:
        (cg / "cgroup.procs").write_text(str(child.pid))
        r = snap.CgroupResolver(mount)
        row = snap.read_process(child.pid, resolver=r)
        assert row is not None
        assert row.cgroup_path == "/" + cg.name
        assert row.cgroup_id == os.stat(cg).st_ino
        assert r.path_of(row.cgroup_id) == "/" + cg.name
    finally:
        child.kill()
        child.wait()
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.05)


def test_pods_from_var_log_layout(tmp_path: Path) -> None:
    pods_layout(tmp_path)
    rows = snap.scan_pods_root(tmp_path)
    table = snap.pods_table(rows)
    got = {(r["pod_uid"], r["namespace"], r["pod"], r["container"], r["container_id"])
           for r in table.to_pylist()}
    assert got == {
        (UID_A, "default", "web-7d9f", None, None),
        (UID_A, "default", "web-7d9f", "nginx", CID_A),
        (UID_B, "kube-system", "coredns-5d78c", None, None),
        (UID_B, "kube-system", "coredns-5d78c", "coredns", CID_B),
    }
    assert set(table.column("source").to_pylist()) == {"var-log-pods"}
    assert snap.scan_pods_root(tmp_path / "absent") == []


def test_pods_from_kubectl_json(tmp_path: Path) -> None:
    doc = {"items": [
        {"metadata": {"uid": UID_A, "name": "web-7d9f", "namespace": "default"},
         "status": {"containerStatuses": [
             {"name": "nginx", "containerID": f"containerd://{CID_A}"},
             {"name": "sidecar"}],
             "initContainerStatuses": [{"name": "init", "containerID": "docker://" + CID_B}]}},
        {"metadata": {"name": "no-uid"}},
        "garbage",
    ]}
    path = tmp_path / "pods.json"
    path.write_text(json.dumps(doc))
    rows = snap.read_pods_json(path)
    assert {(r.container, r.container_id) for r in rows} == {
        (None, None), ("nginx", CID_A), ("sidecar", None), ("init", CID_B)}
    assert {r.source for r in rows} == {"kubectl"}
    path.write_text("{not json")
    with pytest.raises(CaptureError, match="not JSON"):
        snap.read_pods_json(path)
    path.write_text("[]")
    with pytest.raises(CaptureError, match="kubectl get pods"):
        snap.read_pods_json(path)


def test_pod_filter_resolves_to_cgroup_ids_in_both_styles(tmp_path: Path) -> None:
    cg_root = tmp_path / "cg"
    dirs = kubelet_tree(cg_root)
    pods_layout(tmp_path / "node")
    pods = snap.scan_pods_root(tmp_path / "node")
    r = snap.CgroupResolver(cg_root)
    a_ids = {os.stat(p).st_ino for p in (dirs["a"], dirs["a"].parent)}
    b_ids = {os.stat(p).st_ino for p in (dirs["b"], dirs["b"].parent)}
    for selector in (UID_A, "web-7d9f", "default/web-7d9f"):
        res = snap.resolve_cgroup_filter(r, pods, [selector])
        assert res.cgroup_ids == a_ids and res.pod_uids == {UID_A}, selector
    # systemd layout spells the uid with underscores
    assert snap.resolve_cgroup_filter(r, pods, ["kube-system/coredns-5d78c"]).cgroup_ids == b_ids
    assert snap.resolve_cgroup_filter(r, pods, [], ["dnsmasq"]).cgroup_ids == {
        os.stat(dirs["other"]).st_ino}
    with pytest.raises(snap.PodNotFound, match="no pod matches --pod 'nope'"):
        snap.resolve_cgroup_filter(r, pods, ["nope"])
    # a uid unknown to the snapshot still selects by cgroup path
    new_uid = str(uuid.uuid4())
    (cg_root / "kubepods" / f"pod{new_uid}").mkdir()
    r.walk()
    assert len(snap.resolve_cgroup_filter(r, pods, [new_uid]).cgroup_ids) == 1


def test_exec_events_become_process_rows(tmp_path: Path) -> None:
    dirs = kubelet_tree(tmp_path)
    r = snap.CgroupResolver(tmp_path)
    cg = os.stat(dirs["a"]).st_ino
    ts = time.time_ns()
    batch = pa.RecordBatch.from_pylist(
        [{"ts": ts, "mono_ns": 1, "seq": 0, "tgid": os.getpid(), "tid": os.getpid(), "uid": 0,
              "comm": Path(f"/proc/{os.getpid()}/comm").read_text().strip(), "cgroup_id": cg,
              "netns": 5, "ppid": 1, "filename": "/usr/bin/python3"},
         {"ts": ts + 1, "mono_ns": 2, "seq": 1, "tgid": 2**22 + 7, "tid": 2**22 + 7, "uid": 0,
              "comm": "gone", "cgroup_id": cg, "netns": 5, "ppid": 1, "filename": "/bin/gone"}],
        schema=EXECS_SCHEMA)
    rows = snap.exec_rows(batch, r)
    assert [x.source for x in rows] == ["exec", "exec"]
    assert rows[0].exe == os.path.realpath(sys.executable)  # alive: read from /proc
    assert rows[1].exe is None and rows[1].cmdline is None  # gone: unknown, not guessed
    assert rows[0].start_time == ts
    assert rows[1].cgroup_path is not None and rows[1].cgroup_path.endswith(CID_A)
    assert snap.processes_table(rows).num_rows == 2
