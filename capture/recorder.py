"""``record()``: run the BPF probe and write what it sees into a capture directory.

The loop is: poll the probe's ring buffers (batches of events, per kind), hand them to the
writer, name new cgroup ids while they exist, keep the pod/cgroup filter current, and rotate
files. It ends at ``duration``, on SIGINT or SIGTERM (both finish the capture normally), or on
an error (the manifest then says 'failed' with the reason). Nothing here imports bcc at module
import time: ``capture.probe`` is imported when a capture starts.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

# Arrow's C++ default memory pool is picked once, when pyarrow loads, from this variable, and
# the Parquet writer takes its page and compression buffers from it whatever
# pa.set_memory_pool() says (see _bound_allocators). mimalloc kept ~28 MB of freed pages
# resident at dnsperf saturation; glibc's malloc returns them. `dnstrail record` imports
# pyarrow first here; a process that loaded pyarrow earlier keeps its pool.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

import pyarrow as pa

from capture import sched
from capture import snapshot as snap
from capture.errors import BccMissing, CaptureError, Interrupted, OutputNotEmpty
from capture.preflight import PreflightPaths, preflight
from capture.schema import EVENT_KINDS
from capture.selectors import BadSelector, parse_pod
from capture.writer import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_ROTATE_SECONDS,
    CaptureWriter,
    FileEntry,
)

MAX_SNAPLEN = 8192
MIN_SNAPLEN = 12  # a DNS header
#: Exec events kept as processes rows (source='exec'); the execs files keep every one.
MAX_EXEC_ROWS = 100_000
#: Exec events per poll whose /proc entry is read for exe and cmdline.
MAX_EXEC_PROC_READS = 512
#: Size of the probe's cgroup filter map (BPF_HASH cgroups in bpf/dnstrail.bpf.c).
MAX_FILTER_CGROUPS = 4096


def parse_duration(text: str) -> float:
    """'30s', '5m', '1h', '1h30m', '250ms' or plain seconds -> seconds."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        value = float(t)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", t)
        if not parts or "".join(n + u for n, u in parts) != t:
            raise ValueError(f"bad duration {text!r}: use e.g. 30s, 5m, 1h")
        unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
        value = sum(float(n) * unit[u] for n, u in parts)
    if value <= 0:
        raise ValueError(f"bad duration {text!r}: must be positive")
    return value


