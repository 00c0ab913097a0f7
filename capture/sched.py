"""How much CPU ``dnstrail record`` may take from the node's workload (``--priority``).

The recorder's work per message (parsing the ring buffer, Arrow, Parquet) runs in user space;
the kernel side runs in the context of the process that moved the message and is not affected.

- ``normal``: the recorder competes for CPU like any process: it keeps up with the ring buffer
  as long as one core suffices, at the cost of that CPU to the workload.
- ``low``: nice 19. On a CPU that something else wants, the recorder gets a small share; the
  ring buffer absorbs bursts and what overflows it is counted as ``ringbuf_full``.
- ``idle``: SCHED_IDLE. The recorder runs only on CPU time nobody else wants: the workload
  loses (almost) nothing, and under sustained saturation most messages are lost, counted.

Linux keeps scheduling attributes per thread: the call lowers every thread the process has
(libraries may have started pools already), and threads started afterwards (the Parquet
writer) inherit them. Children inherit them too; the BPF
loader puts itself back to normal (``restore_normal``) so that loading is not slowed down.
"""

from __future__ import annotations

import os

from capture.errors import CaptureError

__all__ = ["PRIORITIES", "apply_priority", "restore_normal"]

PRIORITIES: tuple[str, ...] = ("normal", "low", "idle")
_LOW_NICE = 19


def apply_priority(level: str) -> None:
    """Lower every thread of this process (and what they start later) to ``level``."""
    if level not in PRIORITIES:
        raise CaptureError(f"unknown priority {level!r}: one of {', '.join(PRIORITIES)}")
    if level == "normal":
        return
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            if level == "low":
                os.setpriority(os.PRIO_PROCESS, tid, _LOW_NICE)
            else:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except ProcessLookupError:
            continue  # a thread that ended meanwhile
        except OSError as exc:
            raise CaptureError(f"cannot set priority {level}: {exc.strerror}") from None


def restore_normal() -> None:
    """Back to SCHED_OTHER at nice 0 where permitted (needs CAP_SYS_NICE to raise); else keep."""
    try:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        if os.getpriority(os.PRIO_PROCESS, 0) > 0:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError:
        pass
