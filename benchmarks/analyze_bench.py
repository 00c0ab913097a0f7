"""Analyzer benchmark: ``analyze.load()`` end to end vs tshark field extraction, side by side.

For each case (``normal``: Zipf names; ``unique``: every transaction a distinct name) it
generates a capture of N messages and the same messages as a pcap (``gen_capture.py``), then
runs, alternating, each as its own process:

- ``analyzer``: ``load(DIR, work_dir=EMPTY).transactions`` (verify, ingest, match), then
  optionally ``.lookups``; the child reports its in-process phase times;
- ``report_cold``: the whole ``dnstrail report CAPTURE --format json`` with an empty work
  directory (verify, ingest, relate, findings, render), as a user runs it the first time;
- ``report_warm``: the same command again on the work directory the cold run left (the
  derived tables are reused; verification, findings and rendering run again);
- ``tshark``: ``tshark -r X.pcap -T fields -e frame.time_epoch -e ip.src -e ip.dst -e dns.id
  -e dns.flags.response -e dns.qry.name -e dns.qry.type -e dns.flags.rcode -e dns.a
  -e dns.aaaa`` to /dev/null.

Wall time is the whole process (start-up and imports included); CPU and peak RSS come from the
kernel's accounting of the finished child (``wait4``). The speed-up is tshark wall / analyzer
wall. This is a benchmark, not a test: it asserts nothing.

Usage::

    .venv/bin/python benchmarks/analyze_bench.py --messages 1000000 --reps 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Import the analyzer of this checkout whatever the installed state of the venv is.
sys.path.insert(0, str(REPO))
TSHARK_FIELDS = ("frame.time_epoch", "ip.src", "ip.dst", "dns.id", "dns.flags.response",
                 "dns.qry.name", "dns.qry.type", "dns.flags.rcode", "dns.a", "dns.aaaa")


def tshark_argv(pcap: Path) -> list[str]:
    argv = ["tshark", "-n", "-r", str(pcap), "-T", "fields"]
    for f in TSHARK_FIELDS:
        argv += ["-e", f]
    return argv


def report_argv(cap: Path, work_dir: Path) -> list[str]:
    """The user's command: ``dnstrail report CAP --format json -o report.json``."""
    return [sys.executable, "-c", ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
            "from dnstrail.cli import main; main()"), str(REPO), "report", str(cap),
            "--format", "json", "-o", str(work_dir.parent / "report.json"),
            "--work-dir", str(work_dir)]


#: A run longer than this is killed (and reported with its exit -9): ``--timeout``.
TIMEOUT_S = 3600.0


def measure(argv: list[str], stdout: Any = subprocess.DEVNULL,
            timeout: float | None = None) -> dict[str, Any]:
    """Run argv; wall seconds, user+sys CPU and peak RSS of the finished child."""
    timeout = TIMEOUT_S if timeout is None else timeout
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE)
    deadline = t0 + timeout
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, ru = os.wait4(proc.pid, 0)
            break
        time.sleep(0.01)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    result = {"wall_s": round(wall, 3), "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
              "peak_rss_mb": round(ru.ru_maxrss / 1024, 1), "exit": proc.returncode,
              "stderr": err[-400:] if proc.returncode else ""}
    if proc.stdout is not None:
        lines = proc.stdout.read().decode(errors="replace").strip().splitlines()
        if lines and proc.returncode == 0:
            result["child"] = json.loads(lines[-1])
    return result


def child(directory: str, lookups: bool) -> int:
    """Run inside the measured process: load the capture, print phase times as JSON."""
    t0, c0 = time.monotonic(), time.process_time()
    import shutil
    import tempfile

    from analyze import load

    work = tempfile.mkdtemp(prefix="dnstrail-bench-work-")  # cold: nothing derived yet
    t1, c1 = time.monotonic(), time.process_time()
    cap = load(directory, work_dir=work)
    n_tx = len(cap.transactions)
    t2, c2 = time.monotonic(), time.process_time()
    out: dict[str, Any] = {
        "import_s": round(t1 - t0, 3), "load_s": round(t2 - t1, 3),
        "import_cpu_s": round(c1 - c0, 3), "load_cpu_s": round(c2 - c1, 3),
        "messages": len(cap.messages), "transactions": n_tx,
        "nxdomain": int((cap.messages["rcode_name"] == "NXDOMAIN").sum()),
        "attributed_share": round(float(cap.messages["pod"].notna().mean()), 4)
        if len(cap.messages) else 0.0,
    }
    if lookups:
        t3, c3 = time.monotonic(), time.process_time()
        out["lookups"] = len(cap.lookups)
        out["lookups_s"] = round(time.monotonic() - t3, 3)
        out["lookups_cpu_s"] = round(time.process_time() - c3, 3)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))
    return 0


def generate(case: str, n: int, workdir: Path, reuse: bool) -> tuple[Path, Path, dict[str, Any]]:
    name = f"{case}-{n}"
    cap, pcap, exp = workdir / name, workdir / f"{name}.pcap", workdir / f"{name}.expected.json"
    if not (reuse and exp.exists() and cap.exists() and pcap.exists()):
        for p in (cap, pcap, exp):
            if p.is_dir():
                import shutil

                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        argv = [sys.executable, str(HERE / "gen_capture.py"), "-o", str(cap), "--messages",
                str(n), "--pcap", str(pcap), "--expected", str(exp)]
        if case == "unique":
            argv.append("--all-unique")
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return cap, pcap, json.loads(exp.read_text())