def parse_size(text: str) -> int:
    """'64MB', '64M', '1G', '500k', '1048576' -> bytes (powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not m:
        raise ValueError(f"bad size {text!r}: use e.g. 64MB, 1GB, 500KB")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2)]
    value = int(float(m.group(1)) * scale)
    if value <= 0:
        raise ValueError(f"bad size {text!r}: must be positive")
    return value


@dataclass
class RecordOptions:
    output: Path
    duration: float | None = None
    ports: tuple[int, ...] = (53,)
    pids: tuple[int, ...] = ()
    comms: tuple[str, ...] = ()
    cgroups: tuple[str, ...] = ()
    pods: tuple[str, ...] = ()
    snaplen: int = 1232
    ringbuf_mb: int = 32
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    rotate_seconds: float = DEFAULT_ROTATE_SECONDS
    append: bool = False
    pods_root: Path | None = Path("/")
    pods_json: Path | None = None
    trace_connects: bool = True
    trace_execs: bool = True
    #: CPU priority against the workload: auto, normal, low, idle (capture.sched)
    priority: str = "auto"
    #: With priority auto, while the node is saturated: the recorder's CPU cap, in CPUs
    #: (0.02 = 2 % of one CPU; 0 = no cap). See capture.sched.CpuBudget.
    cpu_budget: float = 0.02
    command_line: Sequence[str] = field(default_factory=lambda: list(sys.argv))
    preflight_paths: PreflightPaths | None = None
    #: How often --pod/--cgroup filters are re-resolved (new containers), in seconds.
    refilter_seconds: float = 5.0
    poll_ms: int = 100
    #: After the capture: how long the recorder may go on converting spooled messages to
    #: Parquet before it exits (what is left stays spooled: listed, hashed, readable). Below
    #: Kubernetes' default 30 s grace period between SIGTERM and SIGKILL.
    finish_seconds: float = 25.0
    #: The cheap path: ring records go to spool segments (capture.spool) and become Parquet
    #: when there is CPU to spare. False: parse every poll into Parquet at once (the old path;
    #: also taken, with a warning, when the compiled spool routine is missing).
    spool: bool = True
    #: Install SIGINT/SIGTERM handlers that end the capture cleanly (main thread only).
    handle_signals: bool = True
    #: Set from another thread (or a handler) to end the capture.
    stop_event: threading.Event = field(default_factory=threading.Event)

    def validate(self) -> None:
        sched.check_priority(self.priority)
        if not 0 <= self.cpu_budget <= 1:
            raise CaptureError(f"bad --cpu-budget {self.cpu_budget * 100:g}: must be 0-100 "
                               "(percent of one CPU)")
        if not self.ports:
            raise CaptureError("at least one --port is needed")
        for p in self.ports:
            if not 1 <= p <= 65535:
                raise CaptureError(f"bad --port {p}: must be 1-65535")
        if not MIN_SNAPLEN <= self.snaplen <= MAX_SNAPLEN:
            raise CaptureError(f"bad --snaplen {self.snaplen}: must be {MIN_SNAPLEN}-{MAX_SNAPLEN}")
        if not 1 <= self.ringbuf_mb <= 1024 or self.ringbuf_mb & (self.ringbuf_mb - 1):
            raise CaptureError(
                f"bad --ringbuf-mb {self.ringbuf_mb}: must be a power of two, 1-1024"
            )
        for pid in self.pids:
            if pid <= 0:
                raise CaptureError(f"bad --pid {pid}")
        for comm in self.comms:
            if not comm or len(comm.encode()) > 15:
                raise CaptureError(f"bad --comm {comm!r}: the kernel keeps at most 15 bytes")
        for pod in self.pods:
            try:
                parse_pod(pod)
            except BadSelector as exc:
                raise CaptureError(f"bad --pod {exc}") from None
        if self.duration is not None and self.duration <= 0:
            raise CaptureError("--duration must be positive")
        if self.pods_json is not None and not Path(self.pods_json).is_file():
            raise CaptureError(f"--pods-json {self.pods_json}: no such file")

    def filters(self) -> dict[str, Any]:
        return {
            "ports": list(self.ports),
            "pids": list(self.pids),
            "comms": list(self.comms),
            "cgroups": list(self.cgroups),
            "pods": list(self.pods),
            "snaplen": self.snaplen,
            "trace_connects": self.trace_connects,
            "trace_execs": self.trace_execs,
            "priority": self.priority,
            "cpu_budget": self.cpu_budget,
        }


@dataclass
class RecordSummary:
    output: Path
    status: str
    elapsed_s: float
    counts: dict[str, int]
    files: list[FileEntry]
    bytes: int
    lost: dict[str, int]
    error: str | None = None
    pod_uids: list[str] = field(default_factory=list)
    #: With --priority auto: how often the recorder yielded (went low) and for how long.
    priority_lowered: int = 0
    low_seconds: float = 0.0

    #: With the spool and --priority auto: how often the conversion waited for the workload.
    conversion_paused: int = 0
    paused_seconds: float = 0.0
    #: Messages still in spool segments at the end (not converted within finish_seconds).
    spooled_left: int = 0

    def lines(self) -> list[str]:
        """The end-of-capture report, under 80 columns."""
        kinds = ", ".join(f"{self.counts.get(k, 0):,} {k}" for k in EVENT_KINDS)
        out = [
            f"Recorded {kinds} in {self.elapsed_s:.1f} s ({self.status})",
            f"Files: {len(self.files)} ({_human(self.bytes)}) in {self.output}",
        ]
        lost = {k: v for k, v in sorted(self.lost.items()) if v}
        if lost:
            out.append("LOST events: " + ", ".join(f"{k} {v:,}" for k, v in lost.items()))
        else:
            out.append("Lost events: none")
        if self.priority_lowered:
            times = "once" if self.priority_lowered == 1 else f"{self.priority_lowered:,} times"
            line = f"Priority: yielded the CPU {times}, {self.low_seconds:,.1f} s in all"
            out.append(next((c for c in (f"{line} (manifest priority_log)",
                                         f"{line} (priority_log)") if len(c) < 80), line))
        if self.spooled_left:
            out.append(f"{self.spooled_left:,} of them left spooled (listed, hashed; readers "
                       "take them)"[:79])
        if self.conversion_paused:
            times = ("once" if self.conversion_paused == 1
                     else f"{self.conversion_paused:,} times")
            line = (f"Parquet conversion waited for the workload {times}, "
                    f"{self.paused_seconds:,.1f} s in all")
            out.append(line if len(line) < 80 else
                       f"Conversion waited {times}, {self.paused_seconds:,.0f} s")
        if self.error:
            out.append(f"Error: {self.error}")
        return out


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def check_output(directory: Path, append: bool) -> None:
    """Refuse a non-empty output directory before anything is loaded (the writer re-checks)."""
    try:
        exists, is_dir = directory.exists(), directory.is_dir()
        non_empty = is_dir and any(directory.iterdir())
    except PermissionError:
        return  # the privilege check that follows says what to do
    if exists and not is_dir:
        raise CaptureError(f"{directory} exists and is not a directory")
    if not append and non_empty:
        raise OutputNotEmpty(
            f"output directory {directory} is not empty: choose a new directory or pass "
            "--append to continue that capture"
        )


def _preflight(paths: PreflightPaths | None) -> None:
    """capture.preflight's checks in their order, but bcc is only looked for, not imported:
    importing it maps LLVM and clang (~56 MB resident) into this process for good. The loader
    child imports it and reports a BccMissing of its own if the import itself fails."""
    import importlib.util

    paths = paths or PreflightPaths()
    preflight(paths, skip=("bcc", "headers", "tracefs"))
    try:
        found = importlib.util.find_spec(paths.bcc_module) is not None
        reason = f"no module named {paths.bcc_module!r}"
    except (ImportError, ValueError) as exc:
        found, reason = False, str(exc)
    if not found:
        raise BccMissing(
            f"bcc is not importable ({reason}): apt-get install python3-bpfcc (the PyPI "
            "package 'bcc' is unrelated), then re-run deploy/setup.sh"
        )
    preflight(paths, skip=("privileges", "bcc"))


class _State:
    """What the snapshots are made of, kept while the capture runs."""

    def __init__(self, resolver: snap.CgroupResolver, pods: list[snap.PodRow]) -> None:
        self.resolver = resolver
        self.pods = pods
        self.start_rows: list[snap.ProcessRow] = []
        self.exec_rows: list[snap.ProcessRow] = []
        self.end_rows: list[snap.ProcessRow] = []
        self.exec_rows_dropped = 0

        self._written: dict[str, tuple[int, ...]] = {}

    def _signatures(self) -> dict[str, tuple[int, ...]]:
        known = len(self.resolver)
        return {
            "processes": (len(self.start_rows), len(self.exec_rows), len(self.end_rows), known),
            "cgroups": (known,),
            "pods": (len(self.pods),),
        }

    def _table(self, kind: str) -> pa.Table:
        if kind == "cgroups":
            return self.resolver.table()
        if kind == "pods":
            return snap.pods_table(self.pods)
        rows = self.start_rows + self.exec_rows + self.end_rows
        for r in rows:
            if r.cgroup_path is None and r.cgroup_id is not None:
                r.cgroup_path = self.resolver.path_of(r.cgroup_id)
        return snap.processes_table(rows)

    def tables(self) -> dict[str, pa.Table]:
        """Every snapshot table."""
        self._written = self._signatures()
        return {kind: self._table(kind) for kind in self._written}

    def changed_tables(self) -> dict[str, pa.Table]:
        """The snapshot tables that changed since they were last handed out (rotations stay
        cheap on a busy node)."""
        sigs = self._signatures()
        changed = [k for k, v in sigs.items() if self._written.get(k) != v]
        self._written.update({k: sigs[k] for k in changed})
        return {kind: self._table(kind) for kind in changed}


def record(options: RecordOptions, err: TextIO | None = None) -> RecordSummary:
    """Record until duration, SIGINT/SIGTERM or options.stop_event; return the summary.

    Raises the CaptureError subclasses of capture.errors (DiskFull after finishing what it
    can); the manifest records a failure whenever the directory was already started.
    """
    err = err if err is not None else sys.stderr
    options.validate()
    out_dir = Path(options.output)
    check_output(out_dir, options.append)
    _preflight(options.preflight_paths)

    resolver = snap.CgroupResolver()
    pods = snap.scan_pods(options.pods_root, options.pods_json)
    state = _State(resolver, pods)
    filtering = bool(options.pods or options.cgroups)
    resolution = snap.resolve_cgroup_filter(resolver, pods, options.pods, options.cgroups)
    if filtering and resolver.mount is None:
        raise CaptureError("--pod/--cgroup need the cgroup2 hierarchy mounted (none found)")
    if len(resolution.cgroup_ids) > MAX_FILTER_CGROUPS:
        raise CaptureError(
            f"--pod/--cgroup select {len(resolution.cgroup_ids)} cgroups; the probe holds at "
            f"most {MAX_FILTER_CGROUPS}: use a narrower --cgroup text"
        )

    from capture.probe import Probe, ProbeConfig  # bcc itself loads with the probe

    try:
        cfg = probe_config(ProbeConfig, options, resolution.cgroup_ids, filtering)
    except ValueError as exc:
        raise CaptureError(f"bad probe option: {exc}") from None
    stop = options.stop_event
    restore = _install_signals(stop) if options.handle_signals else {}
    try:
        return _run(options, cfg, Probe, state, resolution, filtering, out_dir, err)
    finally:
        for sig, handler in restore.items():
            signal.signal(sig, handler)


def probe_config(config_cls: Any, options: RecordOptions, cgroup_ids: set[int],
                 filtering: bool) -> Any:
    """The capture.probe.ProbeConfig for these options (config_cls passed: no import here)."""
    return config_cls(
        ports=tuple(options.ports),
        pids=tuple(options.pids),
        comms=tuple(options.comms),
        cgroup_ids=tuple(sorted(cgroup_ids)),
        # With --pod/--cgroup the filter is on even while it matches nothing yet: a pod
        # whose cgroups do not exist must record nothing, not everything.
        filter_cgroups=filtering,
        snaplen=options.snaplen,
        ringbuf_mb=options.ringbuf_mb,
        trace_connects=options.trace_connects,
        trace_execs=options.trace_execs,
    )


def _install_signals(stop: threading.Event) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _run(
    options: RecordOptions,
    cfg: Any,
    probe_cls: Any,
    state: _State,
    resolution: snap.FilterResolution,
    filtering: bool,
    out_dir: Path,
    err: TextIO,
) -> RecordSummary:
    stop = options.stop_event
    tty = _isatty(err)
    _bound_allocators()
    writer = CaptureWriter(
        out_dir,
        append=options.append,
        max_file_bytes=options.max_file_bytes,
        rotate_seconds=options.rotate_seconds,
        snapshot_provider=state.changed_tables,
    )
    started = time.monotonic()
    current_ids = set(resolution.cgroup_ids)
    probe = probe_cls(cfg)
    err.write("Compiling the BPF program (a few seconds) ...\n")
    err.flush()
    try:
        probe.__enter__()  # compiles and attaches; raises LoadFailed & co. before any file exists
    except CaptureError:
        # Ctrl-C on a terminal reaches the loader child too, which then dies without an answer
        if stop.is_set():
            raise _interrupted(out_dir, options.append) from None
        raise
    auto: sched.AutoPriority | None = None
    budget: sched.CpuBudget | None = None
    priority_log: list[dict[str, Any]] = []
    spooler: Any = None
    gate_paused = False
    try:
        sched.apply_priority(options.priority)  # after loading: compiling is not steady state
        spooling = options.spool and _spool_available(err)
        if options.priority == "auto" and not spooling:
            # without the spool: nice 19 and a CPU cap while the node is saturated. With it,
            # the drain is cheap enough to run at nice 0 always (at nice 19 a saturated node
            # would starve it), and the conversion runs in its own process at nice 19.
            auto = sched.AutoPriority()
            budget = sched.CpuBudget(options.cpu_budget)
        filters = options.filters()
        filters["pod_uids"] = sorted(resolution.pod_uids)
        writer.update_info(
            {
                "source": "ebpf",
                "boot_time_ns": int(probe.boot_time_ns),
                "command_line": list(options.command_line),
                "filters": filters,
            }
        )
        state.start_rows = snap.scan_processes(resolver=state.resolver)
        if stop.is_set():  # Ctrl-C / SIGTERM while loading: leave no capture behind
            raise _interrupted(out_dir, options.append)
        writer.start()
        for kind, table in state.tables().items():
            writer.write_snapshot(kind, table)
        if spooling:
            from capture.spool import Spooler

            spooler = Spooler(writer, probe, lambda b: _consume(b, writer, state),
                              state.resolver.resolve,
                              max_bytes=options.max_file_bytes,
                              max_seconds=options.rotate_seconds, clock=time.monotonic,
                              poll_ms=options.poll_ms,
                              converter_policy=_CONVERTER_POLICY[options.priority],
                              gate=options.priority == "auto")
        err.write(_start_line(options, out_dir, filtering, current_ids) + "\n")
        err.writelines(line + "\n" for line in _drops_lines(options, spooling=spooling))
        if filtering and not current_ids:
            err.write("No cgroup matches the filter yet; waiting for one to appear.\n")
        err.flush()
        started = time.monotonic()  # the duration counts from here, not from compiling
        deadline = started + options.duration if options.duration else None
        next_status = next_refilter = time.monotonic()
        try:
            while not stop.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                timeout = options.poll_ms
                if deadline is not None:
                    timeout = max(0, min(timeout, int((deadline - now) * 1000)))
                # capped (auto, low): one chunk per poll (~25 ms of work), so that sleeping
                # off each poll stays within the 2 s longest pause below and the cap holds
                if spooler is not None:
                    # the spool's thread drains the rings, its process converts them
                    spooler.service()
                    gate = spooler.gate
                    if gate is not None and gate.paused != gate_paused:
                        gate_paused = gate.paused
                        level = "low" if gate.paused else "normal"
                        priority_log.append({"at": _iso_now(), "level": level,
                                             "lost": dict(probe.lost())})
                        writer.update_info({"priority_log": list(priority_log)})
                        line = _gate_line(gate, spooler.backlog_messages)
                        err.write(("\r" + line.ljust(79) if tty else line) + "\n")
                        err.flush()
                    stop.wait(min(timeout, _SERVICE_MS) / 1000)
                else:
                    capped = (auto is not None and auto.level == "low"
                              and options.cpu_budget > 0)
                    _consume(probe.poll(timeout_ms=timeout, max_chunks=1 if capped else None),
                             writer, state)
                lost = probe.lost()
                writer.set_lost(lost)
                writer.tick()
                now = time.monotonic()
                if auto is not None:
                    # the arrival count (probe stats) only when auto takes a sample
                    changed = auto.update(now, _arrived(probe, lost)) if auto.due(now) else None
                    if changed is not None and budget is not None:
                        budget.reset()
                    if changed is not None:
                        priority_log.append({"at": _iso_now(), "level": changed,
                                             "lost": dict(lost)})
                        writer.update_info({"priority_log": list(priority_log)})
                        # on a terminal it overwrites the status line, rewritten after it
                        line = _priority_line(changed, auto,
                                              budget.share if budget else 0.0)
                        err.write(("\r" + line.ljust(79) if tty else line) + "\n")
                        err.flush()
                    if auto.level == "low" and budget is not None:
                        # saturated node: sleep off whatever went over the CPU cap; the ring
                        # buffer fills meanwhile and what overflows it is counted
                        # (a poll of one chunk costs ~25 ms: at 2 % that is a 1.25 s pause)
                        pause = min(budget.delay(now, time.process_time()), 2.0)
                        if deadline is not None:
                            pause = min(pause, max(0.0, deadline - now))
                        if pause > 0:
                            stop.wait(pause)  # returns at once on Ctrl-C / SIGTERM
                            now = time.monotonic()
                if filtering and now >= next_refilter:
                    next_refilter = now + options.refilter_seconds
                    current_ids = _refilter(options, state, probe, current_ids)
                if tty and now >= next_status:
                    next_status = now + 0.5
                    remaining = deadline - now if deadline is not None else None
                    rows = writer.stats().rows
                    if spooler is not None:  # spooled messages count as recorded
                        rows["messages"] += spooler.backlog_messages
                        moved, label = spooler.sink.spool_bytes, "spooled"
                    else:
                        moved, label = probe.stats()["ring_bytes"], "read"
                    capped = auto is not None and auto.level == "low" and budget is not None
                    err.write("\r" + _status_line(rows, moved, probe.lost(), now - started,
                                                   remaining, bytes_label=label,
                                                   capped=capped).ljust(79))
                    err.flush()
        except KeyboardInterrupt:
            pass  # Ctrl-C without our handler (handle_signals=False): end normally
        if tty:
            err.write("\n")
        # Drain what is already in the ring buffer (a poll parses at most two chunks of
        # 16384 records; 200 polls empty even a full 1 GB ring).
        if spooler is not None:
            spooler.stop()  # its last drain of the rings, before they are unmapped
        else:
            for _ in range(200):
                if not _consume(probe.poll(timeout_ms=0), writer, state):
                    break
        writer.set_lost(probe.lost())
    except BaseException as exc:
        if spooler is not None:
            try:
                spooler.stop()
            except BaseException as also:  # noqa: BLE001  (the first error is the one raised)
                err.write(f"warning: stopping the spool: {type(also).__name__}: {also}\n")
            spooler.abandon()  # what is not converted stays spooled, listed and readable
        _detach(probe, err)
        if writer.started and not writer.closed:  # DiskFull has closed it already
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            writer.close("failed", error=reason)
        raise
    _detach(probe, err)
    left = 0
    if spooler is not None:
        backlog = spooler.backlog_messages
        if backlog > _CONVERT_NOTICE:
            err.write(f"Converting {backlog:,} spooled messages to Parquet "
                      f"(for at most {options.finish_seconds:g} s; the rest stays spooled, "
                      "readable) ...\n")
            err.flush()
        try:
            left = spooler.finish(within=options.finish_seconds)
        except BaseException as exc:  # the spool stays, listed and readable
            spooler.abandon()
            if writer.started and not writer.closed:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                writer.close("failed", error=f"converting the spool: {reason}")
            raise
    state.end_rows = snap.scan_processes(resolver=state.resolver)
    try:  # pods that started during the capture
        state.pods = list(dict.fromkeys(state.pods + snap.scan_pods(options.pods_root,
                                                                    options.pods_json)))
    except CaptureError as exc:
        err.write(f"warning: pods snapshot at the end failed: {exc}\n")
    writer.close("complete")
    stats = writer.stats()
    summary = RecordSummary(
        output=out_dir,
        status=writer.status,
        elapsed_s=time.monotonic() - started,
        counts={k: n + (left if k == "messages" else 0) for k, n in writer.counts().items()},
        spooled_left=left,
        files=writer.files,
        bytes=stats.bytes,
        lost=writer.lost(),
        pod_uids=sorted(resolution.pod_uids),
        priority_lowered=auto.lowered if auto is not None else 0,
        low_seconds=auto.low_time(time.monotonic()) if auto is not None else 0.0,
        conversion_paused=spooler.gate.pauses if spooler and spooler.gate else 0,
        paused_seconds=spooler.gate.paused_seconds if spooler and spooler.gate else 0.0,
    )
    err.writelines(line + "\n" for line in summary.lines())
    err.flush()
    return summary


#: Bytes per ring record before any has been read (a message record with a short payload).
_RECORD_BYTES_GUESS = 384


#: How often the recorder's thread looks at the spool (side records, closed segments, the
#: converter's answers), in ms.
_SERVICE_MS = 50
#: The spool converter's priority for each --priority: with auto it always yields to the
#: workload (nice 19); normal competes; low and idle as the recorder.
_CONVERTER_POLICY = {"auto": "low", "normal": "normal", "low": "low", "idle": "idle"}
#: A backlog above this many messages at the end is announced before it is converted.
_CONVERT_NOTICE = 200_000


def _spool_available(err: TextIO) -> bool:
    from capture import spool

    if spool.available():
        return True
    err.write("warning: the compiled spool routine is missing (reinstall dnstrail with pip); "
              "parsing every poll at once, which keeps fewer messages on a busy node\n")
    return False


def _gate_line(gate: Any, backlog: int) -> str:
    """One line (under 80 columns) when the spool's conversion pauses or resumes; the idle
    share counts the converter's own time as idle (capture.spool.ConversionGate)."""
    if gate.paused:
        return f"Node saturated (idle {gate.share:.0%}): Parquet conversion waits; spooling goes on"
    line = f"CPU to spare again (idle {gate.share:.0%}): converting {backlog:,} spooled messages"
    return line if len(line) < 80 else f"CPU to spare again: converting {backlog:,} spooled"


