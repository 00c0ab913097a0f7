"""`dnstrail record` as a person sees it: what it says while compiling, Ctrl-C before tracing
began, and the lines about CPU priority and drops."""

from __future__ import annotations

import itertools
import os
import re
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
@pytest.mark.parametrize("whom", ["terminal", "recorder", "sigterm"])
def test_ctrl_c_while_compiling_records_nothing_and_fails(tmp_path: Path, whom: str) -> None:
    """SIGINT during the compile, to the whole process group as a terminal's Ctrl-C sends it
    (the loader child dies too) or to the recorder alone (`kill -INT`): one line says nothing
    was recorded, the exit status is 130, and no capture directory is left behind. SIGTERM
    (a service manager stopping it) is handled the same way."""
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
            proc.send_signal(signal.SIGTERM if whom == "sigterm" else signal.SIGINT)
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


def _stat(path: Path, idle: int, busy: int) -> None:
    # the first line of /proc/stat: user nice system idle iowait irq softirq steal guest ...
    path.write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\n")


class _Node:
    """A fake /proc/stat whose idle share the test sets interval by interval."""

    def __init__(self, path: Path) -> None:
        self.path, self.idle, self.busy, self.t = path, 1000, 1000, 0.0
        _stat(path, self.idle, self.busy)

    def run(self, seconds: float, idle_share: float) -> None:
        jiffies = round(seconds * 100_000)  # fine enough for 0.01 % steps
        self.idle += round(jiffies * idle_share)
        self.busy += jiffies - round(jiffies * idle_share)
        self.t += seconds
        _stat(self.path, self.idle, self.busy)


def _flap(auto, node: _Node, saturated: float = 0.5,  # type: ignore[no-untyped-def]
          spare: float = 3.0, seconds: float = 60.0) -> list[tuple[float, str]]:
    """A node that swings: ``saturated`` s at 5 % idle, then ``spare`` s at 60 % idle, and
    so on, sampled every 0.1 s for ``seconds``; returns the switches (time, level)."""
    switches = []
    auto.update(node.t)
    period = saturated + spare
    while node.t < seconds - 1e-9:
        phase = node.t % period
        node.run(0.1, 0.05 if phase < saturated - 1e-9 else 0.60)
        changed = auto.update(node.t)
        if changed:
            switches.append((round(node.t, 1), changed))
    return switches


def test_auto_priority_does_not_flap_on_a_swinging_node(tmp_path: Path) -> None:
    """Half a second of saturation every 3.5 s made the recorder switch twice per cycle
    (every lowering after one interval, every raising after a second of idle CPU). Each
    relapse soon after a raise now doubles the idle time needed to raise again."""
    from capture.sched import AutoPriority

    node = _Node(tmp_path / "stat")
    auto = AutoPriority(str(node.path), apply=False)  # the recorder's defaults
    switches = _flap(auto, node)
    lows = [t for t, level in switches if level == "low"]
    # without the hold: 2 switches per 3.5 s cycle, ~34 in a minute
    assert 4 <= len(switches) <= 10, switches
    assert auto.switches == len(switches) and auto.lowered == len(lows)
    # the hold grew: 1, 2, 4, 8 s ... of idle CPU before each raise
    raises = [t for t, level in switches if level == "normal"]
    gaps = [r - lo for lo, r in zip(lows, raises, strict=False)]
    assert all(b > a for a, b in itertools.pairwise(gaps)), (gaps, switches)
    assert auto.hold > 1.0
    # it still yields at once each time the node saturates while it is at nice 0
    for t in lows:
        assert t % 3.5 <= 0.5 + 1e-6, switches


def test_auto_priority_hold_resets_after_a_long_spell_at_nice_0(tmp_path: Path) -> None:
    """A saturation long after the last raise is a new event, not a relapse: 1 s again."""
    from capture.sched import AutoPriority

    node = _Node(tmp_path / "stat")
    auto = AutoPriority(str(node.path), apply=False, relapse_window=30.0)
    _flap(auto, node, seconds=20.0)
    assert auto.hold >= 4.0
    if auto.level == "low":  # end the swing with a long idle spell: raised, then 40 s spare
        while auto.level == "low":
            node.run(0.1, 0.9)
            auto.update(node.t)
    for _ in range(400):
        node.run(0.1, 0.9)
        assert auto.update(node.t) is None
    node.run(0.1, 0.05)
    assert auto.update(node.t) == "low"
    assert auto.hold == pytest.approx(1.0)
    for _ in range(10):
        node.run(0.1, 0.9)
        changed = auto.update(node.t)
    assert changed == "normal" and auto.held == pytest.approx(1.0)


def test_auto_priority_stays_capped_without_cap_sys_nice(tmp_path: Path) -> None:
    """Switch counts only count switches that happened."""
    from capture.sched import AutoPriority

    node = _Node(tmp_path / "stat")
    auto = AutoPriority(str(node.path), apply=False)
    auto.update(node.t)
    node.run(0.1, 0.0)
    assert auto.update(node.t) == "low"
    auto.can_raise = False
    for _ in range(30):
        node.run(0.1, 0.9)
        assert auto.update(node.t) is None
    assert auto.switches == 1 and auto.level == "low"