def _size_mb(path: Path) -> float:
    if path.is_dir():
        return round(sum(f.stat().st_size for f in path.iterdir()) / 2**20, 1)
    return round(path.stat().st_size / 2**20, 1)


def run(cases: list[str], n: int, reps: int, workdir: Path, reuse: bool, lookups: bool,
        tools: list[str]) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "cpus": os.cpu_count(), "messages": n, "cases": {}}
    for case in cases:
        cap, pcap, expected = generate(case, n, workdir, reuse)
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
        for rep in range(reps):
            order = tools if rep % 2 == 0 else list(reversed(tools))
            for tool in order:
                if tool in ("report_cold", "report_warm"):
                    wd = workdir / f"work-{case}-{n}"
                    if tool == "report_cold" or not wd.exists():
                        import shutil

                        shutil.rmtree(wd, ignore_errors=True)
                    if tool == "report_warm" and not wd.exists():
                        measure(report_argv(cap, wd))  # build the cache first (not counted)
                    r = measure(report_argv(cap, wd))
                elif tool == "analyzer":
                    argv = [sys.executable, str(Path(__file__).resolve()), "--child", str(cap)]
                    if lookups:
                        argv.append("--lookups")
                    r = measure(argv, stdout=subprocess.PIPE)
                else:
                    r = measure(tshark_argv(pcap))
                runs[tool].append(r)
                print(f"{case:7} {tool:8} rep {rep}: wall {r['wall_s']} s, cpu {r['cpu_s']} s, "
                      f"peak {r['peak_rss_mb']} MB" + (f" EXIT {r['exit']}: {r['stderr']}"
                                                       if r["exit"] else ""), flush=True)
        results["cases"][case] = {
            "expected": expected, "capture_mb": _size_mb(cap), "pcap_mb": _size_mb(pcap),
            "runs": runs, "summary": _summary(runs)}
    return results


def _summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    for tool, rs in runs.items():
        ok = [r for r in rs if r["exit"] == 0]
        if not ok:
            s[tool] = {"error": rs[0]["stderr"] if rs else "not run"}
            continue
        s[tool] = {k: statistics.median(r[k] for r in ok) for k in ("wall_s", "cpu_s")}
        s[tool]["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
        phases = [r.get("child") for r in ok if r.get("child")]
        if phases:
            for k in phases[0]:
                if k.endswith("_s"):
                    s[tool][k] = statistics.median(p[k] for p in phases)
    t = s.get("tshark", {})
    for tool in ("report_cold", "report_warm"):
        r = s.get(tool, {})
        if "wall_s" in r and "wall_s" in t:
            s[f"{tool}_vs_tshark"] = round(t["wall_s"] / r["wall_s"], 2)
    a = s.get("analyzer", {})
    if "wall_s" in a and "wall_s" in t:
        s["speedup_vs_tshark"] = round(t["wall_s"] / a["wall_s"], 2)
        # On a shared machine wall time depends on what else runs; both tools use one core,
        # so the ratio of CPU seconds is the steadier comparison.
        s["cpu_speedup_vs_tshark"] = round(t["cpu_s"] / a["cpu_s"], 2)
    return s


def markdown(results: dict[str, Any]) -> str:
    lines = [("| case | tool | wall s | cpu s | peak RSS MB | load() cpu s | lookups cpu s "
             "| speed-up (wall) | speed-up (cpu) |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for case, c in results["cases"].items():
        s = c["summary"]
        for tool in ("report_cold", "report_warm", "analyzer", "tshark"):
            if tool not in s:
                continue
            r = s[tool]
            if "error" in r:
                lines.append(f"| {case} | {tool} | error: {r['error'][:80]} | | | | | | |")
                continue
            sp = (s.get("speedup_vs_tshark", "-") if tool == "analyzer"
                  else s.get(f"{tool}_vs_tshark", "") if tool != "tshark" else "")
            spc = s.get("cpu_speedup_vs_tshark", "-") if tool == "analyzer" else ""
            lines.append(f"| {case} | {tool} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | "
                         f"{r['peak_rss_mb']:.0f} | {r.get('load_cpu_s', '')} | "
                         f"{r.get('lookups_cpu_s', '')} | {sp} | {spc} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--cases", default="normal,unique")
    ap.add_argument("--tools", default="report_cold,report_warm,tshark",
                    help="of report_cold, report_warm, analyzer (load() alone), tshark")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/dnstrail-bench"))
    ap.add_argument("--reuse", action="store_true", help="reuse generated inputs if present")
    ap.add_argument("--lookups", action="store_true", help="also build cap.lookups")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--timeout", type=float, default=3600.0,
                    help="seconds before a run is killed (default 3600; 50M cold needs more "
                         "than 900)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    globals()["TIMEOUT_S"] = args.timeout
    if args.child:
        return child(args.child, args.lookups)
    if not 1 <= args.reps <= 10 or not 1 <= args.messages <= 100_000_000:
        ap.error("--reps must be 1..10 and --messages 1..100,000,000")
    tools = args.tools.split(",")
    res = run(args.cases.split(","), args.messages, args.reps, args.workdir, args.reuse,
              args.lookups, tools)
    print()
    print(markdown(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
