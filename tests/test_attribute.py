"""Pod attribution from cgroup paths as kubelets and runtimes write them.

The path strings are the shapes real nodes have (cgroupfs and systemd drivers; containerd,
CRI-O, Docker/cri-dockerd; kind's nested kubelet.slice); a live test in
tests/test_analyze_lab.py checks the same on a recording of fake-kubelet pods.
"""

from __future__ import annotations

import pandas as pd
import pytest

from analyze.attribute import ATTR_COLUMNS, CgroupInfo, attribute, parse_cgroup_path

UID = "8f0e2a4c-1d3b-4e5f-9a6b-7c8d9e0f1a2b"
UND = UID.replace("-", "_")
CID = "4a1f0c3b9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b"

CASES = [
    # cgroupfs driver
    (f"/kubepods/burstable/pod{UID}/{CID}", UID, "burstable", CID),
    (f"/kubepods/besteffort/pod{UID}/{CID}", UID, "besteffort", CID),
    (f"/kubepods/pod{UID}/{CID}", UID, "guaranteed", CID),
    (f"/kubepods/burstable/pod{UID}", UID, "burstable", None),       # pod level
    # systemd driver, containerd / CRI-O / docker
    ((f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UND}.slice/"
      f"cri-containerd-{CID}.scope"), UID, "burstable", CID),
    ((f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UND}.slice/"
      f"crio-{CID}.scope"), UID, "besteffort", CID),
    (f"/kubepods.slice/kubepods-pod{UND}.slice/docker-{CID}.scope", UID, "guaranteed", CID),
    (f"/kubepods.slice/kubepods-pod{UND}.slice/cri-dockerd-{CID}.scope", UID, "guaranteed",
     CID),
    # CRI-O's conmon sits in the pod but is not the container
    ((f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UND}.slice/"
      f"crio-conmon-{CID}.scope"), UID, "burstable", None),
    # kind: the node's kubelet runs under its own slice
    ((f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
      f"kubelet-kubepods-besteffort-pod{UND}.slice/cri-containerd-{CID}.scope"), UID,
     "besteffort", CID),
    # static pods have a 32-hex uid (a hash of the manifest)
    (f"/kubepods/burstable/pod0123456789abcdef0123456789abcdef/{CID}",
     "0123456789abcdef0123456789abcdef", "burstable", CID),
    # containers without a pod, host processes
    (f"/system.slice/docker-{CID}.scope", None, None, CID),
    (f"/docker/{CID}", None, None, CID),
    ("/system.slice/containerd.service", None, None, None),
    ("/user.slice/user-0.slice/session-3.scope", None, None, None),
    ("/", None, None, None),
    (None, None, None, None),
]


@pytest.mark.parametrize("path,uid,qos,cid", CASES)
def test_parse_cgroup_path(path: str | None, uid: str | None, qos: str | None,
                           cid: str | None) -> None:
    assert parse_cgroup_path(path) == CgroupInfo(uid, qos, cid)


def test_hostile_path_is_bounded() -> None:
    path = "/kubepods" + "/pod-x" * 20000 + "/" + "a" * 100000
    assert parse_cgroup_path(path).pod_uid is None


def test_attribute_joins_pods_snapshot() -> None:
    other = "11111111-2222-3333-4444-555555555555"
    cg = pd.DataFrame({
        "node": ["n1", "n1", "n1", "n2"],
        "cgroup_id": pd.array([10, 11, 12, 10], dtype="UInt64"),
        "path": [f"/kubepods/burstable/pod{UID}/{CID}",
                 (f"/kubepods.slice/kubepods-pod{other.replace('-', '_')}.slice/"
                  f"cri-containerd-{'b' * 64}.scope"),
                 "/system.slice/sshd.service",
                 f"/kubepods/besteffort/pod{other}/{'c' * 64}"],
    })
    pods = pd.DataFrame({
        "node": ["n1", "n1", "n2"],
        "pod_uid": [UID, other, other],
        "namespace": ["shop", "kube-system", "batch"],
        "pod": ["web-1", "coredns-x", "job-7"],
        "container": ["app", None, None],
        "container_id": [CID[:12], None, None],        # docker-style short id
    })
    procs = pd.DataFrame({"node": ["n1"], "tgid": pd.array([77], dtype="Int64"),
                          "cgroup_id": pd.array([None], dtype="UInt64"),
                          "cgroup_path": [f"/kubepods/burstable/pod{UID}/{CID}"]})
    events = pd.DataFrame({
        "node": ["n1", "n1", "n1", "n2", "n1", "n1"],
        "cgroup_id": pd.array([10, 11, 12, 10, 999, None], dtype="UInt64"),
        "tgid": pd.array([1, 2, 3, 4, 77, 5], dtype="Int64"),
    })
    out = attribute(events, cg, procs, pods)
    assert list(out["namespace"].fillna("-")) == ["shop", "kube-system", "-", "batch", "shop",
                                                  "-"]
    assert list(out["pod"].fillna("-")) == ["web-1", "coredns-x", "-", "job-7", "web-1", "-"]
    assert out["container"].iloc[0] == "app"
    assert pd.isna(out["container"].iloc[1])           # pod known, container not in snapshot
    assert list(out["qos"].astype(object).fillna("-")) == ["burstable", "guaranteed", "-", "besteffort",
                                            "burstable", "-"]
    assert out["container_id"].iloc[0] == CID
    assert out["cgroup_path"].iloc[2] == "/system.slice/sshd.service"
    assert out["cgroup_path"].iloc[4].startswith("/kubepods/")   # via processes (tgid 77)
    for col in ATTR_COLUMNS:
        assert col in out
    assert "namespace" not in events                     # the input is not modified
