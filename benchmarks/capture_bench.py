"""Capture overhead benchmark: dnsperf against a local unbound, with no tracer, tcpdump, dnstrail.

``dnstrail`` is ``dnstrail record`` with its defaults (``--priority auto``: nice 0 while the
machine has idle CPU, nice 19 while it has not); ``dnstrail-normal``, ``dnstrail-low`` and
``dnstrail-idle`` add ``--priority normal`` / ``low`` / ``idle``; ``dnstrail-budgetN`` adds
``--cpu-budget N`` (auto's cap on a saturated node, in percent of one CPU).

Runs, in one invocation and rotating the order of the configurations (``run_order``),
dnsperf (one thread) against an unbound that answers a static zone from local-data inside a
private network namespace (see ``benchmarks/netns.py``: nothing leaves the machine). For
each rate (``-Q 20000`` and saturation) and each tracer it reports:

- qps and its ratio to the no-tracer median at the same rate;
- events captured: packets in tcpdump's file / messages in the dnstrail capture, and per
  completed dnsperf query (dnstrail sees 4 per query: dnsperf send and recv, unbound recv and
  send; tcpdump sees 2 packets on lo);
- events lost: tcpdump's "dropped by kernel", the manifest's lost counters;
- for dnstrail, ``vs_kernel``: captured (bench namespace) + counted-lost minus the UDP
  datagrams the namespace's kernel counters (``/proc/net/snmp``) saw sent and received over
  the run; 0 means every message is a row or counted, checked against the kernel rather than
  against dnsperf's own count of completed queries;
- tracer CPU (user+sys seconds) during the traffic window and over its whole life, and peak RSS
  of the tracer process (VmHWM; the wait4 figure with children is kept in the JSON).

``kernel.bpf_stats_enabled`` is turned off for the run and restored afterwards: while it is
on, every run of every BPF program reads the clock twice (in this VM a paravirtual clock read,
~5 % of all CPU at saturation), a cost tcpdump does not pay.

Usage (root)::

    .venv/bin/python benchmarks/capture_bench.py --duration 10 --reps 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from netns import UnboundNetns, write_query_file

REPO = Path(__file__).resolve().parents[1]
DNSTRAIL = REPO / ".venv" / "bin" / "dnstrail"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


@dataclass
class Run:
    rate: str
    tracer: str
    rep: int
    qps: float = 0.0
    sent: int = 0
    completed: int = 0
    lost_queries: int = 0
    events: int | None = None
    events_per_query: float | None = None
    accounted_share: float | None = None
    # UDP datagrams sent + received in the bench namespace over the run (its /proc/net/snmp):
    # the kernel's own count of the messages a tracer should see, independent of dnsperf's
    udp_datagrams: int | None = None
    # dnstrail: captured (bench namespace) + counted-lost - udp_datagrams; 0 = exact
    vs_kernel: int | None = None
    events_other: int | None = None  # dnstrail: messages from outside the bench namespace
    lost_events: int | None = None
    lost_detail: dict[str, int] = field(default_factory=dict)
    cpu_window_s: float | None = None
    cpu_total_s: float | None = None
    peak_rss_mb: float | None = None  # the tracer process itself (VmHWM, reset at exec)
    # wait4's ru_maxrss: the largest of the tracer and its children, but it also keeps the
    # high-water mark of the forked benchmark process before exec, so it is an upper bound.
    rss_incl_children_mb: float | None = None
    startup_s: float | None = None
    error: str | None = None


def _cpu_seconds(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = stat.rsplit(")", 1)[-1].split()
    return (int(f[11]) + int(f[12])) / CLK_TCK


class _StderrReader:
    """Collect a child's stderr in a thread; wait for a line matching a pattern."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._t = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._t.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            with self._cond:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<eof>")
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> bool:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if any(rx.search(ln) for ln in self.lines):
                    return True
                if "<eof>" in self.lines:
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)

    def text(self) -> str:
        self._t.join(10)
        return "\n".join(ln for ln in self.lines if ln != "<eof>")


