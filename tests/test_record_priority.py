"""`dnstrail record --priority`: the recorder's threads really run at the priority asked for,
and a capture made that way is complete."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from capture.errors import CaptureError
from capture.sched import apply_priority


def test_unknown_priority_is_a_capture_error() -> None:
    with pytest.raises(CaptureError, match="unknown priority 'urgent'"):
        apply_priority("urgent")


def _threads(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


@pytest.mark.live
@pytest.mark.parametrize(("level", "policy", "nice"), [
    ("low", os.SCHED_OTHER, 19),
    ("idle", os.SCHED_IDLE, None),
    ("normal", os.SCHED_OTHER, 0),
])
def test_recorder_threads_run_at_the_priority(tmp_path: Path, level: str, policy: int,
                                              nice: int | None) -> None:
    from tests.lab.require import require_root_bcc

    require_root_bcc()
    from tests.test_record_live import _start_cli, dns_traffic
    from tests.test_writer import check_capture

    out = tmp_path / "cap"
    proc, lines = _start_cli(out, "--priority", level, "--duration", "60s")
    try:
        with dns_traffic(count=300, seconds=3, label=8, tag=f"prio{level}"):
            pass
        tids = _threads(proc.pid)
        assert len(tids) >= 2, "the recorder should have its writer thread running"
        for tid in tids:
            assert os.sched_getscheduler(tid) == policy, (level, tid)
            if nice is not None:
                assert os.getpriority(os.PRIO_PROCESS, tid) == nice, (level, tid)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(lines)
    m = check_capture(out)
    assert m["status"] == "complete"
    assert m["counts"]["messages"] >= 600  # 300 queries and their answers, at least
