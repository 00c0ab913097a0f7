"""Snapshots of the node beside the events: processes from /proc, cgroup paths, pods.

Events carry ids (tgid, cgroup id, netns inode); these tables turn them into names while the
things still exist: a /proc scan at the start and the end of a capture, exec events, a cgroup
resolver that walks the cgroup2 tree when an unknown id shows up, and the pods a node's kubelet
lays out under ``/var/log/pods`` (or a ``kubectl get pods -A -o json`` file).

Everything read here is treated as untrusted text: fields are length-capped and a missing or
vanished process is skipped, never fatal.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from capture._arrow import arrow_table
from capture.errors import CaptureError
from capture.schema import CGROUPS_SCHEMA, PODS_SCHEMA, PROCESSES_SCHEMA
from capture.selectors import BadSelector, parse_pod

CMDLINE_CAP = 4096
_COMM_CAP = 64
_PATH_CAP = 4096
#: Upper bound on cgroup directories walked (a node has thousands at most).
MAX_CGROUPS = 200_000
#: Upper bound on pods and containers read from a pods root or a kubectl file.
MAX_PODS = 100_000
#: Walks that may fail to find an id before it stops triggering walks; and how many such ids
#: are remembered.
_MAX_MISSES = 3
_MAX_UNRESOLVED = 100_000
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_HEX_ID = re.compile(r"^[0-9a-f]{12,128}$")
_UID = re.compile(
    r"^[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}$"
)


class PodNotFound(CaptureError):
    """no pod matches --pod: give a pod uid, name or namespace/name present on this node"""


def _cap(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return text if len(text) <= limit else text[:limit]


def boot_time_wall_ns() -> int:
    """Wall-clock ns at CLOCK_BOOTTIME zero: /proc/PID/stat start times count from here."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def monotonic_boot_time_ns() -> int:
    """Wall-clock ns at CLOCK_MONOTONIC zero (what bpf_ktime_get_ns counts from)."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)


# -- cgroup2 ------------------------------------------------------------------------------


def find_cgroup2_mount(mounts_file: str | Path = "/proc/self/mounts") -> Path | None:
    """Mount point of the cgroup2 (unified) hierarchy, or None when it is not mounted."""
    try:
        text = Path(mounts_file).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            # /proc/mounts escapes spaces as \040
            return Path(parts[1].replace("\\040", " "))
    return None


class CgroupResolver:
    """Maps cgroup v2 ids (directory inodes) to paths relative to the cgroup2 mount.

    The tree is walked at start; ``resolve`` re-walks when it meets unknown ids, at most once
    per ``min_interval`` seconds, so a cgroup created during the capture is named while it
    exists. Every id ever resolved is kept (``table()``), with the time it was resolved.
    """

    def __init__(self, mount: str | Path | None = None, min_interval: float = 1.0) -> None:
        self.mount = Path(mount) if mount is not None else find_cgroup2_mount()
        self.min_interval = min_interval
        self._paths: dict[int, tuple[str, int]] = {}
        self._misses: dict[int, int] = {}
        self._last_walk = -1e18
        self.walks = 0
        self.unresolved: set[int] = set()
        if self.mount is not None:
            self.walk()

    def walk(self) -> None:
        self._last_walk = time.monotonic()
        self.walks += 1
        if self.mount is None:
            return
        now = time.time_ns()
        stack = [(self.mount, "/")]
        seen = 0
        while stack and seen < MAX_CGROUPS:
            directory, rel = stack.pop()
            try:
                ino = os.stat(directory).st_ino
            except OSError:
                continue  # removed while walking
            seen += 1
            if ino not in self._paths:
                self._paths[ino] = (rel, now)
            self.unresolved.discard(ino)
            try:
                with os.scandir(directory) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False):
                            child = rel.rstrip("/") + "/" + entry.name
                            stack.append((Path(entry.path), child))
            except OSError:
                continue

    def path_of(self, cgroup_id: int) -> str | None:
        hit = self._paths.get(cgroup_id)
        return hit[0] if hit else None

    def resolve(self, ids: Iterable[int]) -> None:
        """Make sure these ids are known, re-walking (rate-limited) when some are not.

        An id that several walks could not find (its cgroup was gone before we looked, or it
        is outside the cgroup2 mount we see) stops triggering walks; a later walk for another
        reason still names it.
        """
        unknown = {int(i) for i in ids if i is not None and int(i) not in self._paths}
        fresh = {i for i in unknown if self._misses.get(i, 0) < _MAX_MISSES}
        if not fresh:
            return
        if time.monotonic() - self._last_walk >= self.min_interval:
            self.walk()
            for i in fresh:
                if i not in self._paths and len(self._misses) < _MAX_UNRESOLVED:
                    self._misses[i] = self._misses.get(i, 0) + 1
        if len(self.unresolved) < _MAX_UNRESOLVED:
            self.unresolved |= {i for i in unknown if i not in self._paths}

    def id_of(self, path: str) -> int | None:
        if self.mount is None:
            return None
        try:
            return os.stat(self.mount / path.lstrip("/")).st_ino
        except OSError:
            return None

    def matching(self, substrings: Iterable[str]) -> set[int]:
        """Ids of known cgroups whose path contains any of the substrings."""
        subs = [s for s in substrings if s]
        return {i for i, (p, _) in self._paths.items() if any(s in p for s in subs)}

    def __len__(self) -> int:
        return len(self._paths)

    def known(self) -> dict[int, str]:
        return {i: p for i, (p, _) in self._paths.items()}

    def table(self) -> pa.Table:
        items = sorted(self._paths.items())
        return arrow_table(
            {
                "cgroup_id": [i for i, _ in items],
                "path": [p for _, (p, _) in items],
                "resolved_at": [t for _, (_, t) in items],
            },
            schema=CGROUPS_SCHEMA,
        )


# -- processes ----------------------------------------------------------------------------


@dataclass
class ProcessRow:
    tgid: int
    ppid: int | None
    uid: int | None
    comm: str | None
    exe: str | None
    cmdline: str | None
    cgroup_id: int | None
    cgroup_path: str | None
    netns: int | None
    start_time: int | None
    source: str


def _read_bytes(path: Path, limit: int) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit)
    except OSError:
        return None


def read_process(
    pid: int,
    proc: Path = Path("/proc"),
    resolver: CgroupResolver | None = None,
    boot_wall_ns: int | None = None,
    source: str = "scan",
) -> ProcessRow | None:
    """One process from /proc, or None when it vanished. Unreadable fields become null."""
    base = proc / str(pid)
    stat = _read_bytes(base / "stat", 4096)
    if not stat:
        return None
    text = stat.decode("utf-8", "replace")
    open_paren, close_paren = text.find("("), text.rfind(")")
    if open_paren < 0 or close_paren < open_paren:
        return None
    comm = text[open_paren + 1 : close_paren]
    rest = text[close_paren + 2 :].split()
    # rest[0] is field 3 (state): ppid is field 4, starttime field 22.
    ppid = int(rest[1]) if len(rest) > 1 and rest[1].lstrip("-").isdigit() else None
    start_time = None
    if len(rest) > 19 and rest[19].isdigit():
        boot = boot_wall_ns if boot_wall_ns is not None else boot_time_wall_ns()
        start_time = boot + int(rest[19]) * 1_000_000_000 // _CLK_TCK
    uid = None
    status = _read_bytes(base / "status", 8192)
    if status:
        for line in status.decode("utf-8", "replace").splitlines():
            if line.startswith("Uid:"):
                fields = line.split()
                if len(fields) > 1 and fields[1].isdigit():
                    uid = int(fields[1])
                break
    try:
        exe: str | None = _cap(os.readlink(base / "exe"), _PATH_CAP)
    except OSError:
        exe = None
    raw_cmd = _read_bytes(base / "cmdline", CMDLINE_CAP)
    cmdline = (
        raw_cmd.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
        if raw_cmd
        else None
    )
    cgroup_path = None
    cg = _read_bytes(base / "cgroup", 65536)
    if cg:
        for line in cg.decode("utf-8", "replace").splitlines():
            if line.startswith("0::"):
                cgroup_path = _cap(line[3:], _PATH_CAP)
                break
    cgroup_id = resolver.id_of(cgroup_path) if (resolver is not None and cgroup_path) else None
    try:
        netns: int | None = os.stat(base / "ns" / "net").st_ino
    except OSError:
        netns = None
    return ProcessRow(
        tgid=pid, ppid=ppid, uid=uid, comm=_cap(comm, _COMM_CAP), exe=exe, cmdline=cmdline,
        cgroup_id=cgroup_id, cgroup_path=cgroup_path, netns=netns, start_time=start_time,
        source=source,
    )


def scan_processes(
    proc: str | Path = "/proc", resolver: CgroupResolver | None = None
) -> list[ProcessRow]:
    """Every process visible in /proc now."""
    proc = Path(proc)
    boot = boot_time_wall_ns()
    rows = []
    try:
        names = os.listdir(proc)
    except OSError as exc:
        raise CaptureError(f"cannot list {proc}: {exc.strerror}") from None
    for name in names:
        if name.isdigit():
            row = read_process(int(name), proc, resolver, boot)
            if row is not None:
                rows.append(row)
    return rows


def processes_table(rows: Iterable[ProcessRow]) -> pa.Table:
    cols: dict[str, list[Any]] = {f.name: [] for f in PROCESSES_SCHEMA}
    for r in rows:
        for name, values in cols.items():
            values.append(getattr(r, name))
    return arrow_table(cols, schema=PROCESSES_SCHEMA)


def exec_rows(
    execs: pa.Table | pa.RecordBatch,
    resolver: CgroupResolver | None = None,
    proc: Path = Path("/proc"),
    read_proc: bool = True,
) -> list[ProcessRow]:
    """processes rows (source='exec') from exec events; exe/cmdline read from /proc if alive
    (null otherwise: the execs files keep the filename that was executed)."""
    rows = []
    # ts as int ns: the as_py() of a ns timestamp is a pandas.Timestamp, importing pandas
    cols = {name: (col.cast(pa.int64()) if pa.types.is_timestamp(col.type) else col).to_pylist()
            for name, col in zip(execs.schema.names, execs.columns)}
    for ev in (dict(zip(cols, vals)) for vals in zip(*cols.values())):
        tgid = ev.get("tgid")
        if tgid is None:
            continue
        exe = cmdline = None
        if read_proc:
            live = read_process(int(tgid), proc, None, None, "exec")
            if live is not None and live.comm == ev.get("comm"):
                exe, cmdline = live.exe, live.cmdline
        start_ns = ev.get("ts")
        cgid = ev.get("cgroup_id")
        rows.append(
            ProcessRow(
                tgid=int(tgid), ppid=ev.get("ppid"), uid=ev.get("uid"), comm=ev.get("comm"),
                exe=exe, cmdline=cmdline,
                cgroup_id=cgid,
                cgroup_path=resolver.path_of(cgid) if (resolver is not None and cgid is not None) else None,
                netns=ev.get("netns"), start_time=start_ns, source="exec",
            )
        )
    return rows


# -- pods ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodRow:
    pod_uid: str
    namespace: str | None
    pod: str | None
    container: str | None
    container_id: str | None
    source: str


_CONTAINER_LOG = re.compile(
    r"^(?P<pod>[^_/]+)_(?P<ns>[^_/]+)_(?P<container>[^_/]+)-(?P<id>[0-9a-f]{12,128})\.log$"
)


def scan_pods_root(root: str | Path = "/") -> list[PodRow]:
    """Pods from a node's kubelet log layout under root.

    ``var/log/pods/<namespace>_<pod>_<uid>/<container>/`` gives pods and containers;
    ``var/log/containers/<pod>_<namespace>_<container>-<id>.log`` gives container ids.
    """
    root = Path(root)
    pods_dir = root / "var" / "log" / "pods"
    rows: list[PodRow] = []
    by_key: dict[tuple[str, str], str] = {}  # (namespace, pod) -> uid
    try:
        pod_entries = sorted(os.listdir(pods_dir))[:MAX_PODS]
    except OSError:
        pod_entries = []
    for entry in pod_entries:
        parts = entry.split("_")
        if len(parts) != 3 or not _UID.match(parts[2]):
            continue
        namespace, pod, uid = parts
        by_key[(namespace, pod)] = uid
        rows.append(PodRow(uid, namespace, pod, None, None, "var-log-pods"))
        try:
            containers = sorted(
                c for c in os.listdir(pods_dir / entry) if (pods_dir / entry / c).is_dir()
            )
        except OSError:
            containers = []
        ids = _container_ids(root, namespace, pod)
        for container in containers[:1000]:
            found = ids.pop(container, [])
            if not found:
                rows.append(PodRow(uid, namespace, pod, container, None, "var-log-pods"))
            for cid in found:
                rows.append(PodRow(uid, namespace, pod, container, cid, "var-log-pods"))
    return rows


def _container_ids(root: Path, namespace: str, pod: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    cdir = root / "var" / "log" / "containers"
    try:
        names = os.listdir(cdir)
    except OSError:
        return out
    for name in names:
        m = _CONTAINER_LOG.match(name)
        if m and m.group("pod") == pod and m.group("ns") == namespace:
            out.setdefault(m.group("container"), []).append(m.group("id"))
    for v in out.values():
        v.sort()
    return out


def read_pods_json(path: str | Path) -> list[PodRow]:
    """Pods and container ids from a ``kubectl get pods -A -o json`` file."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise CaptureError(f"cannot read --pods-json {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise CaptureError(f"--pods-json {path} is not JSON: {exc}") from None
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise CaptureError(f"--pods-json {path}: expected `kubectl get pods -A -o json` output")
    rows: list[PodRow] = []
    for item in items[:MAX_PODS]:
        if not isinstance(item, dict):
            continue
        meta = item.get("metadata") or {}
        uid = meta.get("uid")
        if not isinstance(uid, str):
            continue
        ns, name = meta.get("namespace"), meta.get("name")
        ns = ns if isinstance(ns, str) else None
        name = name if isinstance(name, str) else None
        rows.append(PodRow(uid, ns, name, None, None, "kubectl"))
        status = item.get("status") or {}
        for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
            for cs in status.get(key) or []:
                if not isinstance(cs, dict):
                    continue
                cname = cs.get("name") if isinstance(cs.get("name"), str) else None
                cid = cs.get("containerID")
                if isinstance(cid, str) and "://" in cid:
                    cid = cid.split("://", 1)[1]
                cid = cid if isinstance(cid, str) and _HEX_ID.match(cid) else None
                rows.append(PodRow(uid, ns, name, cname, cid, "kubectl"))
    return rows


def pods_table(rows: Iterable[PodRow]) -> pa.Table:
    unique = list(dict.fromkeys(rows))
    return arrow_table(
        {
            "pod_uid": [r.pod_uid for r in unique],
            "namespace": [r.namespace for r in unique],
            "pod": [r.pod for r in unique],
            "container": [r.container for r in unique],
            "container_id": [r.container_id for r in unique],
            "source": [r.source for r in unique],
        },
        schema=PODS_SCHEMA,
    )


def scan_pods(root: str | Path | None = "/", pods_json: str | Path | None = None) -> list[PodRow]:
    rows: list[PodRow] = []
    if root is not None:
        rows += scan_pods_root(root)
    if pods_json is not None:
        rows += read_pods_json(pods_json)
    return rows


def pod_uids(selector: str, pods: Iterable[PodRow]) -> set[str]:
    """Pod uids a --pod value names (``capture.selectors``: a uid, a pod name or
    namespace/name, names as globs). A uid is taken even when the snapshot does not know it
    (yet): its cgroups carry it in their paths. BadSelector for a value of no such form."""
    sel = parse_pod(selector)
    uids = {p.pod_uid for p in pods if sel.matches(p.pod_uid, p.namespace, p.pod)}
    if not uids and sel.uid is not None:
        uids.add(sel.uid)  # a uid not (yet) in the pods snapshot
    return uids


def uid_substrings(uid: str) -> tuple[str, str]:
    """How a pod uid appears in cgroup paths: cgroupfs keeps dashes, systemd uses underscores."""
    return uid, uid.replace("-", "_")


@dataclass
class FilterResolution:
    cgroup_ids: set[int]
    pod_uids: set[str]


def resolve_cgroup_filter(
    resolver: CgroupResolver,
    pods: Iterable[PodRow],
    pod_selectors: Iterable[str] = (),
    cgroup_substrings: Iterable[str] = (),
) -> FilterResolution:
    """cgroup ids selected by --pod and --cgroup values (re-run it to pick up new containers)."""
    pods = list(pods)
    uids: set[str] = set()
    for sel in pod_selectors:
        try:
            found = pod_uids(sel, pods)
        except BadSelector as exc:
            raise CaptureError(f"bad --pod {exc}") from None
        if not found:
            raise PodNotFound(
                f"no pod matches --pod {sel!r}: give a pod uid, name or namespace/name "
                "(names may be globs) present on this node (see --pods-root / --pods-json)"
            )
        uids |= found
    subs: list[str] = [s for s in cgroup_substrings if s]
    for uid in uids:
        subs.extend(uid_substrings(uid))
    return FilterResolution(resolver.matching(subs) if subs else set(), uids)


def iter_cgroup_ids(batches: Iterable[pa.RecordBatch]) -> Iterator[int]:
    import pyarrow.compute as pc

    for b in batches:
        idx = b.schema.get_field_index("cgroup_id")
        if idx >= 0 and b.num_rows:
            for v in pc.unique(b.column(idx)).to_pylist():
                if v is not None:
                    yield int(v)
