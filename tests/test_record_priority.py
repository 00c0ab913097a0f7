"""`dnstrail record --priority`: the recorder's threads really run at the priority asked for,
and a capture made that way is complete."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

import pytest

from capture.errors import CaptureError
from capture.sched import apply_priority


def test_unknown_priority_is_a_capture_error() -> None:
    with pytest.raises(CaptureError, match="unknown priority 'urgent'"):
        apply_priority("urgent")


def _threads(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


@contextmanager
def _recording(out: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """A running `dnstrail record -o out *args` and its stderr lines. The end of the block
    stops it with SIGINT and waits for it; an exception in the block kills it instead."""
    from tests.test_record_live import _start_cli

    proc, lines = _start_cli(out, *args)
    try:
        yield proc, lines
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


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
    from tests.test_record_live import dns_traffic
    from tests.test_writer import check_capture

    out = tmp_path / "cap"
    with _recording(out, "--priority", level, "--duration", "60s") as (proc, lines):
        with dns_traffic(count=300, seconds=3, label=8, tag=f"prio{level}"):
            pass
        tids = _threads(proc.pid)
        assert len(tids) >= 2, "the recorder should have its writer thread running"
        for tid in tids:
            assert os.sched_getscheduler(tid) == policy, (level, tid)
            if nice is not None:
                assert os.getpriority(os.PRIO_PROCESS, tid) == nice, (level, tid)
        time.sleep(0.5)
    assert proc.returncode == 0, "".join(lines)
    m = check_capture(out)
    assert m["status"] == "complete"
    assert m["counts"]["messages"] >= 600  # 300 queries and their answers, at least


def _stat(path: Path, idle: int, busy: int) -> None:
    # the first line of /proc/stat: user nice system idle iowait irq softirq steal guest ...
    path.write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 {busy} 0 0 {idle} 0 0 0 0 0 0\n")


def test_auto_priority_lowers_when_saturated_and_raises_with_hysteresis(tmp_path: Path) -> None:
    from capture.sched import AutoPriority

    stat = tmp_path / "stat"
    auto = AutoPriority(str(stat), interval=0.5, raise_after=2, apply=False)
    idle = busy = 1000
    _stat(stat, idle, busy)
    assert auto.update(0.0) is None  # the first sample only sets the baseline
    t = 0.0

    def step(idle_share: float) -> str | None:
        nonlocal idle, busy, t
        idle += int(100 * idle_share)
        busy += 100 - int(100 * idle_share)
        t += 0.5
        _stat(stat, idle, busy)
        return auto.update(t)

    assert step(0.5) is None and auto.level == "normal"
    assert auto.update(t + 0.1) is None  # within the interval: no sample
    assert step(0.1) == "low"  # one saturated interval lowers
    assert step(0.0) is None and auto.level == "low"
    assert step(0.5) is None  # one idle interval is not enough to go back
    assert step(0.3) is None  # 30 % idle: between the thresholds, resets the count
    assert step(0.9) is None
    assert step(0.9) == "normal"
    assert auto.switches == 2 and auto.low_seconds == pytest.approx(2.5)


def test_cpu_idle_share_reads_the_real_proc_stat() -> None:
    from capture.sched import cpu_idle_share

    idle, total = cpu_idle_share()
    assert 0 < idle < total
    with pytest.raises(ValueError):
        cpu_idle_share("/proc/self/status")


def _nices(pid: int) -> set[int]:
    return {os.getpriority(os.PRIO_PROCESS, tid) for tid in _threads(pid)}


def _wait_for(pred, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return bool(pred())


class _Hogs:
    """A busy loop per CPU (SCHED_IDLE ones with idle=True) until stop() or the with block
    ends, whichever comes first."""

    def __init__(self, idle: bool = False) -> None:
        code = "while True: pass\n"
        if idle:
            code = "import os\nos.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n" + code
        self.procs = [subprocess.Popen([sys.executable, "-c", code])
                      for _ in range(os.cpu_count() or 1)]

    def stop(self) -> None:
        for h in self.procs:
            h.kill()
            h.wait()
        self.procs = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.mark.live
def test_auto_priority_yields_while_the_cpus_are_saturated(tmp_path: Path) -> None:
    """--priority auto without the spool: CPU hogs on every CPU make the recorder go to nice
    19 (and say so); when they stop it goes back to nice 0. (With the spool, the default,
    auto defers the conversion instead: tests/test_record_spool.py.)"""
    from tests.lab.require import require_root_bcc

    require_root_bcc()
    from tests.test_writer import check_capture

    low_nice, how = 19, "at most 2% of one CPU"
    out = tmp_path / "cap"
    with _recording(out, "--duration", "120s", "--no-spool") as (proc, lines):
        assert _wait_for(lambda: _nices(proc.pid) == {0}, 10), _nices(proc.pid)
        with _Hogs():
            # the line follows the switch
            assert _wait_for(lambda: any(ln.startswith("priority: low (idle ") and how in ln
                                         for ln in lines), 15), "".join(lines)
            assert _nices(proc.pid) == {low_nice}, "".join(lines)
        # other jobs on the machine may keep it saturated a while after the hogs end
        assert _wait_for(lambda: any(ln.startswith("priority: normal (idle ") for ln in lines),
                         45), "".join(lines)
        assert _nices(proc.pid) == {0}, "".join(lines)
    assert proc.returncode == 0, "".join(lines)
    m = check_capture(out)
    assert m["status"] == "complete" and m["filters"]["priority"] == "auto"
    log = m["priority_log"]
    assert [e["level"] for e in log] == ["low", "normal"], log
    assert log[0]["at"] < log[1]["at"] and "ringbuf_full" in log[0]["lost"]


def test_cpu_budget_sleeps_off_what_goes_over_the_share() -> None:
    from capture.sched import CpuBudget

    b = CpuBudget(0.1, burst=0.5)
    assert b.delay(0.0, 0.0) == 0.0  # the first call only sets the baseline
    assert b.delay(1.0, 0.05) == 0.0  # under the share: 0.05 s of credit (the burst cap)
    # 0.3 s of CPU in 0.1 s of wall time: 0.05 + 0.01 - 0.3 = -0.24 s, i.e. 2.4 s at 10 %
    assert b.delay(1.1, 0.35) == pytest.approx(2.4)
    assert b.delay(3.5, 0.35) == pytest.approx(0.0, abs=1e-9)  # slept it off: back to zero
    # a long quiet spell buys no more than the burst
    assert b.delay(100.0, 0.35) == 0.0
    assert b.delay(100.0, 0.45) == pytest.approx(0.5)  # 0.05 credit - 0.1 used: 0.5 s
    b.reset()
    assert b.delay(200.0, 5.0) == 0.0  # forgotten
    assert CpuBudget(0).delay(1.0, 99.0) == 0.0  # share 0: no cap
    with pytest.raises(ValueError):
        CpuBudget(-1)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.live
def test_auto_caps_the_recorder_cpu_while_the_node_is_saturated(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """SCHED_IDLE hogs on every CPU leave the node no idle time without outranking the
    recorder, so only --cpu-budget can hold it back: under a dnsperf flood its CPU stays
    within the default budget (plus one poll's work), and what it did not read is counted.
    (The budget applies without the spool: --no-spool.)"""
    import threading

    from tests.lab.require import require_root_bcc

    require_root_bcc()
    from tests.test_writer import check_capture

    out = tmp_path / "cap"
    results = []
    with _recording(out, "--duration", "120s", "--no-spool") as (proc, lines), \
            _Hogs(idle=True):
        assert _wait_for(lambda: _nices(proc.pid) == {19}, 15), "".join(lines)
        assert any("at most 2% of one CPU" in ln for ln in lines), "".join(lines)
        ns = lab.client_ns()
        flood = threading.Thread(target=lambda: results.append(
            lab.dnsperf(ns, lab.server_addr, duration=7.0)))
        flood.start()
        time.sleep(2.0)
        cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
        time.sleep(4.0)
        cpu, wall = _cpu_seconds(proc.pid) - cpu0, time.monotonic() - t0
        flood.join(timeout=60)
    assert proc.returncode == 0, "".join(lines)
    assert results and results[0].completed > 20000, results  # a flood: > 5k queries/s
    # 2 % of 4 s is 0.08 s; one capped poll (one chunk of 16384 records) costs ~0.03 s, and
    # the kernel counts CPU time in 10 ms ticks. Uncapped, with only SCHED_IDLE hogs to
    # compete with, reading 4 messages per query would take a whole CPU.
    assert cpu <= 0.02 * wall + 0.08, (cpu, wall)
    m = check_capture(out)
    assert m["status"] == "complete" and m["filters"]["cpu_budget"] == 0.02
    assert m["lost"]["ringbuf_full"] > 0
    # the losses came while the recorder was held back, after its switch to low
    log = m["priority_log"]
    assert log and log[0]["level"] == "low", log
    assert m["lost"]["ringbuf_full"] > log[0]["lost"]["ringbuf_full"]


def test_auto_priority_counts_its_own_reading_against_the_idle_share(tmp_path: Path) -> None:
    """At nice 0 the recorder's reading is part of what keeps the node busy: heavy DNS
    traffic at 26 % idle (what a dnsperf/unbound pair waiting on a recorder at nice 0 showed)
    lowers it, light traffic at the same idle share does not."""
    from capture.sched import AutoPriority

    stat = tmp_path / "stat"
    for rate, lowered in ((10_000, False), (400_000, True)):
        auto = AutoPriority(str(stat), interval=0.5, apply=False, cost_per_message=1e-6, cpus=2)
        idle = busy = 1000
        _stat(stat, idle, busy)
        auto.update(0.0, 0)
        _stat(stat, idle + 26, busy + 74)
        # 400k msgs/s: reading takes 20 % of the node; 26 % < 20 + 20. 10k: 26 % > 20 + 0.5
        assert (auto.update(0.5, rate // 2) == "low") is lowered, (rate, auto.need)
        assert auto.level == ("low" if lowered else "normal")


def test_auto_priority_raises_when_the_idle_cpu_covers_the_recorders_need(tmp_path: Path) -> None:
    """Between the thresholds (25-40 % idle), light DNS traffic brings the recorder back to
    nice 0: reading it would take little of the idle CPU. Heavy traffic keeps it low."""
    from capture.sched import AutoPriority

    stat = tmp_path / "stat"
    for rate, raised in ((10_000, True), (400_000, False)):
        auto = AutoPriority(str(stat), interval=0.5, raise_after=2, apply=False,
                            cost_per_message=1e-6, cpus=2)
        idle = busy = 1000
        t, arrived = 0.0, 0
        _stat(stat, idle, busy)
        auto.update(t, arrived)
        results = []
        for share in (0.1, 0.3, 0.3, 0.3):  # saturated once, then 30 % idle
            idle += int(100 * share)
            busy += 100 - int(100 * share)
            t += 0.5
            arrived += int(rate * 0.5)
            _stat(stat, idle, busy)
            results.append(auto.update(t, arrived))
        assert results[0] == "low"
        # 10k msgs/s x 1 us on 2 CPUs: 0.5 % of the node; 30 % > 20 + 5 + 2 x 0.5 points
        # 400k msgs/s: 20 % of the node; raising would need 20 + 5 + 2 x 20 = 65 % idle
        assert (results[1:] == [None, "normal", None]) is raised, (rate, results, auto.need)
        assert auto.level == ("normal" if raised else "low")
        assert auto.need == pytest.approx(rate * 1e-6 / 2)


def test_arrivals_count_what_waits_in_the_ring_not_what_was_read() -> None:
    """A backlog read after a capped spell must not look like a burst of traffic: the
    arrival count includes what is waiting in the ring (at the average record size read so
    far), so reading it moves nothing."""
    from capture.recorder import _RECORD_BYTES_GUESS, _arrived

    class Ring:
        def __init__(self) -> None:
            self.s = {"messages": 0, "connects": 0, "execs": 0, "ring_bytes": 0,
                      "ring_pending_bytes": 0}

        def stats(self) -> dict[str, int]:
            return dict(self.s)

    ring = Ring()
    assert _arrived(ring, {}) == 0
    ring.s["ring_pending_bytes"] = 10 * _RECORD_BYTES_GUESS  # nothing read yet: the guess
    assert _arrived(ring, {}) == 10
    # 1,000 messages of 300 bytes read, 600 bytes (2 records) still waiting, 50 lost
    ring.s.update(messages=1000, ring_bytes=300_000, ring_pending_bytes=600)
    before = _arrived(ring, {"ringbuf_full": 50})
    assert before == 1052
    # the recorder reads the 2 waiting records: nothing new has arrived
    ring.s.update(messages=1002, ring_bytes=300_600, ring_pending_bytes=0)
    assert _arrived(ring, {"ringbuf_full": 50}) == before


def test_auto_priority_counts_idle_time_not_samples(tmp_path: Path) -> None:
    """Capped, the recorder samples only between its pauses (up to 2 s): one sample that
    covers a second of idle CPU is a second, not a tenth of one."""
    from capture.sched import AutoPriority

    stat = tmp_path / "stat"
    auto = AutoPriority(str(stat), apply=False)  # 0.1 s samples, 10 of them to raise
    _stat(stat, 1000, 1000)
    auto.update(0.0)
    _stat(stat, 1001, 1099)
    assert auto.update(0.1) == "low"
    _stat(stat, 1061, 1139)  # 0.6 s at 60 % idle, in one sample after a pause
    assert auto.update(0.7) is None
    _stat(stat, 1121, 1179)  # another 0.6 s: 1.2 s above the threshold
    assert auto.update(1.3) == "normal"


_TRACES = Path(__file__).resolve().parent / "data" / "priority"
_LINE = re.compile(r"^priority: (low|normal) \(idle ([\d.]+)% ([<>]) ([\d.]+)%( for [\d.]+ s)?\)"
                   r": ")


def _trace(name: str) -> list[tuple[float, int, int]]:
    """A real /proc/stat sequence: (seconds, idle jiffies, total jiffies) every 0.1 s."""
    rows = []
    for line in (_TRACES / name).read_text().splitlines():
        if line and not line.startswith("#"):
            t, idle, total = line.split()
            rows.append((float(t), int(idle), int(total)))
    return rows


def _replay(rows: list[tuple[float, int, int]], stat: Path, **kw: float
            ) -> tuple[list[tuple[float, str, str]], list[tuple[float, float, str]]]:
    """Feed a recorded sequence to AutoPriority as the recorder does (no DNS arriving): the
    switches (time, level, stderr line) and every sample (time, idle share, level before)."""
    from capture.recorder import _priority_line
    from capture.sched import AutoPriority

    auto = AutoPriority(str(stat), apply=False, cpus=2, **kw)  # type: ignore[arg-type]
    switches, samples = [], []
    for t, idle, total in rows:
        _stat(stat, idle, total - idle)
        before = auto.level
        changed = auto.update(t, 0)
        if auto.share is not None and t > rows[0][0]:
            samples.append((t, auto.share, before))
        if changed:
            switches.append((t, changed, _priority_line(changed, auto, 0.02)))
    return switches, samples


@pytest.mark.parametrize("name", ["shared-node-60s.txt", "hog-bursts-40s.txt"])
def test_auto_priority_on_real_idle_samples(tmp_path: Path, name: str) -> None:
    """Real 0.1 s samples of this 2-CPU machine's idle share (5 % steps: 20 jiffies per
    sample), saturated and idle in stretches: the recorder still yields on the first
    saturated sample each time it is at nice 0, switches far less than without the
    hysteresis, and each switch is one short line whose numbers satisfy its comparison."""
    rows = _trace(name)
    switches, samples = _replay(rows, tmp_path / "stat")
    levels = [level for _, level, _ in switches]
    assert levels[:1] == ["low"] and all(a != b for a, b in itertools.pairwise(levels))
    # without hysteresis (a 1 s hold that never grows, nothing learned from relapses) the
    # same samples make it flap
    plain, _ = _replay(rows, tmp_path / "stat", max_hold=1.0, max_footprint=0.0)
    assert len(switches) <= 6 and len(plain) >= len(switches) + 4, (switches, plain)
    lows = {t for t, level, _ in switches if level == "low"}
    for t, share, before in samples:
        if before == "normal" and share < 0.20:
            assert t in lows, (t, share)  # yields at once
    for _, level, line in switches:
        m = _LINE.match(line)
        assert m and m.group(1) == level and len(line) < 80, line
        a, b = float(m.group(2)), float(m.group(4))
        assert (a < b) if m.group(3) == "<" else (a > b), line


def test_auto_priority_learns_what_its_reading_costs_a_flood(tmp_path: Path) -> None:
    """A steady flood that a recorder at nice 0 slows down: 25 % idle at nice 0, 55 % while
    capped (the client/server pair waits on each other), 230k messages/s arriving, for a
    minute; then the flood ends (95 % idle, nothing arriving). Each raise used to be followed
    by a relapse a tenth of a second later, the hold doubling each time; the idle share
    lost at nice 0 is now learned from the first relapse, and the recorder stays capped
    until the flood ends."""
    from capture.sched import AutoPriority

    def run(**kw: float) -> list[tuple[float, str]]:
        auto = AutoPriority(str(tmp_path / "stat"), apply=False, cpus=2, **kw)  # type: ignore[arg-type]
        idle = busy = 1000
        arrived, t = 0, 0.0
        _stat(tmp_path / "stat", idle, busy)
        auto.update(t, arrived)
        switches = []
        while t < 90.0 - 1e-9:
            flood = t < 60.0
            share = (0.25 if auto.level == "normal" else 0.55) if flood else 0.95
            idle += round(20 * share)
            busy += 20 - round(20 * share)
            arrived += 23_000 if flood else 0
            t = round(t + 0.1, 1)
            _stat(tmp_path / "stat", idle, busy)
            changed = auto.update(t, arrived)
            if changed:
                switches.append((t, changed))
        assert auto.level == "normal"  # once the flood is over, it records everything again
        return switches

    learned = run()
    assert [level for _, level in learned] == ["low", "normal", "low", "normal"], learned
    assert learned[0][0] == 0.1 and learned[-1][0] > 60.0
    doubling_only = run(max_footprint=0.0)
    assert len(doubling_only) >= 10, doubling_only


def test_a_load_that_comes_later_teaches_nothing_about_the_recorder(tmp_path: Path) -> None:
    """A relapse seconds after a raise is another load arriving, not the recorder's reading:
    the footprint stays 0 and the next raise needs no more idle CPU than the first."""
    from capture.sched import AutoPriority

    auto = AutoPriority(str(tmp_path / "stat"), apply=False, cpus=2)
    idle = busy = 1000
    t = 0.0
    _stat(tmp_path / "stat", idle, busy)
    auto.update(t, 0)
    switches = []
    # saturated 1 s, 45 % idle 6 s, saturated 1 s, 45 % idle 6 s
    for share in [0.0] * 10 + [0.45] * 60 + [0.0] * 10 + [0.45] * 60:
        idle += round(20 * share)
        busy += 20 - round(20 * share)
        t = round(t + 0.1, 1)
        _stat(tmp_path / "stat", idle, busy)
        changed = auto.update(t, 0)
        if changed:
            switches.append((t, changed, auto.footprint, auto.threshold))
    assert [(lvl, fp) for _, lvl, fp, _ in switches] == [
        ("low", 0.0), ("normal", 0.0), ("low", 0.0), ("normal", 0.0)], switches
    assert switches[1][3] == switches[3][3] == pytest.approx(0.25)  # 20 % + 5 points
    # the second raise waited the doubled hold (a relapse within 30 s) from the end of the
    # second saturation (8.0 s), at the same threshold
    # (within two samples: a step of 0.0999... s is not yet an interval and waits a sample)
    assert switches[2][0] == pytest.approx(7.1, abs=0.25)
    assert switches[3][0] == pytest.approx(10.0, abs=0.25)