def _arrived(probe: Any, lost: Mapping[str, int]) -> int:
    """Messages that reached the recorder so far: recorded, waiting in the ring buffer
    (its pending bytes at the average record size read so far), or counted as lost for want
    of room in it: what the recorder has had or will have to read. Counting the waiting ones
    makes the rate that of the traffic, not of the reading: a backlog read at nice 0 after a
    capped spell does not look like a burst of traffic to `AutoPriority`."""
    s = probe.stats()
    records = s["messages"] + s["connects"] + s["execs"]
    per_record = s["ring_bytes"] / records if records else _RECORD_BYTES_GUESS
    waiting = s["ring_pending_bytes"] / per_record if per_record > 0 else 0
    return int(s["messages"] + waiting + lost.get("ringbuf_full", 0))


def _interrupted(out_dir: Path, append: bool) -> Interrupted:
    """The error for a capture stopped before tracing began (nothing was written)."""
    where = f"{out_dir} is unchanged" if append else f"{out_dir} was not created"
    return Interrupted(f"interrupted before tracing began: nothing was recorded; {where}")


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _percents(lesser: float, greater: float) -> tuple[str, str] | None:
    """Two shares as percentages with as few decimals as keep ``lesser < greater`` true
    once rounded (0.196 and 0.2 read "19.6%" and "20%", never "20%" and "20%")."""
    for digits in range(4):
        a, b = round(lesser * 100, digits), round(greater * 100, digits)
        if a < b:
            return f"{a:.{digits}f}%", f"{b:.{digits}f}%"
    return None


