"""Soak: `dnstrail record` for minutes at a steady rate, then `dnstrail report` on the result.

dnsperf (one thread, ``-Q RATE``) against the private unbound of ``benchmarks/netns.py`` for
``--minutes``, with the recorder running with its defaults and ``--rotate`` (default 60 s).
Every ``--sample`` seconds it reads the recorder's VmRSS and its converter's, the capture's
files and the lost counters. At the end: messages kept against the namespace's kernel UDP
datagram counters, files by kind (rotation), RSS first/last/max (flat or not), then the full
``dnstrail report --format json`` on the capture (wall time and peak RSS, as a user runs it).

Usage (root)::

    .venv/bin/python benchmarks/soak_bench.py --minutes 10 --rate 20000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from capture_bench import DNSTRAIL, _bench_rows, _StderrReader, _udp_datagrams
from netns import UnboundNetns, write_query_file


def _rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return out


def _manifest(out: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((out / "manifest.json").read_text()))
    except (OSError, ValueError):
        return {}


def soak(minutes: float, rate: int, sample: float, rotate: str, work: Path) -> dict[str, Any]:
    out = work / "cap"
    qfile = work / "queries.txt"
    write_query_file(qfile)
    samples: list[dict[str, Any]] = []
    with UnboundNetns() as ns:
        proc = subprocess.Popen([str(DNSTRAIL), "record", "-o", str(out), "--rotate", rotate],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        reader = _StderrReader(proc)
        if not reader.wait_for(r"Tracing DNS", 120):
            proc.kill()
            raise RuntimeError("dnstrail record did not start: " + reader.text()[-500:])
        udp0 = _udp_datagrams(ns)
        seconds = int(minutes * 60)
        perf = subprocess.Popen(
            ns.exec_argv(["dnsperf", "-s", "127.0.0.1", "-d", str(qfile), "-l", str(seconds),
                          "-Q", str(rate), "-c", "1", "-T", "1"]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        t0 = time.monotonic()
        while perf.poll() is None:
            time.sleep(sample)
            m = _manifest(out)
            kids = _children(proc.pid)
            samples.append({
                "t": round(time.monotonic() - t0, 1),
                "recorder_rss_mb": round((_rss_kb(proc.pid) or 0) / 1024, 1),
                "converter_rss_mb": round(sum(_rss_kb(k) or 0 for k in kids) / 1024, 1),
                "files": {k: sum(1 for f in m.get("files", []) if f.get("kind") == k)
                          for k in ("messages", "spool", "connects", "execs")},
                "spool_on_disk": len(list(out.glob("spool-*.spool"))),
                "lost": sum(int(v) for v in (m.get("lost") or {}).values()),
            })
        text = perf.stdout.read() if perf.stdout else ""
        completed = re.search(r"Queries completed:\s+(\d+)", text)
        time.sleep(1.5)
        t_stop = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=600)
        stop_s = time.monotonic() - t_stop
        udp = _udp_datagrams(ns)
        m = _manifest(out)
        bench_rows = _bench_rows(out, ns.inode)
    lost = sum(int(v) for v in (m.get("lost") or {}).values())
    result: dict[str, Any] = {
        "minutes": minutes, "rate": rate, "completed": int(completed.group(1)) if completed else None,
        "status": m.get("status"), "messages": (m.get("counts") or {}).get("messages"),
        "bench_rows": bench_rows, "lost": lost,
        "udp_datagrams": (udp - udp0) if udp is not None and udp0 is not None else None,
        "files": {k: sum(1 for f in m.get("files", []) if f.get("kind") == k)
                  for k in ("messages", "spool", "connects", "execs")},
        "stop_s": round(stop_s, 1), "samples": samples,
    }
    if result["udp_datagrams"] is not None:
        result["vs_kernel"] = bench_rows + lost - result["udp_datagrams"]
    rss = [s["recorder_rss_mb"] for s in samples if s["recorder_rss_mb"]]
    if rss:
        result["recorder_rss_mb"] = {"first": rss[0], "last": rss[-1], "max": max(rss),
                                     "median_last_half": sorted(rss[len(rss) // 2:])[
                                         len(rss[len(rss) // 2:]) // 2]}
    conv = [s["converter_rss_mb"] for s in samples]
    result["converter_rss_max_mb"] = max(conv) if conv else None
    # the analyzer on the result, as a user runs it
    report = work / "report.json"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    rep = subprocess.run([str(DNSTRAIL), "report", str(out), "--format", "json", "-o",
                          str(report), "--work-dir", str(work / "cache")],
                         check=False, capture_output=True, text=True, timeout=3600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["report"] = {"rc": rep.returncode, "wall_s": round(time.monotonic() - t, 1),
                        "cpu_s": round(after.ru_utime + after.ru_stime
                                       - before.ru_utime - before.ru_stime, 1),
                        "peak_rss_mb": round(after.ru_maxrss / 1024, 1),
                        "stderr": rep.stderr.strip().splitlines()[-1:] if rep.stderr else []}
    if rep.returncode == 0:
        summary = json.loads(report.read_text())["summary"]
        result["report"]["messages"] = summary.get("messages")
        result["report"]["transactions"] = summary.get("transactions")
        result["report"]["complete"] = (summary.get("completeness") or {}).get("complete")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=20000, help="dnsperf -Q (queries/s)")
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--rotate", default="60s", help="dnstrail record --rotate")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", action="store_true",
                    help="keep the capture and the report's work directory (printed)")
    args = ap.parse_args(argv)
    if not 0.05 <= args.minutes <= 240 or not 1 <= args.rate <= 1_000_000:
        ap.error("--minutes 0.05..240, --rate 1..1000000")
    work = Path(tempfile.mkdtemp(prefix="dnstrail-soak-", dir="/var/tmp"))
    try:
        result = soak(args.minutes, args.rate, args.sample, args.rotate, work)
    finally:
        if args.keep:
            print(f"kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    brief = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(brief, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    ok = (result["status"] == "complete" and result.get("vs_kernel") == 0
          and result["report"]["rc"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
