"""Fake Kubernetes pods: kubelet-shaped cgroup v2 directories and node metadata files."""

from __future__ import annotations

import json
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

from ._sys import LabError

QOS_CLASSES = ("guaranteed", "burstable", "besteffort")
STYLES = ("cgroupfs", "systemd")


@dataclass(frozen=True)
class FakePod:
    """One container of a fake pod. cgroup_path is relative to the cgroup2 mount."""

    uid: str
    namespace: str
    name: str
    container: str
    container_id: str  # 64 hex digits, no runtime prefix
    qos: str  # guaranteed | burstable | besteffort
    style: str  # cgroupfs | systemd
    cgroup_path: str  # e.g. /kubepods/burstable/pod<uid>/<id>
    pod_cgroup_path: str  # the pod's directory (parent of the container's)
    cgroup_dir: Path  # absolute directory of the container's cgroup
    cgroup_id: int  # inode of cgroup_dir: what bpf_get_current_cgroup_id() returns

    @property
    def pod_name(self) -> str:
        return self.name

    @property
    def container_id_uri(self) -> str:
        return f"containerd://{self.container_id}"

    @property
    def procs_file(self) -> Path:
        return self.cgroup_dir / "cgroup.procs"

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in self.procs_file.read_text().split()]
        except OSError:
            return []


def kubelet_cgroup_dirs(uid: str, container_id: str, qos: str, style: str) -> list[str]:
    """The chain of cgroup directory names from the root down to the container, as kubelet
    (with containerd) makes them."""
    if qos not in QOS_CLASSES:
        raise LabError(f"qos must be one of {QOS_CLASSES}, not {qos!r}")
    if style == "cgroupfs":
        chain = ["kubepods"]
        if qos != "guaranteed":
            chain.append(qos)
        return chain + [f"pod{uid}", container_id]
    if style == "systemd":
        u = uid.replace("-", "_")
        chain = ["kubepods.slice"]
        if qos == "guaranteed":
            chain.append(f"kubepods-pod{u}.slice")
        else:
            chain += [f"kubepods-{qos}.slice", f"kubepods-{qos}-pod{u}.slice"]
        return chain + [f"cri-containerd-{container_id}.scope"]
    raise LabError(f"style must be one of {STYLES}, not {style!r}")


def new_uid() -> str:
    return str(uuid.uuid4())


def new_container_id() -> str:
    return secrets.token_hex(32)


class PodsRoot:
    """A directory laid out like a node's pod metadata: /var/log/pods, /var/log/containers and
    a `kubectl get pods -A -o json`-shaped pods.json."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pods_dir = root / "var" / "log" / "pods"
        self.containers_dir = root / "var" / "log" / "containers"
        self.pods_json = root / "pods.json"
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self.containers_dir.mkdir(parents=True, exist_ok=True)
        self._items: dict[str, dict] = {}
        self._write_json()

    def add(self, pod: FakePod) -> None:
        pod_dir = self.pods_dir / f"{pod.namespace}_{pod.name}_{pod.uid}" / pod.container
        pod_dir.mkdir(parents=True, exist_ok=True)
        log = pod_dir / "0.log"
        if not log.exists():
            log.write_text("2026-11-26T00:00:00.000000000Z stdout F lab container started\n")
        link = self.containers_dir / f"{pod.name}_{pod.namespace}_{pod.container}-{pod.container_id}.log"
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(log.resolve(), link)
        item = self._items.setdefault(pod.uid, {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"uid": pod.uid, "name": pod.name, "namespace": pod.namespace},
            "spec": {"containers": []},
            "status": {"qosClass": pod.qos.capitalize() if pod.qos != "besteffort"
                       else "BestEffort", "containerStatuses": []},
        })
        item["spec"]["containers"].append({"name": pod.container})
        item["status"]["containerStatuses"].append(
            {"name": pod.container, "containerID": pod.container_id_uri, "ready": True})
        self._write_json()

    def _write_json(self) -> None:
        doc = {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
               "items": list(self._items.values())}
        tmp = self.pods_json.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.pods_json)