def _priority_line(level: str, auto: sched.AutoPriority, cap: float) -> str:
    """One short stderr line for a switch of --priority auto without the spool (under 80
    columns), whose figures satisfy the comparison they show. ``cap``: the CPU cap while low,
    in CPUs (0: none)."""
    if level == "low":
        pair = _percents(auto.share, auto.threshold)
        why = f"idle {pair[0]} < {pair[1]}" if pair else "no idle CPU to spare"
        limit = f"nice 19, at most {cap * 100:g}% of one CPU" if cap > 0 else "nice 19, no CPU cap"
        line = f"priority: low ({why}): {limit}; drops counted"
        return line if len(line) < 80 else line.replace("nice 19, ", "")
    pair = _percents(auto.threshold, auto.share)
    why = f"idle {pair[1]} > {pair[0]}" if pair else "idle CPU again"
    return f"priority: normal ({why} for {auto.held:.1f} s): nice 0, no CPU cap"


def _bound_allocators() -> None:
    """Arrow allocates from glibc's malloc instead of its mimalloc pool, which keeps freed
    pages per thread (polling thread and writer thread both allocate): peak RSS at dnsperf
    saturation 268 -> 245 MB, CPU the same. (Also fixing glibc's mmap threshold gave no
    lower peak and cost ~0.2 s of page faults per 8 s, so it is not done.)"""
    pa.set_memory_pool(pa.system_memory_pool())


