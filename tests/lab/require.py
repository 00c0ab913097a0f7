"""Skip helpers: a test that needs root, BCC or the lab skips with a reason when they are
missing (tests/conftest.py turns such a skip into a failure under CI=true)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

TRACEFS = Path("/sys/kernel/tracing")
LAB_TOOLS = ("ip", "dnsmasq", "dig", "getent")


def _is_mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f if len(line.split()) > 1)


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


def require_root_bcc() -> Any:
    """Skip unless we are root with BCC, kernel headers and tracefs; returns the bcc module.
    Mounts tracefs when it is missing (as deploy/setup.sh --lab does)."""
    require_root()
    try:
        import bcc  # type: ignore[import-not-found]
    except ImportError as exc:
        pytest.skip(f"BCC's python module is not importable ({exc}); run deploy/setup.sh --lab")
    build = Path(f"/lib/modules/{os.uname().release}/build")
    if not (build / "include").exists():
        pytest.skip(f"no kernel headers at {build}; run deploy/setup.sh --lab")
    if not _is_mounted(TRACEFS):
        r = subprocess.run(["mount", "-t", "tracefs", "tracefs", str(TRACEFS)],
                           check=False, capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"tracefs is not mounted at {TRACEFS} and mounting failed: {r.stderr}")
    return bcc


def require_lab() -> None:
    """Skip unless we are root with the lab's tools and a cgroup2 mount."""
    require_root()
    missing = [t for t in LAB_TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"lab tools missing: {', '.join(missing)}; run deploy/setup.sh --lab")
    from ._sys import LabError, cgroup2_mount

    try:
        cgroup2_mount()
    except LabError as exc:
        pytest.skip(str(exc))
