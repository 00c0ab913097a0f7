"""`dnstrail record` as a person sees it: what it says while compiling, Ctrl-C before tracing
began, and the lines about CPU priority and drops."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.test_record_live import DNSTRAIL


def _loader_children(pid: int) -> list[int]:
    """Pids of the `python -m capture._loader` children of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"capture._loader" in cmdline:
            found.append(int(entry))
    return found


def _wait(pred, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return bool(pred())


def _start(out: Path, *extra: str) -> tuple[subprocess.Popen[str], list[str]]:
    """`dnstrail record` in a session (process group) of its own, as a terminal runs it."""
    proc = subprocess.Popen([str(DNSTRAIL), "record", "-o", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines: list[str] = []

    def reader() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)  # noqa: PERF402

    threading.Thread(target=reader, daemon=True).start()
    return proc, lines


@pytest.mark.live
@pytest.mark.parametrize("whom", ["terminal", "recorder"])
def test_ctrl_c_while_compiling_records_nothing_and_fails(tmp_path: Path, whom: str) -> None:
    """SIGINT during the compile, to the whole process group as a terminal's Ctrl-C sends it
    (the loader child dies too) or to the recorder alone (`kill -INT`): one line says nothing
    was recorded, the exit status is 130, and no capture directory is left behind."""
    from tests.lab.require import require_root_bcc

    require_root_bcc()
    out = tmp_path / "cap"
    proc, lines = _start(out)
    try:
        assert _wait(lambda: any("Compiling the BPF program" in ln for ln in lines), 60), \
            "".join(lines)
        # the compile is under way once the loader child exists (it takes seconds)
        assert _wait(lambda: bool(_loader_children(proc.pid)), 30), "".join(lines)
        assert not any("Tracing DNS" in ln for ln in lines), "".join(lines)
        if whom == "terminal":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.1)  # the reader thread takes the last lines
    text = "".join(lines)
    assert rc == 130, text
    assert not any("Tracing DNS" in ln for ln in lines), text
    said = [ln for ln in lines if "nothing was recorded" in ln]
    assert len(said) == 1 and len(said[0].rstrip("\n")) - len(str(out)) < 80, text
    assert f"{out} was not created" in said[0], text
    assert "Traceback" not in text, text
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    assert _wait(lambda: not _loader_children(proc.pid), 30)


@pytest.mark.live
def test_ctrl_c_while_compiling_leaves_an_appended_capture_as_it_was(tmp_path: Path) -> None:
    """With --append the directory exists already: an interrupted start changes nothing."""
    from tests.lab.require import require_root_bcc

    require_root_bcc()
    out = tmp_path / "cap"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    proc, lines = _start(out, "--append")
    try:
        assert _wait(lambda: bool(_loader_children(proc.pid)), 60), "".join(lines)
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.1)
    text = "".join(lines)
    assert rc == 130, text
    assert any("nothing was recorded" in ln and f"{out} is unchanged" in ln for ln in lines), text
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
