"""What a running recorder keeps resident: no pandas, no analyzer, no remote-filesystem libraries.

pandas alone is ~30 MB resident for the life of a recording. It gets in by accident: the CLI
importing the analyzer's commands, or ``pa.array()`` / ``pa.Table.from_pydict`` / the
``as_py()`` of a ns timestamp, which consult pandas whenever it is installed. The live test
looks at the memory map of a real ``dnstrail record`` process that has recorded traffic,
rotated files and turned exec events into processes rows.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from capture._arrow import arrow_array, arrow_table
from capture.schema import CGROUPS_SCHEMA, PODS_SCHEMA, PROCESSES_SCHEMA
from tests.lab.require import require_root_bcc

#: Shared objects that must not be mapped into the recorder (path fragments of /proc/PID/maps).
_NOT_MAPPED = ("/pandas/", "libarrow_s3", "/pyarrow/_s3fs", "/pyarrow/_fs.")


def _mapped(pid: int, fragments: tuple[str, ...]) -> list[str]:
    with open(f"/proc/{pid}/maps") as fh:
        paths = {line.split()[-1] for line in fh if len(line.split()) >= 6}
    return sorted(p for p in paths if any(f in p for f in fragments))


def test_cli_record_path_imports_no_analyzer() -> None:
    """Loading the `record` command (and the probe) imports neither analyze nor pandas."""
    code = (
        "import sys\n"
        "from dnstrail.cli import main\n"
        "assert main.get_command(None, 'record') is not None\n"
        "import capture.probe, capture.recorder\n"
        "bad = {m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('pandas', 'analyze')}"
        " | {m for m in sys.modules if m in ('pyarrow.parquet', 'pyarrow.fs')}\n"
        "print(sorted(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_cli_still_lists_every_command() -> None:
    from click.testing import CliRunner

    from dnstrail.cli import main

    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0, r.output
    for name in ("record", "replay", "report", "import"):
        assert f"  {name} " in r.output


def test_arrow_array_matches_pa_array() -> None:
    """The recorder's pandas-free array builder gives what pa.array() gives."""
    cases: list[tuple[list[object], pa.DataType]] = [
        ([1, None, -3], pa.int32()),
        ([2**64 - 1, None, 0], pa.uint64()),
        ([None, None], pa.uint32()),
        ([10**18, None], pa.timestamp("ns", tz="UTC")),
        (["a", None, "caf\u00e9", ""], pa.string()),
        ([True, None, False], pa.bool_()),
        ([1.5, None], pa.float64()),
        (["scan", "exec", None, "scan"], pa.dictionary(pa.int8(), pa.string())),
        ([], pa.string()),
    ]
    for values, typ in cases:
        got = arrow_array(values, typ)
        got.validate(full=True)
        assert got.equals(pa.array(values, type=typ)), (values, typ)


def test_snapshot_tables_match_from_pydict() -> None:
    rng = np.random.default_rng(3)
    rows = {
        "processes": {f.name: [None] * 3 for f in PROCESSES_SCHEMA},
        "cgroups": {"cgroup_id": [1, 2**63], "path": ["/", "/a b"],
                    "resolved_at": [None, 1_700_000_000 * 10**9]},
        "pods": {"pod_uid": ["u"], "namespace": [None], "pod": ["p"], "container": [None],
                 "container_id": ["ab"], "source": ["kubectl"]},
    }
    procs = rows["processes"]
    procs.update(tgid=[1, 2, 3], source=["scan", "exec", "scan"],
                 comm=["init", None, "x" * 15], start_time=[int(v) for v in
                                                          rng.integers(0, 2**62, 3)])
    for kind, schema in (("processes", PROCESSES_SCHEMA), ("cgroups", CGROUPS_SCHEMA),
                         ("pods", PODS_SCHEMA)):
        got = arrow_table(rows[kind], schema)
        assert got.equals(pa.Table.from_pydict(rows[kind], schema=schema)), kind


@pytest.mark.live
def test_running_recorder_has_no_pandas(tmp_path: Path) -> None:
    """A `dnstrail record` process that has parsed events, rotated files and written
    snapshots (exec events included: the sender is exec'd) maps no pandas extension module
    and no remote-filesystem library."""
    require_root_bcc()
    from tests.test_record_live import _start_cli, dns_traffic
    from tests.test_writer import check_capture

    out = tmp_path / "cap"
    proc, lines = _start_cli(out, "--rotate", "1s")
    try:
        with dns_traffic(count=300, seconds=20, tag="mem") as sender:
            pass
        sent = int(sender.stdout.read().strip()) if sender.stdout else 0
        assert sent == 300, sender.stderr.read() if sender.stderr else ""
        time.sleep(2.5)  # parsed, written, rotated at least once
        assert proc.poll() is None, "".join(lines)
        bad = _mapped(proc.pid, _NOT_MAPPED)
        # the test itself must be able to see such a module: pyarrow's own library is there
        assert _mapped(proc.pid, ("/pyarrow/",)), "no pyarrow in the recorder's map?"
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, "".join(lines)
    assert bad == [], f"the recorder mapped {bad}"
    manifest = check_capture(out)
    assert manifest["counts"]["messages"] >= 4 * 300


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