@pytest.mark.parametrize(("share", "threshold", "shown"), [
    (0.12, 0.20, "idle 12% < 20%"),
    (0.196, 0.20, "idle 19.6% < 20.0%"),  # was "idle 20% < 20%"
    (0.1996, 0.2, "idle 19.96% < 20.00%"),
    (0.0, 0.23, "idle 0% < 23%"),
])
def test_low_line_is_short_and_its_numbers_satisfy_its_comparison(
        tmp_path: Path, share: float, threshold: float, shown: str) -> None:
    from capture.recorder import _priority_line
    from capture.sched import AutoPriority

    auto = AutoPriority(str(tmp_path / "none"), apply=False)
    auto.share, auto.threshold = share, threshold
    line = _priority_line("low", auto, 0.02)
    assert line in (f"priority: low ({shown}): nice 19, at most 2% of one CPU; drops counted",
                    f"priority: low ({shown}): at most 2% of one CPU; drops counted")
    assert len(line) < 80
    a, b = (float(x.rstrip("%")) for x in shown.split("idle ")[1].split(" < "))
    assert a < b
    assert "no CPU cap" in _priority_line("low", auto, 0.0)


def test_normal_line_says_how_long_the_idle_cpu_lasted(tmp_path: Path) -> None:
    from capture.recorder import _priority_line
    from capture.sched import AutoPriority

    node = _Node(tmp_path / "stat")
    auto = AutoPriority(str(node.path), apply=False, cost_per_message=1e-6, cpus=2)
    auto.update(node.t, 0)
    node.run(0.1, 0.0)
    assert auto.update(node.t, 0) == "low"
    line = ""
    for _ in range(10):
        node.run(0.1, 0.2501)  # just over 25 % + 2 x 0 need
        if auto.update(node.t, 0) == "normal":
            line = _priority_line("normal", auto, 0.02)
    assert line == "priority: normal (idle 25.01% > 25.00% for 1.0 s): nice 0, no CPU cap"
    assert len(line) < 80


@pytest.mark.parametrize("priority", ["auto", "low", "idle", "normal"])
@pytest.mark.parametrize("budget", [0.02, 0.0])
@pytest.mark.parametrize("spooling", [True, False])
def test_start_lines_say_when_messages_may_be_dropped(priority: str, budget: float,
                                                      spooling: bool) -> None:
    from capture.recorder import RecordOptions, _drops_lines

    options = RecordOptions(output=Path("cap"), priority=priority, cpu_budget=budget,
                            ringbuf_mb=1024, spool=spooling)
    lines = _drops_lines(options)
    assert lines == _drops_lines(options, spooling=spooling)
    text = " ".join(lines)
    assert lines and all(len(ln) < 80 for ln in lines), lines
    assert "drop" in text and "count" in text
    if priority == "normal" or (priority == "auto" and spooling):
        # only the ring buffer's overflow is dropped; a bigger one avoids it
        assert "1024 MB ring buffer" in text and "--ringbuf-mb" in text
    else:
        assert "--priority normal" in text  # how to avoid the drops
    if priority == "auto" and spooling:
        assert "spools" in text and "CPU" in text and "at most" not in text
    elif priority == "auto":
        assert ("at most 2% of one CPU" in text) is (budget > 0)


def test_summary_says_how_often_the_recorder_yielded() -> None:
    from capture.recorder import RecordSummary

    base = {"output": Path("cap"), "status": "complete", "elapsed_s": 60.0, "counts": {},
            "files": [], "bytes": 0, "lost": {}}
    assert not any(ln.startswith("Priority") for ln in RecordSummary(**base).lines())  # type: ignore[arg-type]
    lines = RecordSummary(**base, priority_lowered=3, low_seconds=41.25).lines()  # type: ignore[arg-type]
    assert "Priority: yielded the CPU 3 times, 41.2 s in all (manifest priority_log)" in lines
    assert all(len(ln) < 80 for ln in lines)
    long = RecordSummary(**base, priority_lowered=123_456,  # type: ignore[arg-type]
                         low_seconds=1e7).lines()
    assert all(len(ln) < 80 for ln in lines + long), long