def _detach(probe: Any, err: TextIO) -> None:
    """Detach the probe; a failure here does not spoil what was already recorded."""
    try:
        probe.__exit__(None, None, None)
    except Exception as exc:  # noqa: BLE001  (reported, and the capture is still finished)
        err.write(f"warning: detaching the BPF probe failed: {type(exc).__name__}: {exc}\n")


def _consume(
    batches: Mapping[str, Sequence[pa.RecordBatch]], writer: CaptureWriter, state: _State
) -> int:
    """Write one poll's batches; name new cgroups; turn execs into processes rows."""
    n = 0
    ids: set[int] = set()
    for kind, blist in batches.items():
        for b in blist:
            if b.num_rows == 0:
                continue
            writer.write(kind, b)
            n += b.num_rows
        ids.update(snap.iter_cgroup_ids(blist))
    if ids:
        state.resolver.resolve(ids)
    reads = MAX_EXEC_PROC_READS
    for b in batches.get("execs", ()):
        room = MAX_EXEC_ROWS - len(state.exec_rows)
        if room <= 0:
            state.exec_rows_dropped += b.num_rows
            continue
        b = b.slice(0, room)
        rows = snap.exec_rows(b, state.resolver, read_proc=reads > 0)
        reads -= len(rows)
        state.exec_rows.extend(rows)
    return n


