"""How much CPU ``dnstrail record`` may take from the node's workload (``--priority``).

With the spool (the default, ``capture.spool``) the reading is cheap and stays at nice 0, and
the conversion to Parquet runs in a process of its own at the priority ``--priority`` names
(nice 19 for ``auto``): nothing here switches then. What follows is the ``--no-spool`` path,
where the recorder parses as it reads.

The recorder's work per message (parsing the ring buffer, Arrow, Parquet) runs in user space;
the kernel side runs in the context of the process that moved the message and is not affected.

- ``auto`` (the default): ``normal`` while the node has spare CPU, ``low`` while it has not.
  Every tenth of a second the recorder reads the node's idle share from ``/proc/stat``. Below
  20 % plus the share its own reading takes (messages arriving x ~1 us, over the node's CPUs)
  it lowers itself to nice 19 and caps its own CPU time at ``--cpu-budget`` (default 2 % of
  one CPU, all its threads together: `CpuBudget`); once the idle share has stayed for a
  second above 25 % plus twice that reading share (`AutoPriority`), it goes back to nice 0
  without a cap. Each relapse within 30 s of going back doubles that second (up to 64 s),
  and a relapse within 2 s of it teaches it how much idle CPU its reading at nice 0 took
  (the idle share's drop across the raise): the next raise waits for that much more idle
  CPU. So neither a node swinging
  around the thresholds nor a steady flood that only a capped recorder leaves idle CPU in
  makes it flap. So on a node with CPU to spare it records everything, and on a node whose
  CPUs are saturated it yields them to the workload and counts what it cannot keep (raising
  the priority again needs CAP_SYS_NICE; without it the recorder stays low once lowered).
  Idle alone is not the signal: a saturated client/server pair that waits on a recorder at
  nice 0 shows 20-30 % idle while losing half its throughput. Nice 19 alone is not enough
  either: the pair still leaves short idle gaps (each waits on the other now and then), and
  a recorder that fills every one of them costs the workload about as much as one at nice 0
  (docs/benchmarks.md).
- ``normal``: the recorder competes for CPU like any process: it keeps up with the ring buffer
  as long as one core suffices, at the cost of that CPU to the workload.
- ``low``: nice 19. On a CPU that something else wants, the recorder gets a small share; the
  ring buffer absorbs bursts and what overflows it is counted as ``ringbuf_full``.
- ``idle``: SCHED_IDLE. The recorder runs only on CPU time nobody else wants: the workload
  loses (almost) nothing, and under sustained saturation most messages are lost, counted.

Linux keeps scheduling attributes per thread: the call lowers every thread the process has
(libraries may have started pools already), and threads started afterwards (the Parquet
writer) inherit them. The recorder applies the priority once the BPF program is loaded, so
compiling (in the loader child) is not slowed down.
"""

from __future__ import annotations

import os

from capture.errors import CaptureError

__all__ = ["PRIORITIES", "AutoPriority", "CpuBudget", "apply_priority", "check_priority",
           "cpu_idle_share"]

PRIORITIES: tuple[str, ...] = ("auto", "normal", "low", "idle")
_LOW_NICE = 19


def check_priority(level: str) -> None:
    """Raise CaptureError unless ``level`` is one of PRIORITIES."""
    if level not in PRIORITIES:
        raise CaptureError(f"unknown priority {level!r}: one of {', '.join(PRIORITIES)}")


def apply_priority(level: str) -> None:
    """Lower every thread of this process (and what they start later) to ``level``."""
    check_priority(level)
    if level in ("normal", "auto"):
        # normal means nice 0, not whatever the parent had: a recorder started from a niced
        # shell or CI runner would otherwise start low and never know it. Raising needs
        # CAP_SYS_NICE; without it the recorder runs at the nice it was given.
        if os.getpriority(os.PRIO_PROCESS, 0) > 0:
            try:
                _set_all("normal")
            except PermissionError:
                pass
        return
    try:
        _set_all(level)
    except OSError as exc:
        raise CaptureError(f"cannot set priority {level}: {exc.strerror}") from None