def test_status_line_splits_events_and_shows_what_is_left() -> None:
    from capture.recorder import _status_line

    line = _status_line({"messages": 1234, "connects": 12, "execs": 3}, 123_456,
                        {"ringbuf_full": 7, "payload_unreadable": 2}, 62.3, 237.7)
    assert line == "1,234 msgs, 12 conns, 3 execs  120.6 KB read  lost 9 events  01:02  03:57 left"
    assert "left" not in _status_line({}, 0, {}, 5.0)
    big = _status_line({"messages": 12_345_678, "connects": 123_456, "execs": 12_345},
                       1 << 30, {"ringbuf_full": 1_234_567}, 3723.0, 3500.0)
    assert big == "12,345,678 msgs  1.0 GB read  lost 1,234,567  1:02:03  58:20 left"
    assert _status_line({}, 0, {}, 1.0, -3.0).endswith("00:00 left")
    hour = _status_line({"messages": 1234, "connects": 12, "execs": 3}, 123_456_789,
                        {"ringbuf_full": 12_345}, 3662.3, 237.7)
    assert hour == "1,234 msgs, 12 conns, 3 execs  117.7 MB read  lost 12,345  1:01:02  03:57 left"
    for n in (0, 9, 99_999, 10**9):
        assert len(_status_line({"messages": n, "connects": n, "execs": n}, n * 300,
                                {"x": n}, 360_000.0, 360_000.0)) < 80


_STATUS = re.compile(r"([\d,]+) msgs.*?([\d.]+) (B|KB|MB|GB) (?:read|spooled)  lost ([\d,]+)(?: events)?  "
                     r"(\d\d):(\d\d)  (\d\d):(\d\d) left")


@pytest.mark.live
def test_status_line_on_a_terminal_grows_with_the_traffic(tmp_path: Path) -> None:
    """On a terminal the status line is rewritten in place: its message count and bytes
    grow while DNS traffic flows, and the time left counts down."""
    import pty

    from tests.lab.require import require_root_bcc
    from tests.test_record_live import dns_traffic

    require_root_bcc()
    master, slave = pty.openpty()
    out = tmp_path / "cap"
    proc = subprocess.Popen([str(DNSTRAIL), "record", "-o", str(out), "--duration", "40s"],
                            stdout=subprocess.DEVNULL, stderr=slave, start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []

    def reader() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    threading.Thread(target=reader, daemon=True).start()

    def statuses() -> list[tuple[int, float, int, int]]:
        found = []
        for m in _STATUS.finditer(b"".join(chunks).decode(errors="replace")):
            unit = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[m.group(3)]
            found.append((int(m.group(1).replace(",", "")), float(m.group(2)) * unit,
                          int(m.group(4).replace(",", "")),
                          int(m.group(7)) * 60 + int(m.group(8))))
        return found

    try:
        assert _wait(lambda: len(statuses()) >= 2, 120), b"".join(chunks).decode()
        first = statuses()[-1]
        with dns_traffic(count=300, seconds=10, tag="status"):
            pass
        assert _wait(lambda: statuses()[-1][0] >= first[0] + 1200, 10), statuses()[-1]
        last = statuses()[-1]
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0
    assert last[1] > first[1]            # bytes read grew with the 1,200 messages
    assert last[3] < first[3] <= 40      # the time left counts down from the duration
    os.close(master)


def test_status_line_names_its_bytes_and_says_when_capped() -> None:
    """Keyword-only extras keep the call of the loop as it is: what the byte count counts,
    and 'capped' while --priority auto yields (the lost count then grows on purpose)."""
    from capture.recorder import _status_line

    args = ({"messages": 1234, "connects": 12, "execs": 3}, 123_456, {"ringbuf_full": 7},
            62.3, 237.7)
    assert _status_line(*args, bytes_label="spooled") == (
        "1,234 msgs, 12 conns, 3 execs  120.6 KB spooled  lost 7  01:02  03:57 left")
    assert _status_line(*args, capped=True) == (
        "1,234 msgs  120.6 KB read  lost 7 (capped)  01:02  03:57 left")
    assert _status_line(*args[:4], capped=True) == (
        "1,234 msgs, 12 conns, 3 execs  120.6 KB read  lost 7 events (capped)  01:02")
    for n in (0, 99_999, 10**9):
        line = _status_line({"messages": n, "connects": n, "execs": n}, n * 300, {"x": n},
                            360_000.0, 360_000.0, bytes_label="spooled", capped=True)
        assert len(line) < 80, line


def test_conversion_gate_lines_are_short_and_say_what_happens() -> None:
    from capture.recorder import RecordSummary, _gate_line

    class Gate:
        paused = True
        share = 0.123

    assert _gate_line(Gate, 5) == ("Node saturated (idle 12%): Parquet conversion waits; "
                                   "spooling goes on")
    Gate.paused, Gate.share = False, 0.456
    assert _gate_line(Gate, 12_345) == ("CPU to spare again (idle 46%): converting 12,345 "
                                        "spooled messages")
    assert len(_gate_line(Gate, 10**15)) < 80
    base = {"output": Path("cap"), "status": "complete", "elapsed_s": 60.0, "counts": {},
            "files": [], "bytes": 0, "lost": {}}
    lines = RecordSummary(**base, conversion_paused=3, paused_seconds=12.5).lines()  # type: ignore[arg-type]
    assert "Parquet conversion waited for the workload 3 times, 12.5 s in all" in lines
    long = RecordSummary(**base, conversion_paused=10**9, paused_seconds=1e12).lines()  # type: ignore[arg-type]
    assert all(len(ln) < 80 for ln in long), long