def _refilter(
    options: RecordOptions, state: _State, probe: Any, current: set[int]
) -> set[int]:
    state.resolver.walk()
    if options.pods:
        fresh = snap.scan_pods(options.pods_root, options.pods_json)
        if fresh:
            state.pods = list(dict.fromkeys(state.pods + fresh))
    try:
        res = snap.resolve_cgroup_filter(state.resolver, state.pods, options.pods,
                                         options.cgroups)
    except snap.PodNotFound:
        return current  # the pod's log directory went away; keep tracing what we had
    # Keep ids of cgroups that vanished: their remaining events still belong to the filter.
    wanted = current | res.cgroup_ids
    if len(wanted) > MAX_FILTER_CGROUPS:
        return current  # the map is full: keep what is traced (start-up refused the case)
    if wanted != current:
        probe.set_cgroup_ids(sorted(wanted))
    return wanted


def _start_line(options: RecordOptions, out_dir: Path, filtering: bool, ids: set[int]) -> str:
    ports = ",".join(str(p) for p in options.ports)
    parts = [f"Tracing DNS on port{'s' if len(options.ports) > 1 else ''} {ports}"]
    if options.pids:
        parts.append("pids " + ",".join(map(str, options.pids)))
    if options.comms:
        parts.append("comms " + ",".join(options.comms))
    if options.pods:
        parts.append("pods " + ",".join(options.pods))
    if options.cgroups:
        parts.append("cgroups ~" + ",".join(options.cgroups))
    if filtering:
        parts.append(f"{len(ids)} cgroup(s)")
    until = f"for {options.duration:g} s or Ctrl-C" if options.duration else "Ctrl-C to end"
    return f"{'; '.join(parts)} into {out_dir} ... {until}"


