"""Small system helpers: running commands, finding the cgroup2 mount, killing bounded."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from dnstrail.errors import DnstrailError


class LabError(DnstrailError):
    """The network-namespace lab could not be set up or torn down."""


def run_cmd(argv: list[str], *, check: bool = True, timeout: float = 20.0) -> str:
    """Run a command, return its stdout; raise LabError with its stderr when it fails."""
    try:
        proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]} is not installed ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(argv)} did not finish in {timeout}s") from exc
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def cgroup2_mount() -> Path:
    """The mount point of the cgroup v2 hierarchy, read from /proc/self/mounts."""
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "cgroup2":
                return Path(parts[1].replace("\\040", " "))
    raise LabError("no cgroup2 filesystem is mounted (see /proc/self/mounts)")


def proc_start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def process_alive(pid: int, start_time: int | None = None) -> bool:
    """True when PID runs (not a zombie) and, if given, started at start_time (pids get
    reused)."""
    now = proc_start_time(pid)
    if now is None or not _running(pid):
        return False
    return start_time is None or now == start_time


def kill_pids(pids: list[int], grace: float = 2.0) -> None:
    """SIGTERM the pids, wait up to grace seconds, then SIGKILL what is left."""
    pids = [p for p in pids if p > 1 and p != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            pids = [p for p in pids if _running(p)]
            if not pids:
                return
            time.sleep(0.05)


def _running(pid: int) -> bool:
    """A pid that exists and is not a zombie. Zombies are not reaped here: a child's status
    belongs to whoever holds its Popen."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state != "Z"