def _bench_rows(capture: Path, netns: int) -> int:
    """Messages from the benchmark's namespace (the node has other DNS traffic, other labs
    may run dnsperf and unbound too)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    n = 0
    for f in sorted(capture.glob("messages-*.parquet")):
        col = pq.read_table(f, columns=["netns"]).column("netns")
        n += int(pc.sum(pc.equal(col, pa.scalar(netns, pa.uint32()))).as_py() or 0)
    return n


def _dnsperf(ns: UnboundNetns, qfile: Path, duration: float, rate: int | None) -> dict[str, Any]:
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", "53", "-d", str(qfile), "-l", str(duration),
            "-t", "2"]
    if rate:
        argv += ["-Q", str(rate)]
    out = subprocess.run(ns.exec_argv(argv), check=False, capture_output=True, text=True,
                         timeout=duration + 30).stdout

    def num(label: str) -> float:
        m = re.search(rf"{label}:\s+([\d.]+)", out)
        if not m:
            raise RuntimeError(f"dnsperf output has no {label!r}:\n{out[-800:]}")
        return float(m.group(1))

    return {"qps": num("Queries per second"), "sent": int(num("Queries sent")),
            "completed": int(num("Queries completed")), "lost": int(num("Queries lost"))}


def _udp_datagrams(ns: UnboundNetns) -> int | None:
    """InDatagrams + OutDatagrams of the namespace's UDP counters (/proc/net/snmp)."""
    out = subprocess.run(ns.exec_argv(["cat", "/proc/net/snmp"]), check=False,
                         capture_output=True, text=True, timeout=10).stdout
    rows = [line.split() for line in out.splitlines() if line.startswith("Udp:")]
    if len(rows) < 2:
        return None
    counters = dict(zip(rows[0][1:], rows[1][1:], strict=False))
    try:
        return int(counters["InDatagrams"]) + int(counters["OutDatagrams"])
    except (KeyError, ValueError):
        return None


def _since(before: int | None, after: int | None) -> int | None:
    return after - before if before is not None and after is not None else None


def _vm_hwm_kb(pid: int) -> int | None:
    """Peak RSS of this one process so far (VmHWM), without its children."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _finish_tracer(proc: subprocess.Popen[bytes], sig: int,
                   timeout: float = 60) -> tuple[int, Any, int | None]:
    """Signal the tracer, reap it; exit code, rusage (incl. children), own VmHWM in kB."""
    hwm = _vm_hwm_kb(proc.pid)
    proc.send_signal(sig)
    deadline = time.monotonic() + timeout
    while True:
        # VmHWM disappears when the process becomes a zombie: keep the last value read.
        hwm = _vm_hwm_kb(proc.pid) or hwm
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, ru, hwm
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, ru = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, ru, hwm
        time.sleep(0.02)


TRACERS = ("none", "tcpdump", "dnstrail", "dnstrail-normal", "dnstrail-low", "dnstrail-idle",
           "dnstrail-budgetN")


def run_order(tracers: list[str], turn: int) -> list[str]:
    """The configurations of repetition number ``turn`` (counted over all rates): the list
    rotated by ``turn``, so that over len(tracers) repetitions each one runs once in each
    position, and no configuration runs twice in a row (with three or more). Reversing every
    other repetition, as this script did before 2026-11-27 08:35 UTC, made the last
    configuration of the list run twice in a row in every reversed repetition; a dnstrail run
    right after another dnstrail run measured ~5 % slower than one right after tcpdump
    (docs/benchmarks.md). Two configurations keep their order (a rotation would repeat one)."""
    n = len(tracers)
    if n <= 2:
        return list(tracers)
    k = turn % n
    return list(tracers[k:]) + list(tracers[:k])


def tracer_args(tracer: str) -> list[str] | None:
    """dnstrail record's extra arguments for a tracer name; None when it is not one."""
    if tracer == "dnstrail":
        return []
    kind = tracer.removeprefix("dnstrail-")
    if kind in ("normal", "low", "idle"):
        return ["--priority", kind]
    if kind == "nospool":  # the old path: parse every poll (auto: nice 19 + CPU cap)
        return ["--no-spool"]
    if kind.startswith("nospool-") and kind[8:] in ("normal", "low", "idle"):
        return ["--no-spool", "--priority", kind[8:]]
    if kind.startswith("budget") and re.fullmatch(r"\d+(\.\d+)?", kind[6:]):
        return ["--cpu-budget", kind[6:]]
    return None