_KEEP_ALL = "--priority normal competes for CPU to keep everything."


def _drops_lines(options: RecordOptions, *, spooling: bool | None = None) -> list[str]:
    """What the start line adds: when messages may be dropped, and how to avoid it
    (lines under 80 columns). ``spooling``: whether ring records go to the spool (default:
    ``options.spool``)."""
    spooling = options.spool if spooling is None else spooling
    ring = f"{options.ringbuf_mb} MB ring buffer"
    if options.priority == "auto" and spooling:
        return ["It spools the ring at nice 0 and makes Parquet at nice 19 (later, when the",
                "CPUs are busy); it drops (and counts) only what overflows the",
                f"{ring}: a larger --ringbuf-mb rides out longer bursts."]
    if options.priority == "auto":
        cap = (f"nice 19, at most {options.cpu_budget * 100:g}% of one CPU"
               if options.cpu_budget > 0 else "nice 19")
        return [f"When the node's CPUs saturate it yields ({cap}) and",
                f"counts what it drops; {_KEEP_ALL}"]
    if options.priority == "low":
        return ["At nice 19 it drops (and counts) what overflows the ring buffer while the",
                f"CPUs are busy; {_KEEP_ALL}"]
    if options.priority == "idle":
        return ["At SCHED_IDLE it reads only on idle CPU and drops (and counts) what overflows",
                f"the ring buffer; {_KEEP_ALL}"]
    return [f"It drops (and counts) only what overflows the {ring} when",
            "reading needs more than one CPU; a larger --ringbuf-mb rides out longer bursts."]


