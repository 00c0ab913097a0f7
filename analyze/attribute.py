"""Pod attribution: cgroup path -> pod UID, QoS class and container id -> pod names.

The kubelet names cgroups after the pod UID and the runtime after the container id, with two
drivers:

* cgroupfs: ``/kubepods/burstable/pod<uid>/<id>``, ``/kubepods/besteffort/pod<uid>/<id>``,
  ``/kubepods/pod<uid>/<id>`` (guaranteed);
* systemd: ``/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with
  underscores>.slice/cri-containerd-<id>.scope`` (``crio-<id>.scope``, ``docker-<id>.scope``,
  ``cri-dockerd-<id>.scope``), ``/kubepods.slice/kubepods-pod<uid>.slice/...`` (guaranteed).

The same shapes appear nested under another slice (kind nodes: ``/kubelet.slice/kubelet-
kubepods.slice/...``). A docker or containerd scope outside ``kubepods`` is a container with no
pod (``/system.slice/docker-<id>.scope``, ``/docker/<id>``); anything else is a host process and
its attribution columns are null. The pods snapshot (``/var/log/pods`` or ``kubectl get pods``)
turns the UID into namespace and pod name and the container id into the container name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from analyze.stages import ATTR_COLUMNS, PROCESS_COLUMN

_UID = (r"[0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_]"
        r"[0-9a-fA-F]{12}|[0-9a-fA-F]{32}")
_POD_RE = re.compile(r"[-/]pod(?P<uid>" + _UID + r")(?:\.slice)?(?:/|$)")
_CID_RE = re.compile(r"(?:^|/)(?:(?P<rt>cri-containerd|crio|docker|cri-dockerd|libpod)-)?"
                     r"(?P<cid>[0-9a-f]{64})(?:\.scope)?$")
_CONMON_RE = re.compile(r"(?:^|/)crio-conmon-[0-9a-f]{64}\.scope$")


@dataclass(frozen=True)
class CgroupInfo:
    """What a cgroup path says about the process in it."""

    pod_uid: str | None
    qos: str | None
    container_id: str | None


@lru_cache(maxsize=65536)
def parse_cgroup_path(path: str | None) -> CgroupInfo:
    """Pod UID (with dashes), QoS class and container id from a cgroup path.

    ``/kubepods/besteffort/pod<uid>/<64 hex>`` gives the UID, ``besteffort`` and the id; a
    path with no ``kubepods`` component gives no pod.
    """
    if not path or not isinstance(path, str):
        return CgroupInfo(None, None, None)
    path = path.rstrip("/")
    cid_match = _CID_RE.search(path)
    cid = cid_match.group("cid") if cid_match else None
    if _CONMON_RE.search(path):
        cid = None
    kube = path.find("kubepods")
    pod = _POD_RE.search(path, kube) if kube >= 0 else None
    if not pod:
        return CgroupInfo(None, None, cid)
    uid = pod.group("uid").replace("_", "-").lower()
    mid = path[kube:pod.start()].lower()
    if "besteffort" in mid:
        qos = "besteffort"
    elif "burstable" in mid:
        qos = "burstable"
    else:
        qos = "guaranteed"
    return CgroupInfo(uid, qos, cid)


def _pods_lookup(pods: pd.DataFrame) -> tuple[dict[str, tuple], dict[str, tuple]]:
    by_cid: dict[str, tuple] = {}
    by_uid: dict[str, tuple] = {}
    if pods is None or pods.empty:
        return by_cid, by_uid
    for uid, ns, pod, container, cid in zip(
            pods["pod_uid"], pods["namespace"], pods["pod"], pods["container"],
            pods["container_id"]):
        if isinstance(uid, str):
            by_uid.setdefault(uid.lower(), (ns, pod))
        if isinstance(cid, str) and cid:
            by_cid[cid.lower().split("://")[-1]] = (uid, ns, pod, container)
    return by_cid, by_uid


def _resolve(info: CgroupInfo, by_cid: dict[str, tuple],
             by_uid: dict[str, tuple]) -> tuple:
    uid, qos, cid = info.pod_uid, info.qos, info.container_id
    ns = pod = container = None
    if cid is not None:
        hit = by_cid.get(cid)
        if hit is None:
            # a snapshot may hold short ids (docker ps shows 12 characters)
            for known, value in by_cid.items():
                if len(known) >= 12 and cid.startswith(known):
                    hit = value
                    break
        if hit is not None:
            uid = uid or (hit[0].lower() if isinstance(hit[0], str) else None)
            ns, pod, container = hit[1], hit[2], hit[3]
    if uid is not None and (ns is None or pod is None):
        got = by_uid.get(uid)
        if got is not None:
            ns, pod = got
    return (uid, ns, pod, container, cid, qos)


def _path_maps(cgroups: pd.DataFrame, processes: pd.DataFrame) -> tuple[dict, dict]:
    path_by_id: dict[tuple, str] = {}
    for table, col in ((processes, "cgroup_path"), (cgroups, "path")):
        if table is None or table.empty or "cgroup_id" not in table:
            continue
        for nd, cid, p in zip(table["node"], table["cgroup_id"], table[col]):
            if isinstance(p, str) and pd.notna(cid):
                path_by_id[(nd, int(cid))] = p        # cgroups table wins (read last)
    path_by_pid: dict[tuple, str] = {}
    if processes is not None and not processes.empty:
        for nd, pid, p in zip(processes["node"], processes["tgid"], processes["cgroup_path"]):
            if isinstance(p, str) and pd.notna(pid):
                path_by_pid.setdefault((nd, int(pid)), p)
    return path_by_id, path_by_pid


def _pairs(frame: pd.DataFrame, column: pd.Series) -> tuple[np.ndarray, list[tuple]]:
    """Codes of the distinct (node, value) pairs of the rows, and the pairs (code -1: none)."""
    n = len(frame)
    if "node" in frame:
        ncodes, nuniq = frame["node"].factorize(use_na_sentinel=False)
    else:
        ncodes, nuniq = np.zeros(n, dtype=np.int64), np.array([None], dtype=object)
    vcodes, vuniq = column.factorize(use_na_sentinel=True)
    width = len(vuniq) + 1
    combo = np.asarray(ncodes, dtype=np.int64) * width + (np.asarray(vcodes) + 1)
    codes, uniq = pd.factorize(combo)
    pairs = [(nuniq[c // width], vuniq[c % width - 1] if c % width else None) for c in uniq]
    return np.asarray(codes), pairs


#: Attribution columns people fill and concatenate in notebooks stay plain strings; the
#: others are categoricals (a few distinct values over millions of rows).
TEXT_COLUMNS = frozenset({"namespace", "pod", "container"})


def _broadcast(values: list[Any], codes: np.ndarray, index: pd.Index,
               text: bool = False) -> pd.Series:
    """values[codes], as a categorical or (``text``) as a str column."""
    if text:
        small = pd.array(values, dtype="str")
        return pd.Series(small.take(codes), index=index)
    vcodes, cats = pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=True)
    full = np.asarray(vcodes, dtype=np.int64)[codes] if len(values) else codes
    return pd.Series(pd.Categorical.from_codes(full, categories=pd.Index(cats, dtype=object)),
                     index=index)


def cgroup_paths(frame: pd.DataFrame, cgroups: pd.DataFrame,
                 processes: pd.DataFrame) -> pd.Series:
    """cgroup path of each row (by node + cgroup_id, else by node + tgid from processes)."""
    n = len(frame)
    path_by_id, path_by_pid = _path_maps(cgroups, processes)
    if n == 0 or not (path_by_id or path_by_pid) or "cgroup_id" not in frame:
        return pd.Series(pd.Categorical([None] * n, categories=pd.Index([], dtype=object)),
                         index=frame.index)
    codes, pairs = _pairs(frame, frame["cgroup_id"])
    out = _broadcast([path_by_id.get((nd, int(c))) if c is not None else None
                      for nd, c in pairs], codes, frame.index)
    missing = out.isna().to_numpy()
    if missing.any() and path_by_pid and "tgid" in frame:
        sub = frame.loc[missing]
        tcodes, tpairs = _pairs(sub, sub["tgid"])
        got = _broadcast([path_by_pid.get((nd, int(t))) if t is not None else None
                          for nd, t in tpairs], tcodes, sub.index)
        out = out.astype(object)
        out[missing] = got.astype(object)
        out = out.astype("category")
    return out


def attribution_columns(frame: pd.DataFrame, cgroups: pd.DataFrame,
                        processes: pd.DataFrame, pods: pd.DataFrame) -> pd.DataFrame:
    """``cgroup_path`` and the attribution columns for the rows of ``frame``."""
    path = cgroup_paths(frame, cgroups, processes)
    codes, pairs = _pairs(frame, path)
    lookups: dict[Any, tuple[dict, dict]] = {}
    rows = []
    for nd, p in pairs:
        if nd not in lookups:
            if pods is not None and not pods.empty and "node" in pods:
                lookups[nd] = _pods_lookup(pods[pods["node"] == nd])
            else:
                lookups[nd] = ({}, {})
        rows.append(_resolve(parse_cgroup_path(p), *lookups[nd]))
    out = {"cgroup_path": path}
    for j, name in enumerate(ATTR_COLUMNS):
        out[name] = _broadcast([r[j] for r in rows], codes, frame.index,
                               text=name in TEXT_COLUMNS)
    return pd.DataFrame(out, index=frame.index)


_NO_START = np.iinfo(np.int64).min


def _name_history(processes: pd.DataFrame, with_node: bool
                  ) -> dict[tuple[Any, int], tuple[np.ndarray, list[Any]]]:
    """Per (node, tgid): the times from which each known name holds (ascending) and the
    names. A processes row holds from its ``start_time`` (the exec for source='exec', the
    fork for a /proc scan; unknown: from the beginning). Rows with the same start keep the
    first one, so the scan at the start of a capture wins over the scan at its end."""
    if processes is None or processes.empty or "tgid" not in processes \
            or "comm" not in processes:
        return {}
    start = processes.get("start_time")
    if start is None:
        ns = np.full(len(processes), _NO_START, dtype=np.int64)
    else:
        ns = np.asarray(pd.to_datetime(start, utc=True).array.asi8, dtype=np.int64).copy()
        ns[pd.isna(start).to_numpy()] = _NO_START
    nodes = (processes["node"].to_numpy(dtype=object) if with_node and "node" in processes
             else np.full(len(processes), None, dtype=object))
    rows = pd.DataFrame({"node": nodes, "tgid": processes["tgid"].to_numpy(dtype=object),
                         "start": ns, "comm": processes["comm"].to_numpy(dtype=object)})
    rows = rows[rows["tgid"].notna() & rows["comm"].notna()]
    rows = rows.drop_duplicates(["node", "tgid", "start"], keep="first")
    rows = rows.sort_values("start", kind="stable")
    out: dict[tuple[Any, int], tuple[np.ndarray, list[Any]]] = {}
    keys = list(zip(rows["node"].tolist(), rows["tgid"].astype("int64").tolist()))
    for key, group in rows.groupby(pd.Series(keys, index=rows.index, dtype=object),
                                   sort=False):
        out[key] = (group["start"].to_numpy(dtype=np.int64), group["comm"].tolist())
    return out


def process_names(frame: pd.DataFrame, processes: pd.DataFrame) -> pd.Series:
    """The process name of each row: its thread-group leader's comm, where ``comm`` is the
    thread's (dig's queries come from a thread named ``isc-net-0000``).

    ``frame`` has ``tgid``, ``tid``, ``comm`` and ``ts`` (and ``node``, matched with the
    processes' ``node``). A row of the leader itself (tid = tgid) names its process. Any
    other row takes the name the processes snapshot knew for its tgid at its time: the last
    exec before it, else the /proc scan (a name set at exec stays until the next exec). Null
    when nothing tells (no tgid: pcaps; a process that started and ended unseen by the
    snapshots)."""
    n = len(frame)
    if n == 0 or "tgid" not in frame:
        return pd.Series(pd.Categorical([None] * n, categories=pd.Index([], dtype=object)),
                         index=frame.index)
    tgid = pd.array(frame["tgid"], dtype="Int64")
    comm = frame["comm"].to_numpy(dtype=object) if "comm" in frame else np.full(n, None, object)
    has_comm = np.asarray(pd.notna(comm), dtype=bool)
    if "tid" in frame:
        tid = pd.array(frame["tid"], dtype="Int64")
        leader = np.asarray((tid == tgid).fillna(False), dtype=bool) & has_comm
    else:
        leader = np.zeros(n, dtype=bool)
    out = np.full(n, None, dtype=object)
    out[leader] = comm[leader]
    rest = ~leader & ~np.asarray(tgid.isna(), dtype=bool)
    with_node = "node" in frame and processes is not None and "node" in processes
    history = _name_history(processes, with_node) if rest.any() else {}
    if history:
        sub = frame.loc[rest, [c for c in ("node", "tgid", "ts")
                               if c in frame and (c != "node" or with_node)]]
        codes, pairs = _pairs(sub, sub["tgid"])
        single: list[Any] = []
        timed: list[int] = []
        for j, (nd, pid) in enumerate(pairs):
            hist = history.get((nd, int(pid))) if pid is not None else None
            if hist is None:
                single.append(None)
            elif len(set(hist[1])) == 1:
                single.append(hist[1][0])
            else:  # renamed (exec) or pid reused: the name at each row's time
                single.append(None)
                timed.append(j)
        names = np.array(single, dtype=object)[codes]
        if timed:
            ts = sub["ts"]
            ns = (np.asarray(pd.to_datetime(ts, utc=True).array.asi8, dtype=np.int64)
                  if not pd.api.types.is_integer_dtype(ts) else ts.to_numpy(dtype=np.int64))
            order = np.argsort(codes, kind="stable")
            bounds = np.searchsorted(codes[order], np.arange(len(pairs) + 1), "left")
            for j in timed:
                at = order[bounds[j]:bounds[j + 1]]
                nd, pid = pairs[j]
                starts, hist_names = history[(nd, int(pid))]
                k = np.searchsorted(starts, ns[at], "right") - 1
                got = np.array(hist_names + [None], dtype=object)
                names[at] = got[np.where(k >= 0, k, len(hist_names))]
        out[rest] = names
    return pd.Series(pd.Categorical(out), index=frame.index)


def attribute(frame: pd.DataFrame, cgroups: pd.DataFrame, processes: pd.DataFrame,
              pods: pd.DataFrame, *, inplace: bool = False) -> pd.DataFrame:
    """``frame`` with ``cgroup_path``, the attribution columns and (when it has ``tgid``)
    ``process`` set (a copy unless inplace).

    Rows from pcaps (no cgroup) get nulls. Pods are looked up per node.
    """
    cols = attribution_columns(frame, cgroups, processes, pods)
    if "tgid" in frame:
        cols[PROCESS_COLUMN] = process_names(frame, processes)
    if not inplace:
        frame = frame.copy()
    for name in cols.columns:
        frame[name] = cols[name]
    return frame
