"""The process name beside the thread name: dig's queries come from a thread named
``isc-net-0000``; the analyzer's ``process`` column names dig, and ``--comm`` matches either.

The unit tests read real /proc entries (a child with a named thread); the live test records
dig in the lab and replays it with ``--comm dig``."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from analyze.attribute import process_names
from capture import snapshot as snap

# A process named dtl-main whose second thread is named dtl-worker (PR_SET_NAME renames the
# calling thread only); it prints both ids and waits for stdin to close.
_THREADED = r"""
import ctypes, sys, threading
libc = ctypes.CDLL(None)
libc.prctl(15, b"dtl-main", 0, 0, 0)
ready = threading.Event()
def worker():
    libc.prctl(15, b"dtl-worker", 0, 0, 0)
    print(threading.get_native_id(), flush=True)
    ready.set()
    sys.stdin.read()
t = threading.Thread(target=worker, daemon=True)
t.start()
ready.wait()
sys.stdin.read()
"""

_NS = 1_000_000_000


@pytest.fixture
def threaded() -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen([sys.executable, "-c", _THREADED], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    tid = int(proc.stdout.readline())
    yield proc, tid
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=10)


def _frame(rows: list[tuple[int | None, int | None, str | None, int]]) -> pd.DataFrame:
    return pd.DataFrame({"node": "n1",
                         "tgid": pd.array([r[0] for r in rows], dtype="Int64"),
                         "tid": pd.array([r[1] for r in rows], dtype="Int64"),
                         "comm": [r[2] for r in rows],
                         "ts": [r[3] for r in rows]})


def _processes(rows: list[snap.ProcessRow]) -> pd.DataFrame:
    return snap.processes_table(rows).to_pandas().assign(node="n1")


def test_a_thread_is_named_by_its_process_from_the_proc_scan(
        threaded: tuple[subprocess.Popen[str], int]) -> None:
    proc, tid = threaded
    thread_comm = Path(f"/proc/{proc.pid}/task/{tid}/comm").read_text().strip()
    assert thread_comm == "dtl-worker"
    scan = [r for r in snap.scan_processes() if r.tgid == proc.pid]
    assert [r.comm for r in scan] == ["dtl-main"]
    now = time.time_ns()
    frame = _frame([(proc.pid, tid, thread_comm, now),        # the named thread
                    (proc.pid, proc.pid, "dtl-main", now),    # the leader itself
                    (None, None, None, now),                  # a pcap row: no process
                    (proc.pid + 10_000_000, 7, "stranger", now)])  # a pid nobody saw
    got = process_names(frame, _processes(scan)).tolist()
    assert got[:2] == ["dtl-main", "dtl-main"]
    assert pd.isna(got[2]) and pd.isna(got[3])


def test_the_name_follows_exec_and_pid_reuse() -> None:
    """A process scanned as ``sh`` that exec'd dig at t=10 s; its pid reused at t=50 s by a
    fork of ``cron`` (seen by the end scan, no exec). Each thread row takes the name its
    process had at the row's time; a row before any known start has none."""
    t0 = 1_700_000_000 * _NS

    def row(comm: str, start: float, source: str) -> snap.ProcessRow:
        return snap.ProcessRow(tgid=4242, ppid=1, uid=0, comm=comm, exe=None, cmdline=None,
                               cgroup_id=None, cgroup_path=None, netns=None,
                               start_time=t0 + int(start * _NS), source=source)

    processes = _processes([row("sh", 0, "scan"), row("dig", 10, "exec"),
                            row("dig", 0, "scan"),       # the end scan: same fork time
                            row("cron", 50, "scan")])
    frame = _frame([(4242, 4243, "isc-net-0000", t0 + int(s * _NS))
                    for s in (-1, 5, 10, 20, 60)])
    got = process_names(frame, processes).tolist()
    assert pd.isna(got[0])
    assert got[1:] == ["sh", "dig", "dig", "cron"]
    # nanosecond datetimes give the same answer as integer nanoseconds
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    assert process_names(frame, processes).tolist()[1:] == got[1:]
    # without a node on either side the tgid alone decides
    assert process_names(frame.drop(columns="node"),
                         processes.drop(columns="node")).tolist()[1:] == got[1:]


def test_a_process_known_by_one_name_needs_no_time() -> None:
    processes = _processes([snap.ProcessRow(
        tgid=77, ppid=1, uid=0, comm="coredns", exe=None, cmdline=None, cgroup_id=None,
        cgroup_path=None, netns=None, start_time=None, source="scan")])
    frame = _frame([(77, 78 + i, "coredns-worker", i * _NS) for i in range(3)])
    assert process_names(frame, processes).tolist() == ["coredns"] * 3
    assert process_names(frame.iloc[:0], processes).tolist() == []