def run_one(ns: UnboundNetns, qfile: Path, tracer: str, rate: int | None, rep: int,
            duration: float, work: Path, record_args: list[str]) -> Run:
    r = Run(rate=str(rate) if rate else "max", tracer=tracer, rep=rep)
    proc: subprocess.Popen[bytes] | None = None
    reader: _StderrReader | None = None
    out = work / f"{tracer}-{r.rate}-{rep}"
    t_start = time.monotonic()
    if tracer == "tcpdump":
        proc = subprocess.Popen(
            ns.exec_argv(["tcpdump", "-i", "lo", "-n", "-s", "0", "-w", str(out) + ".pcap",
                          "udp", "port", "53"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        reader = _StderrReader(proc)
        if not reader.wait_for(r"listening on", 20):
            r.error = "tcpdump did not start: " + reader.text()[-300:]
    elif tracer.startswith("dnstrail"):
        prio = tracer_args(tracer) or []
        proc = subprocess.Popen(
            [str(DNSTRAIL), "record", "-o", str(out), "--duration", f"{int(duration + 120)}s",
             *prio, *record_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        reader = _StderrReader(proc)
        if not reader.wait_for(r"Tracing DNS", 120):
            r.error = "dnstrail record did not start: " + reader.text()[-500:]
    r.startup_s = round(time.monotonic() - t_start, 2) if proc else None
    if r.error:
        if proc is not None and proc.poll() is None:
            _finish_tracer(proc, signal.SIGKILL, timeout=10)
        return r
    cpu0 = _cpu_seconds(proc.pid) if proc else None
    udp0 = _udp_datagrams(ns)
    try:
        perf = _dnsperf(ns, qfile, duration, rate)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        r.error = str(exc)[:300]
        perf = None
    cpu1 = _cpu_seconds(proc.pid) if proc else None
    if perf:
        r.qps, r.sent, r.completed, r.lost_queries = (perf["qps"], perf["sent"],
                                                      perf["completed"], perf["lost"])
    if proc is None:
        r.udp_datagrams = _since(udp0, _udp_datagrams(ns))
        return r
    if cpu0 is not None and cpu1 is not None:
        r.cpu_window_s = round(cpu1 - cpu0, 2)
    time.sleep(1.5)  # let the tracer drain what is in flight (tcpdump retires blocks late)
    code, ru, hwm = _finish_tracer(proc, signal.SIGINT)
    r.udp_datagrams = _since(udp0, _udp_datagrams(ns))
    r.cpu_total_s = round(ru.ru_utime + ru.ru_stime, 2)
    r.rss_incl_children_mb = round(ru.ru_maxrss / 1024, 1)
    r.peak_rss_mb = round(hwm / 1024, 1) if hwm else None
    assert reader is not None
    err = reader.text()
    if tracer == "tcpdump":
        m = re.search(r"(\d+) packets captured", err)
        d = re.search(r"(\d+) packets dropped by kernel", err)
        r.events = int(m.group(1)) if m else None
        r.lost_events = int(d.group(1)) if d else None
        r.lost_detail = {"dropped_by_kernel": r.lost_events or 0}
        Path(str(out) + ".pcap").unlink(missing_ok=True)
    else:
        try:
            manifest = json.loads((out / "manifest.json").read_text())
            r.events = int(manifest["counts"]["messages"])
            r.events_other = r.events - _bench_rows(out, ns.inode)
            r.lost_detail = {k: int(v) for k, v in manifest["lost"].items()}
            r.lost_events = sum(r.lost_detail.values())
            if manifest.get("status") != "complete":
                r.error = f"capture status {manifest.get('status')}: {manifest.get('error')}"
        except (OSError, ValueError, KeyError) as exc:
            r.error = f"exit {code}, no readable manifest ({exc}): {err[-300:]}"
        shutil.rmtree(out, ignore_errors=True)
    if r.events is not None and r.completed:
        r.events_per_query = round((r.events - (r.events_other or 0)) / r.completed, 3)
        if tracer.startswith("dnstrail") and r.lost_events is not None:
            # Each completed query is 4 events; captured + counted-lost should cover them
            # (lost counters are node-wide, so this can exceed 1 with other traffic).
            counted = r.events - (r.events_other or 0) + r.lost_events
            r.accounted_share = round(counted / (4 * r.completed), 4)
            if r.udp_datagrams is not None:
                r.vs_kernel = counted - r.udp_datagrams
    return r


def summarize(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for rate in dict.fromkeys(r.rate for r in runs):
        base = [r.qps for r in runs if r.rate == rate and r.tracer == "none" and not r.error]
        base_qps = statistics.median(base) if base else None
        for tracer in dict.fromkeys(r.tracer for r in runs):
            rs = [r for r in runs if r.rate == rate and r.tracer == tracer and not r.error]
            if not rs:
                errs = [r.error for r in runs if r.rate == rate and r.tracer == tracer]
                rows.append({"rate": rate, "tracer": tracer, "error": errs[0] if errs else None})
                continue

            def med(attr: str, rs: list[Run] = rs) -> float | None:
                vals = [getattr(r, attr) for r in rs if getattr(r, attr) is not None]
                return statistics.median(vals) if vals else None

            qps = med("qps")
            rows.append({
                "rate": rate, "tracer": tracer, "runs": len(rs), "qps": qps,
                "qps_ratio": round(qps / base_qps, 3) if qps and base_qps else None,
                "qps_ratio_min": round(min(r.qps for r in rs) / base_qps, 3) if base_qps else None,
                "events": med("events"), "events_per_query": med("events_per_query"),
                "lost_events_max": max((r.lost_events for r in rs
                                        if r.lost_events is not None), default=None),
                "cpu_window_s": med("cpu_window_s"), "cpu_total_s": med("cpu_total_s"),
                "peak_rss_mb": max((r.peak_rss_mb for r in rs if r.peak_rss_mb), default=None),
                "rss_incl_children_mb": max((r.rss_incl_children_mb for r in rs
                                             if r.rss_incl_children_mb), default=None),
                "startup_s": med("startup_s"),
                # the largest |captured + counted - kernel datagrams| over the runs
                "vs_kernel_max": max((r.vs_kernel for r in rs if r.vs_kernel is not None),
                                     key=abs, default=None),
            })
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def markdown(rows: list[dict[str, Any]], duration: float) -> str:
    cols = ["rate", "tracer", "runs", "qps", "qps_ratio", "qps_ratio_min", "events",
            "events_per_query", "lost_events_max", "cpu_window_s", "cpu_total_s",
            "peak_rss_mb", "vs_kernel_max"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        if row.get("error"):
            out.append(f"| {row['rate']} | {row['tracer']} | error: {row['error']} |")
            continue
        out.append("| " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    out.append(f"\n(dnsperf -l {duration:g}; medians over runs, lost_events and peak_rss_mb "
               "the worst run; cpu_window_s is the tracer's user+sys during the dnsperf run, "
               "cpu_total_s over its life; peak_rss_mb is the tracer process's VmHWM; "
               "vs_kernel_max: captured + counted - the namespace's UDP datagrams, 0 = exact)")
    return "\n".join(out)


class BpfStatsOff:
    """Turn kernel.bpf_stats_enabled off for the with-block and restore it afterwards.
    ``was``: the value found ("0", "1", or None where the sysctl is absent)."""

    def __init__(self, path: Path = BPF_STATS) -> None:
        self.path = path
        self.was: str | None = None

    def __enter__(self) -> Self:
        try:
            self.was = self.path.read_text().strip()
        except OSError:
            return self
        if self.was != "0":
            self.path.write_text("0\n")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.was not in (None, "0"):
            self.path.write_text(f"{self.was}\n")


def spool_capacity(passes: int = 5, ring_mb: int = 32, payload: int = 45,
                   work: Path | None = None) -> dict[str, float]:
    """What the recorder's two stages can take on this machine, without a workload: the
    compiled drain (ring -> spool file on disk) and the converter (spool -> Parquet), in
    messages per second of one CPU, medians of ``passes``. The ring is a memfd laid out as the
    kernel lays out a BPF ring buffer, full of message records with a dnsperf-sized payload
    (the 512-byte slot the BPF program reserves for it). The live runs above cannot show rates
    like these: dnsperf and unbound on this machine top out below 0.6M messages/s."""
    import numpy as np

    from capture import probe as P
    from capture import spool

    page = os.sysconf("SC_PAGE_SIZE")
    size = ring_mb << 20
    slot = 512
    stride = (P._MSG_DTYPE.itemsize + slot + 8 + 7) & ~7
    n = size // stride - 1
    rec = np.zeros((), P._MSG_DTYPE)
    rec["kind"], rec["syscall"], rec["family"], rec["protocol"] = 1, 1, 2, 17
    rec["cgroup_id"], rec["cap_len"], rec["orig_len"] = 7, payload, payload
    rec["comm"] = b"dnsperf".ljust(16, b"\0")
    one = (np.uint32(P._MSG_DTYPE.itemsize + slot).tobytes() + b"\0" * 4 + rec.tobytes()
           + bytes(range(payload)) + b"\0" * (stride - 8 - P._MSG_DTYPE.itemsize - payload))
    body = one * n
    where = Path(tempfile.mkdtemp(prefix="dnstrail-spoolcap-", dir=str(work or "/var/tmp")))
    drain, convert = [], []
    try:
        for i in range(passes):
            fd = os.memfd_create("dnstrail-capacity")
            os.ftruncate(fd, 2 * page + size)
            os.pwrite(fd, body, 2 * page)
            os.pwrite(fd, (0).to_bytes(8, "little"), 0)
            os.pwrite(fd, len(body).to_bytes(8, "little"), page)
            probe = P.Probe(P.ProbeConfig(snaplen=1232))
            probe._maps = {"events": fd}
            probe._map_ring(size)
            seg = where / f"spool-{i + 1:06d}.spool"
            out = os.open(seg, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.write(out, spool.SpoolHeader(P._MSG_DTYPE.itemsize, 1232, 0, 0).pack())
            sink = spool.SpoolSink(probe, 1232, P._MSG_DTYPE.itemsize)
            sink.fd = out
            t0 = time.process_time()
            sink.drain()
            drain.append(sink.messages / max(time.process_time() - t0, 1e-9))
            os.close(out)
            probe.close()  # closes the ring's fd too
            t0 = time.process_time()
            rows = spool.convert_segment(seg, where / f"messages-{i:06d}.parquet")
            convert.append(rows / max(time.process_time() - t0, 1e-9))
            assert rows == n, (rows, n)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    return {"messages": n, "drain_msgs_per_cpu_s": statistics.median(drain),
            "convert_msgs_per_cpu_s": statistics.median(convert)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of dnsperf per run")
    ap.add_argument("--reps", type=int, default=2, help="runs of each configuration")
    ap.add_argument("--rates", default="20000,max",
                    help="comma list of dnsperf -Q rates; 'max' for saturation")
    ap.add_argument("--tracers", default="none,tcpdump,dnstrail,dnstrail-normal",
                    help=f"comma list of {', '.join(TRACERS)} (dnstrail-X: "
                    "record --priority X; dnstrail-budgetN: record --cpu-budget N)")
    ap.add_argument("--record-arg", action="append", default=[],
                    help="extra argument for dnstrail record (repeatable)")
    ap.add_argument("--warmup", type=float, default=3.0,
                    help="seconds of untimed dnsperf at saturation before the first run (the "
                    "first run of a fresh unbound was up to 25 %% slower than the next)")
    ap.add_argument("--json", type=Path, help="write all runs and the summary here")
    ap.add_argument("--no-capacity", action="store_true",
                    help="skip the spool's capacity measurement (spool_capacity) at the end")
    args = ap.parse_args(argv)
    if not 1 <= args.duration <= 120 or not 1 <= args.reps <= 10:
        ap.error("--duration must be 1..120 and --reps 1..10")
    rates = [None if x == "max" else int(x) for x in args.rates.split(",")]
    tracers = args.tracers.split(",")
    bad = [t for t in tracers if t not in ("none", "tcpdump") and tracer_args(t) is None]
    if bad:
        ap.error(f"unknown tracer {bad[0]!r}: one of {', '.join(TRACERS)}")
    if any(t.startswith("dnstrail") for t in tracers) and not DNSTRAIL.exists():
        ap.error(f"{DNSTRAIL} not found")
    runs: list[Run] = []
    work = Path(tempfile.mkdtemp(prefix="dnstrail-capbench-", dir="/var/tmp"))
    stats = BpfStatsOff()
    try:
        with stats, UnboundNetns() as ns:
            if stats.was not in (None, "0"):
                print("kernel.bpf_stats_enabled was on: off for this run, restored after",
                      flush=True)
            qfile = work / "queries.txt"
            write_query_file(qfile)
            if args.warmup > 0:
                _dnsperf(ns, qfile, args.warmup, None)
            turn = 0
            for rate in rates:
                for rep in range(args.reps):
                    order = run_order(tracers, turn)
                    turn += 1
                    for tracer in order:
                        r = run_one(ns, qfile, tracer, rate, rep, args.duration, work,
                                    args.record_arg)
                        runs.append(r)
                        print(f"{r.rate:>6} {r.tracer:13} rep {rep}: qps {r.qps:,.0f} "
                              f"events {r.events} lost {r.lost_events} "
                              f"cpu {r.cpu_window_s} rss {r.peak_rss_mb} MB"
                              + (f" ERROR {r.error}" if r.error else ""), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = summarize(runs)
    print()
    print(markdown(rows, args.duration))
    capacity = None
    if not args.no_capacity:
        capacity = spool_capacity()
        print(f"\nspool capacity (no workload, one CPU, {capacity['messages']:,} messages a "
              f"pass): drain {capacity['drain_msgs_per_cpu_s'] / 1e6:.1f}M messages/s, "
              f"converter {capacity['convert_msgs_per_cpu_s'] / 1e6:.2f}M messages/s")
    if args.json:
        args.json.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpus": os.cpu_count(), "duration": args.duration,
            "bpf_stats_enabled_before": stats.was,
            "runs": [asdict(r) for r in runs], "summary": rows,
            "spool_capacity": capacity}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
