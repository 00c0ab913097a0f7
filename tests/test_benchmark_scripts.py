"""The benchmark scripts run, and what the generator writes is what the analyzer reads.

These run the scripts at tiny sizes; they time nothing (the benchmarks are not tests).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from analyze import load
from capture.schema import MANIFEST_KEYS, read_manifest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
N = 2000


def _gen(tmp: Path, *extra: str) -> tuple[Path, Path, dict]:
    cap, pcap = tmp / "cap", tmp / "cap.pcap"
    out = subprocess.run(
        [sys.executable, str(BENCH / "gen_capture.py"), "-o", str(cap), "--messages", str(N),
         "--pcap", str(pcap), "--expected", str(tmp / "exp.json"), *extra],
        check=True, capture_output=True, text=True, timeout=120,
    )
    expected = json.loads((tmp / "exp.json").read_text())
    assert json.loads(out.stdout) == expected
    return cap, pcap, expected


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    return _gen(tmp_path_factory.mktemp("gen"))


def test_generated_capture_is_complete_and_loads_with_expected_counts(generated) -> None:
    cap, _, exp = generated
    manifest = read_manifest(cap)
    assert set(manifest) == set(MANIFEST_KEYS)
    assert manifest["status"] == "complete"
    assert manifest["counts"]["messages"] == exp["messages"] >= N
    c = load(cap)  # verifies every file's sha256
    m = c.messages
    assert len(m) == exp["messages"]
    assert (m["qr"] == False).sum() == exp["queries"]
    assert (m["rcode_name"] == "NXDOMAIN").sum() == exp["nxdomain_responses"]
    assert m["error"].isna().all()
    # about 10 % NXDOMAIN, a few percent tunnel-like names
    assert 0.04 < exp["nxdomain_responses"] / exp["responses"] < 0.2
    tunnel = m[m["qname"].str.endswith(exp["tunnel_domain"])]
    assert (tunnel["qr"] == False).sum() == exp["tunnel_queries"] > 0
    t = c.transactions
    assert (t["status"] == "answered").sum() == exp["answered_transactions"]
    assert (t["status"] == "timeout").sum() == exp["unanswered_queries"] > 0
    assert len(c.connects) == exp["connects"]
    # every pod process is attributed to its pod through the cgroup path (both layouts)
    pods = m[m["cgroup_path"].str.startswith("/kubepods", na=False)]
    assert len(pods) > 0.8 * len(m)
    assert pods["pod"].notna().all()
    assert m["namespace"].nunique() >= 5


def test_generated_pcap_holds_the_same_messages(generated) -> None:
    _, pcap, exp = generated
    c = load(pcap)
    m = c.messages
    assert len(m) == exp["messages"]
    assert (m["rcode_name"] == "NXDOMAIN").sum() == exp["nxdomain_responses"]
    if shutil.which("tshark"):
        out = subprocess.run(["tshark", "-n", "-r", str(pcap), "-T", "fields", "-e",
                              "dns.flags.rcode"], check=True, capture_output=True, text=True,
                             timeout=120).stdout.splitlines()
        assert len(out) == exp["messages"]
        assert out.count("3") == exp["nxdomain_responses"]


def test_generating_in_slices_gives_the_same_messages(generated, tmp_path: Path) -> None:
    """The generator holds --chunk messages and writes the earlier ones as it goes (bounded
    memory at 50M): the same messages, connects and pcap packets in the same order as one
    slice gives."""
    import pyarrow.parquet as pq

    cap, pcap, expected = generated
    cap2, pcap2, expected2 = _gen(tmp_path, "--chunk", "150")
    assert {**expected2, "seconds": 0} == {**expected, "seconds": 0}

    def rows(d: Path, kind: str) -> list[tuple]:
        t = pq.read_table(sorted(d.glob(f"{kind}-*.parquet")))
        ts = t.column("ts").cast("int64").to_pylist()
        cols = [c for c in t.column_names if c not in ("ts", "mono_ns")]
        # the start is the clock's second at generation: compare times relative to it
        return [(v - ts[0], *r) for v, r in zip(ts, zip(*(t.column(c).to_pylist()
                                                          for c in cols)))]

    for kind in ("messages", "connects"):
        a, b = rows(cap, kind), rows(cap2, kind)
        assert len(a) == len(b) > 100 and a == b, kind
    assert pcap.stat().st_size == pcap2.stat().st_size


def test_all_unique_gives_a_distinct_name_per_transaction(tmp_path: Path) -> None:
    cap, _, exp = _gen(tmp_path, "--all-unique")
    c = load(cap)
    queries = c.messages[c.messages["qr"] == False]
    assert exp["distinct_qnames"] == queries["qname"].nunique() == exp["lookups"]
    assert (c.messages["rcode_name"] == "NXDOMAIN").sum() == exp["nxdomain_responses"]


def test_analyze_bench_runs_and_reports(tmp_path: Path) -> None:
    tools = "analyzer,report_cold,report_warm" + (",tshark" if shutil.which("tshark") else "")
    out = tmp_path / "r.json"
    subprocess.run(
        [sys.executable, str(BENCH / "analyze_bench.py"), "--messages", "1500", "--reps", "1",
         "--cases", "normal", "--tools", tools, "--workdir", str(tmp_path / "w"), "--lookups",
         "--json", str(out)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    res = json.loads(out.read_text())
    case = res["cases"]["normal"]
    run = case["runs"]["analyzer"][0]
    assert run["exit"] == 0
    assert run["child"]["messages"] == case["expected"]["messages"]
    assert run["child"]["nxdomain"] == case["expected"]["nxdomain_responses"]
    assert run["peak_rss_mb"] > 0 and run["wall_s"] > 0
    for tool in ("report_cold", "report_warm"):
        assert case["runs"][tool][0]["exit"] == 0, case["runs"][tool][0]["stderr"]
    report = json.loads((tmp_path / "w" / "report.json").read_text())
    assert report["summary"]["messages"] == case["expected"]["messages"]
    if "tshark" in tools:
        assert case["runs"]["tshark"][0]["exit"] == 0
        assert case["summary"]["speedup_vs_tshark"] > 0
        assert case["summary"]["report_warm_vs_tshark"] > 0


@pytest.mark.lab
def test_capture_bench_baseline_and_tcpdump(tmp_path: Path) -> None:
    missing = [t for t in ("dnsperf", "unbound", "tcpdump", "ip", "dig") if not shutil.which(t)]
    if os.geteuid() != 0 or missing:
        pytest.skip(f"needs root and {', '.join(missing) or 'network namespaces'}")
    out = tmp_path / "c.json"
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    before = stats.read_text()
    stats.write_text("1\n")  # the benchmark must turn it off for the run and back on after
    try:
        subprocess.run(
            [sys.executable, str(BENCH / "capture_bench.py"), "--duration", "1", "--reps", "1",
             "--rates", "2000", "--tracers", "none,tcpdump", "--json", str(out)],
            check=True, capture_output=True, text=True, timeout=180,
        )
        after = stats.read_text().strip()
    finally:
        stats.write_text(before)
    res = json.loads(out.read_text())
    assert res["bpf_stats_enabled_before"] == "1" and after == "1"
    runs = {r["tracer"]: r for r in res["runs"]}
    assert runs["none"]["error"] is None and runs["none"]["completed"] > 500
    # the namespace's kernel counters: each completed query is a datagram each way, sent
    # and received (in-flight ones at the end can add a few)
    for r in runs.values():
        assert r["udp_datagrams"] >= 4 * r["completed"], r
    td = runs["tcpdump"]
    assert td["error"] is None
    # tcpdump on lo sees each query and its response once
    assert td["events"] >= 2 * td["completed"] - 10
    assert td["lost_events"] == 0
    # the spool's stages on a synthetic ring: every record drained and converted (asserted
    # inside), and rates that are numbers
    cap = res["spool_capacity"]
    assert cap["messages"] > 50_000
    assert cap["drain_msgs_per_cpu_s"] > 0 and cap["convert_msgs_per_cpu_s"] > 0


def test_bpf_stats_off_restores(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    from capture_bench import BpfStatsOff

    knob = tmp_path / "bpf_stats_enabled"
    knob.write_text("1\n")
    with BpfStatsOff(knob) as s:
        assert knob.read_text() == "0\n" and s.was == "1"
    assert knob.read_text() == "1\n"
    knob.write_text("0\n")
    with BpfStatsOff(knob) as s:
        assert knob.read_text() == "0\n"
    assert knob.read_text() == "0\n" and s.was == "0"
    with BpfStatsOff(tmp_path / "absent") as s:
        assert s.was is None


def test_capture_bench_tracer_names() -> None:
    sys.path.insert(0, str(BENCH))
    from capture_bench import tracer_args

    assert tracer_args("dnstrail") == []
    assert tracer_args("dnstrail-idle") == ["--priority", "idle"]
    assert tracer_args("dnstrail-budget2") == ["--cpu-budget", "2"]
    assert tracer_args("dnstrail-budget0.5") == ["--cpu-budget", "0.5"]
    assert tracer_args("dnstrail-nospool") == ["--no-spool"]
    assert tracer_args("dnstrail-nospool-normal") == ["--no-spool", "--priority", "normal"]
    for bad in ("dnstrail-budget", "dnstrail-budgetx", "dnstrail-fast", "tcpdump", "none"):
        assert tracer_args(bad) is None


def test_capture_bench_run_order_is_balanced_and_never_repeats() -> None:
    """Over all repetitions no configuration runs twice in a row (a dnstrail run right after
    another measured slower), and with three or more each one takes each position once per
    len(tracers) repetitions."""
    from itertools import pairwise

    from benchmarks.capture_bench import run_order

    for n in range(1, 6):
        tracers = [f"t{i}" for i in range(n)]
        seq = [t for turn in range(4 * n) for t in run_order(tracers, turn)]
        assert len(seq) == 4 * n * n
        if n >= 2:
            assert all(a != b for a, b in pairwise(seq)), (n, seq)
        for turn in range(4 * n):
            assert sorted(run_order(tracers, turn)) == tracers
        if n >= 3:
            for pos in range(n):
                assert sorted(run_order(tracers, turn)[pos] for turn in range(n)) == tracers