def _clock(seconds: float) -> str:
    h, rem = divmod(int(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _status_line(rows: Mapping[str, int], read_bytes: int, lost: Mapping[str, int],
                 elapsed: float, remaining: float | None = None, *,
                 bytes_label: str = "read", capped: bool = False) -> str:
    """The line rewritten in place on a terminal (under 80 columns): events by kind, bytes
    read from the ring buffer so far (they grow with every event, where the bytes on disk
    grow by whole row groups; ``bytes_label`` names what they count), events lost, time
    elapsed and, with --duration, left; ``capped`` (--priority auto yielding) says so
    after the lost count, which then grows on purpose."""
    kinds = [f"{rows.get('messages', 0):,} msgs", f"{rows.get('connects', 0):,} conns",
             f"{rows.get('execs', 0):,} execs"]
    total_lost = sum(int(v) for v in lost.values())
    why = " (capped)" if capped else ""
    tail = [f"{_human(read_bytes)} {bytes_label}", f"lost {total_lost:,} events{why}",
            _clock(elapsed)]
    if remaining is not None:
        tail.append(f"{_clock(max(0.0, remaining))} left")
    line = ", ".join(kinds) + "  " + "  ".join(tail)
    if len(line) >= 80:  # big counts: shorter words, then the message count alone
        tail[1] = f"lost {total_lost:,}{why}"
        line = ", ".join(kinds) + "  " + "  ".join(tail)
    if len(line) >= 80:
        line = kinds[0] + "  " + "  ".join(tail)
    if len(line) >= 80:
        line = kinds[0] + "  " + "  ".join(tail[:3])
    return line


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


__all__ = [
    "RecordOptions",
    "RecordSummary",
    "check_output",
    "parse_duration",
    "parse_size",
    "record",
]
