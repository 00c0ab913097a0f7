"""Smoke tests proving this machine (and CI) really has what dnstrail needs: BCC loads a
tracepoint program that counts, and the installed `dnstrail` command starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dnstrail import __version__
from tests.lab.require import require_root_bcc

REPO = Path(__file__).resolve().parents[1]

COUNT_GETPID = r"""
BPF_ARRAY(counts, u64, 1);

TRACEPOINT_PROBE(syscalls, sys_enter_getpid) {
    if ((bpf_get_current_pid_tgid() >> 32) != TARGET_TGID)
        return 0;
    int key = 0;
    u64 *value = counts.lookup(&key);
    if (value)
        __sync_fetch_and_add(value, 1);
    return 0;
}
"""


@pytest.mark.live
@pytest.mark.timeout(120)
def test_bcc_counts_getpid_through_a_tracepoint() -> None:
    bcc = require_root_bcc()
    bpf = bcc.BPF(text=COUNT_GETPID.encode(), cflags=[f"-DTARGET_TGID={os.getpid()}"])
    try:
        counts = bpf[b"counts"]
        before = counts[counts.Key(0)].value
        calls = 2000
        for _ in range(calls):
            os.getpid()  # glibc no longer caches getpid: each call is a syscall
        deadline = time.monotonic() + 2
        after = counts[counts.Key(0)].value
        while after - before < calls and time.monotonic() < deadline:
            time.sleep(0.01)
            after = counts[counts.Key(0)].value
        assert after - before >= calls
        # not wildly more either: only our own process is counted
        assert after - before < calls * 2 + 1000
    finally:
        bpf.cleanup()


def _dnstrail() -> Path:
    exe = REPO / ".venv" / "bin" / "dnstrail"
    if not exe.exists():
        exe = Path(sys.executable).parent / "dnstrail"
    return exe


def test_installed_command_help_and_version() -> None:
    exe = _dnstrail()
    assert exe.exists(), f"{exe} is missing: the project is not installed in the venv"
    version = subprocess.run([str(exe), "--version"], check=False, capture_output=True,
                             text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"dnstrail, version {__version__}"
    helped = subprocess.run([str(exe), "--help"], check=False, capture_output=True,
                            text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("Usage: dnstrail")