def _set_all(level: str, pid: int | None = None) -> None:
    """Every thread of this process (or of ``pid``) to ``level`` (low, idle, or normal =
    nice 0). Threads started later inherit the level of the thread that starts them."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid or 'self'}/task")]
    except OSError:
        tids = [pid or 0]
    for tid in tids:
        try:
            if level == "low":
                os.setpriority(os.PRIO_PROCESS, tid, _LOW_NICE)
            elif level == "idle":
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            else:
                os.setpriority(os.PRIO_PROCESS, tid, 0)
        except ProcessLookupError:
            continue  # a thread that ended meanwhile


def cpu_idle_share(stat_path: str = "/proc/stat") -> tuple[int, int]:
    """(idle + iowait, total) jiffies of all CPUs from the first line of /proc/stat."""
    with open(stat_path, encoding="ascii") as f:
        fields = f.readline().split()
    if not fields or fields[0] != "cpu" or len(fields) < 6:
        raise ValueError(f"{stat_path}: not a /proc/stat cpu line")
    values = [int(v) for v in fields[1:9]]  # user..steal; guest time is inside user already
    return values[3] + values[4], sum(values)


class AutoPriority:
    """``--priority auto``: call ``update()`` often; it samples the node's idle share every
    ``interval`` seconds and moves every thread of this process between nice 0 and nice 19.

    The recorder's own reading is counted against the idle share. When ``update`` is told
    how many messages have arrived, ``need`` is the share of the node's CPUs that reading
    them takes at ``cost_per_message``, and the recorder is lowered after one interval with
    less than ``low_below`` + ``need`` idle: a node must keep ``low_below`` idle after paying
    for the recorder. (A saturated client/server pair that waits on a recorder running at
    nice 0 shows 20-30 % idle while losing half its throughput: idle alone did not see it.)
    It is raised again once the idle share has stayed for ``hold`` seconds (a sample taken
    after a capped pause covers the pause) above ``low_below`` + 5 points + 2 x ``need``,
    which leaves room for the reading it takes up again at nice 0. Without message counts
    ``need`` is 0 and the thresholds are ``low_below`` and ``normal_above``.

    Hysteresis against flapping: ``hold`` starts at ``raise_after`` intervals (1 s) and
    doubles, up to ``max_hold`` seconds, each time the recorder is lowered again within
    ``relapse_window`` seconds of being raised (the idle CPU did not last); a lowering after
    a longer spell at nice 0 brings it back to the start. So a node that keeps swinging
    around the thresholds sees at most two switches per ``max_hold`` once the hold is grown.

    The recorder's own effect on the idle share is also learned from each relapse: a
    latency-bound workload (a client waiting on its server) loses more idle CPU to a
    recorder at nice 0 than the recorder's CPU time, so the idle share seen while capped
    overstates what raising will leave. When a raise is followed by a relapse within
    ``learn_within`` seconds (at once: the recorder's reading did it, not a load that came
    later), the drop of the idle share from the spell before the raise (its mean over the
    ``hold``) to the spell after it (its mean at nice 0) is kept as ``footprint`` (at most
    ``max_footprint``), and
    the next raise also needs the idle share above the lowering threshold + ``footprint`` +
    5 points: what the idle share would be at nice 0 must stay clear of the lowering. So a
    steady flood that the recorder can only keep up with at nice 0 makes it switch three
    times (down, up, down) and stay capped until the flood ends, not every few seconds; a
    lowering after a long spell at nice 0 forgets it.

    ``level`` is the current one; ``share`` and ``need`` are the last interval's, and
    ``threshold`` the idle share the last sample was compared with (the lowering threshold
    at nice 0, the raising one at nice 19); ``held`` is how long the idle share had stayed
    above the raising threshold when the recorder was last raised. ``switches`` counts the
    changes, ``lowered`` the switches to low, ``low_seconds`` the time spent low."""

    def __init__(self, stat_path: str = "/proc/stat", interval: float = 0.1,
                 low_below: float = 0.20, normal_above: float = 0.40, raise_after: int = 10,
                 apply: bool = True, cost_per_message: float = 1e-6,
                 cpus: int | None = None, max_hold: float = 64.0,
                 relapse_window: float = 30.0, max_footprint: float = 0.5,
                 learn_within: float = 2.0) -> None:
        self.stat_path = stat_path
        self.interval = interval
        self.low_below = low_below
        self.normal_above = normal_above
        self.raise_after = raise_after
        self.apply = apply
        self.cost_per_message = cost_per_message
        self.cpus = cpus or os.cpu_count() or 1
        self.max_hold = max_hold
        self.relapse_window = relapse_window
        self.max_footprint = max_footprint
        self.learn_within = learn_within
        self.footprint = 0.0
        self.level = "normal"
        self.switches = 0
        self.lowered = 0
        self.hold = self._base_hold = raise_after * interval
        self.threshold = low_below
        self.held = 0.0
        self._raised_at: float | None = None
        self.low_seconds = 0.0
        self.can_raise = True
        self.need = 0.0
        self.share = 1.0  # the idle share of the last interval
        self._last: tuple[float, int, int, int | None] | None = None
        self._high = 0.0  # seconds the idle share has stayed above the raise threshold
        self._high_idle = 0.0  # and the idle seconds in them
        self._raised_idle: float | None = None  # mean idle share over the hold of the last raise
        self._normal = [0.0, 0.0]  # seconds at nice 0 since then, and the idle seconds in them

    def low_time(self, now: float) -> float:
        """Seconds spent low up to ``now`` (``low_seconds`` counts up to the last sample)."""
        if self.level == "low" and self._last is not None:
            return self.low_seconds + max(0.0, now - self._last[0])
        return self.low_seconds

    def due(self, now: float) -> bool:
        """Whether ``update(now, ...)`` would take a sample (an interval has passed)."""
        return self._last is None or now - self._last[0] >= self.interval

    def update(self, now: float, arrived: int | None = None) -> str | None:
        """Sample if an interval has passed; return the new level when it changed.
        ``arrived``: messages that have reached the recorder so far (recorded, waiting in the
        ring or lost), a running count; without it the fixed ``low_below`` and
        ``normal_above`` thresholds apply."""
        if not self.due(now):
            return None
        try:
            idle, total = cpu_idle_share(self.stat_path)
        except (OSError, ValueError):
            return None
        last, self._last = self._last, (now, idle, total, arrived)
        if last is None or total <= last[2]:
            return None
        dt = now - last[0]
        if self.level == "low":
            self.low_seconds += dt
        share = self.share = (idle - last[1]) / (total - last[2])
        lower_below, raise_above = self.low_below, self.normal_above
        if arrived is not None and last[3] is not None and now > last[0]:
            rate = max(0, arrived - last[3]) / (now - last[0])
            self.need = rate * self.cost_per_message / self.cpus
            lower_below = self.low_below + self.need
            raise_above = self.low_below + 0.05 + 2 * self.need
        if self.level == "normal":
            self._normal[0] += dt
            self._normal[1] += share * dt
            self.threshold = lower_below
            if share < lower_below:
                return self._switch("low", now)
        elif self.can_raise:
            if self.footprint > 0:
                raise_above = max(raise_above, lower_below + self.footprint + 0.05)
            self.threshold = raise_above
            # counted in time, not samples: a sample taken after a capped pause covers it
            if share > raise_above:
                self._high += dt
                self._high_idle += share * dt
            else:
                self._high = self._high_idle = 0.0
            if self._high >= self.hold - 1e-9:
                return self._switch("normal", now)
        return None

    def _switch(self, level: str, now: float) -> str | None:
        held, held_idle = self._high, self._high_idle
        self._high = self._high_idle = 0.0
        if self.apply:
            try:
                _set_all(level)
            except OSError:  # raising needs CAP_SYS_NICE: stay low
                self.can_raise = False
                return None
        if level == "low":
            self.lowered += 1
            relapse = (self._raised_at is not None
                       and now - self._raised_at < self.relapse_window)
            self.hold = (min(self.hold * 2, self.max_hold) if relapse
                         else self._base_hold)
            spent, idle = self._normal
            if not relapse:
                self.footprint = 0.0
            elif (self._raised_idle is not None and 0 < spent
                    and now - (self._raised_at or now) < self.learn_within):
                # at once: the recorder's own reading did it (a load that comes later
                # would teach it nothing about the recorder, and keeps what it knew)
                drop = self._raised_idle - idle / spent
                self.footprint = min(max(drop, 0.0), self.max_footprint)
        else:
            self.held = held
            self._raised_at = now
            self._raised_idle = held_idle / held if held > 0 else self.share
            self._normal = [0.0, 0.0]
        self.level = level
        self.switches += 1
        return level


class CpuBudget:
    """At most ``share`` of one CPU for this process (user + sys of all its threads), as a
    token bucket: ``delay(wall, cpu)`` after each unit of work returns how long to sleep so
    that CPU time over wall time stays within the share. Unused budget is kept for at most
    ``burst`` seconds of wall time, so a quiet spell does not buy an unbounded burst later.
    ``share`` 0 means no cap. ``reset()`` forgets the past (when the cap comes back on)."""

    def __init__(self, share: float, burst: float = 0.5) -> None:
        if not 0 <= share <= 64:
            raise ValueError(f"CPU share must be 0..64 CPUs, not {share}")
        self.share = share
        self.burst = burst
        self._last: tuple[float, float] | None = None
        self._credit = 0.0

    def reset(self) -> None:
        self._last = None
        self._credit = 0.0

    def delay(self, wall: float, cpu: float) -> float:
        """Seconds to sleep now (0 when within budget). Call with monotonic wall time and
        this process's CPU time (time.process_time)."""
        if self.share <= 0:
            return 0.0
        last, self._last = self._last, (wall, cpu)
        if last is None:
            return 0.0
        self._credit += (wall - last[0]) * self.share - (cpu - last[1])
        self._credit = min(self._credit, self.burst * self.share)
        if self._credit >= 0:
            return 0.0
        return -self._credit / self.share
