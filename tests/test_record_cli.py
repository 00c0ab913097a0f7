"""`dnstrail record` faults and options: exit status and the one-line message of each."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from capture import preflight as pf
from capture.errors import (
    BccMissing,
    HeadersMissing,
    NotPermitted,
    OutputNotEmpty,
    TracefsMissing,
)
from capture.recorder import RecordOptions, parse_duration, parse_size, record
from dnstrail.cli import main
from dnstrail.errors import DnstrailError

REPO = Path(__file__).resolve().parents[1]
DNSTRAIL = Path(sys.executable).parent / "dnstrail"


def run_cli(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, ["record", *args], env=env)


def have_probe() -> bool:
    return importlib.util.find_spec("capture.probe") is not None


def is_root_with_bcc() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        pf.preflight()
    except DnstrailError:
        return False
    return True


# -- input errors (no privileges needed) ---------------------------------------------------


def test_output_not_empty(tmp_path: Path) -> None:
    (tmp_path / "evidence.txt").write_text("keep me")
    r = run_cli("-o", str(tmp_path), "--duration", "1s")
    assert r.exit_code == 1
    assert f"Error: output directory {tmp_path} is not empty" in r.output
    assert "--append" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evidence.txt"]


def test_output_required_and_bad_values(tmp_path: Path) -> None:
    r = run_cli()
    assert r.exit_code == 2 and "Missing option '-o' / '--output'" in r.output
    r = run_cli("-o", str(tmp_path / "c"), "--duration", "soon")
    assert r.exit_code == 2 and "bad duration 'soon'" in r.output
    r = run_cli("-o", str(tmp_path / "c"), "--max-size", "lots")
    assert r.exit_code == 2 and "bad size 'lots'" in r.output
    r = run_cli("-o", str(tmp_path / "c"), "--snaplen", "9000")
    assert r.exit_code == 2 and "--snaplen" in r.output and "8192" in r.output
    r = run_cli("-o", str(tmp_path / "c"), "--port", "0")
    assert r.exit_code == 2 and "--port" in r.output
    r = run_cli("-o", str(tmp_path / "c"), "--ringbuf-mb", "3")
    assert r.exit_code == 1 and "power of two" in r.output
    r = run_cli("-o", str(tmp_path / "c"), "--comm", "a-very-long-command-name")
    assert r.exit_code == 1 and "15 bytes" in r.output
    assert not (tmp_path / "c").exists()  # nothing created for a refused command


def test_parsers() -> None:
    assert parse_duration("30s") == 30 and parse_duration("5m") == 300
    assert parse_duration("1h30m") == 5400 and parse_duration("250ms") == 0.25
    assert parse_duration("2") == 2
    for bad in ("", "5 minutes", "-1s", "0", "1x"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert parse_size("64MB") == 64 << 20 and parse_size("1g") == 1 << 30
    assert parse_size("500KiB") == 500 << 10 and parse_size("4096") == 4096
    for bad in ("", "0", "12 parsecs", "-5MB"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_help_describes_the_options() -> None:
    r = CliRunner().invoke(main, ["record", "--help"])
    assert r.exit_code == 0
    for word in ("--output", "--duration", "--port", "--pod", "--cgroup", "--snaplen",
                 "--max-size", "--rotate", "--append", "--print-bpf", "disk full"):
        assert word in r.output, word


# -- preflight: each failure with its fix --------------------------------------------------


def test_headers_missing_library_and_cli(tmp_path: Path) -> None:
    paths = pf.PreflightPaths(modules_dir=tmp_path, kernel_release="6.1.0-test")
    with pytest.raises(HeadersMissing, match=r"linux-headers-\$\(uname -r\)"):
        pf.check_headers(paths)
    (tmp_path / "6.1.0-test" / "build" / "include").mkdir(parents=True)
    pf.check_headers(paths)  # present now
    if not is_root_with_bcc():
        pytest.skip("the CLI reaches the headers check only as root with bcc")
    r = run_cli("-o", str(tmp_path / "cap"), env={"DNSTRAIL_MODULES_DIR": str(tmp_path / "no")})
    assert r.exit_code == 1
    assert "Error: kernel headers are missing" in r.output
    assert "deploy/setup.sh --lab" in r.output
    assert not (tmp_path / "cap").exists()


def test_tracefs_missing_library_and_cli(tmp_path: Path) -> None:
    paths = pf.PreflightPaths(tracefs_dirs=(str(tmp_path),))
    with pytest.raises(TracefsMissing, match="mount -t tracefs tracefs /sys/kernel/tracing"):
        pf.check_tracefs(paths)
    (tmp_path / "events").mkdir()
    pf.check_tracefs(paths)
    if not is_root_with_bcc():
        pytest.skip("the CLI reaches the tracefs check only as root with bcc")
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("-o", str(tmp_path / "cap"), env={"DNSTRAIL_TRACEFS_DIRS": str(empty)})
    assert r.exit_code == 1
    assert "Error: tracefs is not mounted" in r.output
    assert "mount -t tracefs tracefs /sys/kernel/tracing" in r.output


def _nobody_can_run_dnstrail() -> str | None:
    if os.geteuid() != 0:
        return "needs root to switch to an unprivileged user"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    return None


def test_not_root_cli_as_nobody(tmp_path: Path) -> None:
    reason = _nobody_can_run_dnstrail()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "cap"
    r = subprocess.run(  # noqa: PLW1510  (the exit status is the assertion)
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(DNSTRAIL),
         "record", "-o", str(out), "--duration", "1s"],
        capture_output=True, text=True, timeout=60, cwd="/",
    )
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("Error: not permitted to load BPF programs (running as uid 65534")
    assert "sudo dnstrail record" in r.stderr and "CAP_BPF" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_not_permitted_from_a_real_unprivileged_status(tmp_path: Path) -> None:
    """check_privileges reads CapEff: feed it the status of a real unprivileged process."""
    reason = _nobody_can_run_dnstrail()
    if reason:
        pytest.skip(reason)
    child = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              "sleep", "10"])
    try:
        for _ in range(100):
            status = Path(f"/proc/{child.pid}/status").read_text()
            if "\nUid:\t65534" in status:
                break
            time.sleep(0.02)
        saved = tmp_path / "status"
        saved.write_text(status)
    finally:
        child.kill()
        child.wait()
    with pytest.raises(NotPermitted, match="CapEff=0x0"):
        pf.check_privileges(pf.PreflightPaths(proc_status=saved))
    # and our own (root) status passes
    pf.check_privileges(pf.PreflightPaths())


def _python_without_bcc_env() -> dict[str, str]:
    """PYTHONPATH with the project and its dependencies but not the .pth that adds bcc."""
    site = sysconfig.get_paths()["purelib"]
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{site}"}


def test_bcc_missing_cli() -> None:
    if os.geteuid() != 0:
        pytest.skip("the bcc check comes after the privilege check: needs root")
    env = _python_without_bcc_env()
    # -S: no site processing, so the venv's bcc .pth is not read; PYTHONPATH supplies the rest
    probe = subprocess.run([sys.executable, "-S", "-c", "import bcc"], env=env,
                           capture_output=True, text=True, check=False)
    if probe.returncode == 0:
        pytest.skip("bcc is importable even without site packages here")
    r = subprocess.run(  # noqa: PLW1510  (the exit status is the assertion)
        [sys.executable, "-S", "-c", "from dnstrail.cli import main; main()", "record",
         "-o", "/nonexistent-dnstrail-test/cap", "--duration", "1s"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("Error: bcc is not importable")
    assert "apt-get install python3-bpfcc" in r.stderr and "unrelated" in r.stderr


def test_bcc_missing_library() -> None:
    with pytest.raises(BccMissing, match="python3-bpfcc"):
        pf.check_bcc(pf.PreflightPaths(bcc_module="dnstrail_no_such_bcc_module"))


def test_record_library_refuses_before_loading(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("")
    with pytest.raises(OutputNotEmpty):
        record(RecordOptions(output=tmp_path, duration=1, handle_signals=False))


# -- --print-bpf: no root, no bcc ----------------------------------------------------------


def test_print_bpf_without_root_or_bcc(tmp_path: Path) -> None:
    if not have_probe():
        pytest.skip("capture/probe.py (the probe engineer's) has not landed yet")
    argv = ["-c", "from dnstrail.cli import main; main()", "record", "--print-bpf",
            "--port", "53", "--port", "5353", "--snaplen", "512"]
    cmd = [sys.executable, "-S", *argv]
    if os.geteuid() == 0 and shutil.which("setpriv"):
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    r = subprocess.run(cmd, env=_python_without_bcc_env(), capture_output=True, text=True,  # noqa: PLW1510
                       timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    src = r.stdout
    assert "TRACEPOINT_PROBE" in src  # real BPF C, with the options applied
    from capture.probe import ProbeConfig, render_source

    assert src.strip() == render_source(ProbeConfig(ports=(53, 5353), snaplen=512)).strip()
    assert src.strip() != render_source(ProbeConfig()).strip()


# -- disk full, live -------------------------------------------------------------------------


@pytest.mark.live
def test_disk_full_cli_exit_code(tmp_path: Path) -> None:
    from tests.lab.require import require_root_bcc

    require_root_bcc()
    if not have_probe():
        pytest.skip("capture/probe.py (the probe engineer's) has not landed yet")
    from tests.test_record_live import _start_cli, dns_traffic
    from tests.test_writer import check_capture

    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        # Leave about 400 KB: room for the start snapshots, then the events fill it quickly.
        (mnt / "filler").write_bytes(b"\0" * (1600 * 1024))
        out = mnt / "cap"
        proc, lines = _start_cli(out, "--max-size", "64KB", "--rotate", "1s",
                                 "--duration", "60s")
        try:
            with dns_traffic(count=200_000, seconds=50, label=60, tag="full",
                             stop=lambda: proc.poll() is not None):
                pass
            proc.wait(timeout=70)
        finally:
            if proc.poll() is None:
                proc.kill()
        time.sleep(0.2)
        err = "".join(lines)
        assert proc.returncode == 3, err
        assert "Error: disk full writing" in err
        m = check_capture(out)
        assert m["status"] == "failed" and "disk full" in m["error"]
        # what was recorded before the disk filled: in finished Parquet files, or in spool
        # segments (listed with their hash, or the open one cut back to its last whole record)
        from capture.spool import count_records

        spooled = sum(count_records(p) for p in out.glob("spool-*.spool"))
        assert m["counts"]["messages"] + spooled > 0
        import analyze

        cap = analyze.load(out, work_dir=tmp_path / "work")
        n = int(cap.sql("SELECT count(*) AS n FROM messages")["n"][0])
        assert n == m["counts"]["messages"] + spooled
    finally:
        # the recorder's children may still hold the mount for a moment: detach it lazily then
        if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_summary_prints_lost_events_when_non_zero(tmp_path: Path) -> None:
    from capture.recorder import RecordSummary

    s = RecordSummary(output=tmp_path, status="complete", elapsed_s=12.34,
                      counts={"messages": 1234, "connects": 5, "execs": 0}, files=[],
                      bytes=3 * 1024 * 1024, lost={"ringbuf_full": 1204, "disk_full": 0})
    text = "\n".join(s.lines())
    assert "Recorded 1,234 messages, 5 connects, 0 execs in 12.3 s (complete)" in text
    assert "3.0 MB" in text
    assert "LOST events: ringbuf_full 1,204" in text and "disk_full" not in text
    s.lost = {"ringbuf_full": 0}
    assert s.lines()[-1] == "Lost events: none"
    assert all(len(line) < 80 for line in s.lines() if not line.startswith("Files:"))