@pytest.mark.live
@pytest.mark.lab
def test_replay_finds_dig_by_its_process_name(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """dig sends from a thread named isc-net-NNNN: `replay --comm dig` finds its query (by
    the process name), `--comm 'isc-net-*'` too (by the thread name), and a wide table shows
    both in PROC."""
    from click.testing import CliRunner

    from analyze import load
    from capture.recorder import RecordOptions
    from dnstrail.cli import main
    from tests.lab.require import require_root_bcc
    from tests.test_record_live import Recording

    require_root_bcc()
    ns = lab.client_ns(timeout=1, attempts=2)
    out = tmp_path / "cap"
    with Recording(RecordOptions(output=out, pods_root=None)) as rec:
        r = lab.dig(ns, "www.lab.test")
        rec.stop()
    assert r.returncode == 0, r.stderr
    work = tmp_path / "work"
    cap = load(out, work_dir=work)
    tx = cap.transactions
    mine = tx[tx["tgid"] == r.pid]
    assert len(mine) == 1, mine
    assert mine["comm"].iloc[0].startswith("isc-net-")  # the thread's name, as recorded
    assert mine["process"].iloc[0] == "dig"
    hosts = set(cap.filter(pid=r.pid).by_pod()["comm"])
    assert hosts == {"dig"}, hosts  # a host process is counted under its process name

    def replay(*args: str) -> list[str]:
        res = CliRunner().invoke(main, ["replay", str(out), "--work-dir", str(work), *args])
        assert res.exit_code == 0, res.output
        return [ln for ln in res.output.splitlines() if "www.lab.test" in ln]

    lines = replay("--comm", "dig", "--width", "120")
    assert len(lines) == 1, lines
    assert f"dig[{r.pid}]" in lines[0] and f"dig[{r.pid}]/isc-ne" in lines[0]
    assert len(replay("--comm", "isc-net-*")) == 1
    assert replay("--comm", "dug") == []
    assert len(replay("--comm", "dig", "--messages")) == 2  # the query and its response


def test_exec_events_name_processes_the_snapshot_left_out(tmp_path: Path) -> None:
    """The processes snapshot keeps at most 100,000 exec rows; the execs files keep every
    exec, and ingest reads the names from them too. The sample capture with its processes
    table emptied still names dig's thread by its process."""
    import shutil

    import pyarrow.parquet as pq

    from analyze import load
    from capture.schema import PROCESSES_SCHEMA

    sample = Path(__file__).resolve().parent.parent / "samples" / "incident"
    cap = tmp_path / "cap"
    shutil.copytree(sample, cap)
    pq.write_table(PROCESSES_SCHEMA.empty_table(), cap / "processes.parquet")
    tx = load(cap, verify=False, work_dir=tmp_path / "work").transactions
    dig = tx[tx["comm"] == "isc-net-0000"]
    assert len(dig) == 3 and set(dig["process"]) == {"dig"}
    # the goresolve threads too (Go sends from any thread of its pool)
    go = tx[(tx["comm"] == "goresolve") & (tx["tid"] != tx["tgid"])]
    assert len(go) > 0 and set(go["process"]) == {"goresolve"}


@pytest.mark.live
def test_record_comm_keeps_a_process_by_its_name_from_any_of_its_threads(  # type: ignore[no-untyped-def]
        lab, tmp_path: Path) -> None:
    """`record --comm dig` keeps dig's query, sent by its thread isc-net-NNNN (the BPF filter
    also reads the thread-group leader's name), and not getent's, sent at the same time."""
    import pyarrow.parquet as pq

    from capture.recorder import RecordOptions
    from tests.lab.require import require_root_bcc
    from tests.test_record_live import Recording

    require_root_bcc()
    ns = lab.client_ns(timeout=1, attempts=2)
    out = tmp_path / "cap"
    with Recording(RecordOptions(output=out, pods_root=None, comms=("dig",))) as rec:
        r = lab.dig(ns, "www.lab.test")
        other = lab.getent(ns, "api.lab.test")
        rec.stop()
    assert r.returncode == 0 and other.returncode == 0, (r.stderr, other.stderr)
    rows = pq.read_table(sorted(out.glob("messages-*.parquet")),
                         columns=["tgid", "comm"]).to_pylist()
    mine = [row for row in rows if row["tgid"] == r.pid]
    assert len(mine) == 2, rows  # dig's query and its response
    assert all(row["comm"].startswith("isc-net-") for row in mine), mine
    assert all(row["tgid"] == r.pid for row in rows), rows  # nothing of getent's
