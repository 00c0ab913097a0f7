"""What each lab created, on disk, so that a crashed run's leftovers can be removed later.

Every resource is written to /run/dtl-lab/<lab-id>.json *before* it is created (an intent
log), with the owner's pid and start time. ``cleanup_stale()`` tears down the resources of
every lab whose owner process is gone, and nothing else: labs of other live processes (other
test runs on the same machine) are left alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ._sys import kill_pids, proc_start_time, process_alive, run_cmd

REGISTRY_DIR = Path(os.environ.get("DTL_LAB_REGISTRY", "/run/dtl-lab"))
NETNS_PREFIX = "dtl-"


@dataclass
class Resources:
    lab_id: str
    owner_pid: int
    owner_start: int | None
    netns: list[str] = field(default_factory=list)
    etc_netns: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)  # absolute paths, leaves first on removal
    cgroup_parents: list[str] = field(default_factory=list)  # shared: removed only when empty
    tmpdirs: list[str] = field(default_factory=list)
    pids: list[list[int]] = field(default_factory=list)  # [pid, start time]: pids get reused

    @property
    def path(self) -> Path:
        return REGISTRY_DIR / f"{self.lab_id}.json"

    def save(self) -> None:
        REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, self.path)

    @classmethod
    def new(cls, lab_id: str) -> Resources:
        pid = os.getpid()
        return cls(lab_id=lab_id, owner_pid=pid, owner_start=proc_start_time(pid))

    @classmethod
    def load(cls, path: Path) -> Resources | None:
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None

    def owner_alive(self) -> bool:
        return process_alive(self.owner_pid, self.owner_start)


def netns_pids(name: str) -> list[int]:
    out = run_cmd(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def cgroup_pids(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def remove_cgroup(path: Path) -> list[str]:
    """Kill every process in the cgroup (and below), then rmdir it bottom-up. Returns errors."""
    errors: list[str] = []
    if not path.exists():
        return errors
    kill_file = path / "cgroup.kill"
    if kill_file.exists():
        try:
            kill_file.write_text("1")
        except OSError as exc:
            errors.append(f"{kill_file}: {exc}")
    dirs = sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for d in [*dirs, path]:
        kill_pids(cgroup_pids(d), grace=1.0)
        for _ in range(50):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:  # EBUSY while killed processes exit
                if _ == 49:
                    errors.append(f"rmdir {d}: {exc}")
                time.sleep(0.05)
    return errors


def remove_if_empty(path: Path) -> None:
    """rmdir a shared parent cgroup (kubepods, ...) when no lab uses it any more."""
    try:
        path.rmdir()
    except OSError:
        pass  # still used by another lab, or already gone


def delete_netns(name: str) -> list[str]:
    errors: list[str] = []
    if not Path(f"/run/netns/{name}").exists():
        return errors
    kill_pids(netns_pids(name), grace=1.0)
    try:
        run_cmd(["ip", "netns", "delete", name])
    except Exception as exc:  # noqa: BLE001 - reported to the caller, never swallowed
        errors.append(str(exc))
    return errors


def teardown(res: Resources) -> list[str]:
    """Remove everything res lists, in a safe order. Returns the errors (empty: all gone)."""
    errors: list[str] = []
    kill_pids([p for p, start in res.pids if process_alive(p, start)], grace=2.0)
    for cg in reversed(res.cgroups):
        errors += remove_cgroup(Path(cg))
    for parent in sorted(res.cgroup_parents, key=lambda p: -len(p)):
        remove_if_empty(Path(parent))
    for name in reversed(res.netns):
        errors += delete_netns(name)
    for d in res.etc_netns:
        shutil.rmtree(d, ignore_errors=True)
        if Path(d).exists():
            errors.append(f"could not remove {d}")
    for d in res.tmpdirs:
        shutil.rmtree(d, ignore_errors=True)
        if Path(d).exists():
            errors.append(f"could not remove {d}")
    if not errors:
        try:
            res.path.unlink()
        except FileNotFoundError:
            pass
    return errors


def live_labs() -> list[Resources]:
    if not REGISTRY_DIR.is_dir():
        return []
    labs = [Resources.load(p) for p in REGISTRY_DIR.glob("*.json")]
    return [r for r in labs if r is not None and r.owner_alive()]


def cleanup_stale() -> list[str]:
    """Tear down the leftovers of labs whose owner died. Returns what was removed."""
    removed: list[str] = []
    if REGISTRY_DIR.is_dir():
        for p in REGISTRY_DIR.glob("*.json"):
            res = Resources.load(p)
            if res is None:
                p.unlink(missing_ok=True)
                continue
            if res.owner_alive():
                continue
            teardown(res)
            res.path.unlink(missing_ok=True)
            removed.append(res.lab_id)
    # namespaces named dtl-<pid>-... whose pid is dead and that no live registry claims
    claimed = {n for r in live_labs() for n in r.netns}
    netns_dir = Path("/run/netns")
    names = [p.name for p in netns_dir.iterdir()] if netns_dir.is_dir() else []
    for name in names:
        if name.startswith(NETNS_PREFIX) and name not in claimed and not _pid_of_name_alive(name):
            delete_netns(name)
            removed.append(name)
    etc = Path("/etc/netns")
    if etc.is_dir():
        for d in etc.iterdir():
            if d.name.startswith(NETNS_PREFIX) and d.name not in claimed and \
                    not _pid_of_name_alive(d.name):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(str(d))
    return removed


def _pid_of_name_alive(name: str) -> bool:
    """dtl-<pid>x<n>-... : is <pid> a running process? Names in any other shape are not a
    lab's, so they count as alive (never touched)."""
    m = re.match(rf"^{re.escape(NETNS_PREFIX)}(\d+)x\d+-", name)
    return m is None or process_alive(int(m.group(1)))
