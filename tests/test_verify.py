"""`dnstrail verify`: the bundled sample, damaged copies of it, and a recorder killed with -9."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from analyze.verify import (
    EXIT_ABNORMAL_END,
    EXIT_DAMAGED,
    EXIT_LOST,
    EXIT_VERIFIED,
    NotACaptureDirectory,
    verify_capture,
)
from dnstrail.cli import main

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "incident"


@pytest.fixture
def cap(tmp_path: Path) -> Path:
    out = tmp_path / "incident"
    shutil.copytree(SAMPLE, out)
    return out


def _manifest(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((path / "manifest.json").read_text())


def _write_manifest(path: Path, manifest: dict) -> None:  # type: ignore[type-arg]
    (path / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def _run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["verify", *args])
    return r.exit_code, r.output


def _status(result, name: str) -> str:  # type: ignore[no-untyped-def]
    return {f.name: f.status for f in result.files}[name]


def test_sample_verifies_with_its_evidence_id(cap: Path) -> None:
    r = verify_capture(cap)
    assert r.intact and not r.damaged and not r.problems
    assert r.evidence_id == hashlib.sha256((cap / "manifest.json").read_bytes()).hexdigest()
    assert {f.status for f in r.files} == {"ok"}
    assert {f.name for f in r.files} == {f["name"] for f in _manifest(cap)["files"]}
    assert r.end.normal and r.schema_version == 1
    lost = sum(_manifest(cap)["lost"].values())
    assert r.lost_total == lost
    rc, out = _run(str(cap))
    assert rc == (EXIT_LOST if lost else EXIT_VERIFIED)
    assert r.evidence_id in out
    assert all(len(line) <= 79 for line in out.splitlines()), out


def test_clean_capture_exits_0_and_json_says_so(cap: Path) -> None:
    m = _manifest(cap)
    m["lost"] = {k: 0 for k in m["lost"]}
    _write_manifest(cap, m)
    rc, out = _run(str(cap), "--format", "json")
    assert rc == EXIT_VERIFIED, out
    doc = json.loads(out)
    (c,) = doc["captures"]
    assert c["verdict"] == "verified" and c["exit_code"] == 0 and doc["exit_code"] == 0
    assert c["evidence_id"] == hashlib.sha256((cap / "manifest.json").read_bytes()).hexdigest()
    assert c["lost_total"] == 0 and c["losses"] == []


def test_losses_are_explained_in_words(cap: Path) -> None:
    m = _manifest(cap)
    m["lost"]["ringbuf_full"] = 1204
    _write_manifest(cap, m)
    rc, out = _run(str(cap))
    assert rc == EXIT_LOST
    assert "ringbuf_full 1,204" in out and "ring buffer had no room" in out
    assert "not recorded" in out


def test_deleted_file_is_missing(cap: Path) -> None:
    (cap / "connects-000001.parquet").unlink()
    r = verify_capture(cap)
    assert _status(r, "connects-000001.parquet") == "missing"
    assert r.verdict == "damaged"
    rc, out = _run(str(cap))
    assert rc == EXIT_DAMAGED
    assert "DAMAGED: connects-000001.parquet: missing" in out


def test_extra_capture_file_is_damage_other_files_are_noted(cap: Path) -> None:
    shutil.copy(cap / "messages-000001.parquet", cap / "messages-000002.parquet")
    (cap / "notes.txt").write_text("analyst notes\n")
    r = verify_capture(cap)
    assert _status(r, "messages-000002.parquet") == "extra"
    assert _status(r, "notes.txt") == "other"
    assert r.exit_code == EXIT_DAMAGED
    (cap / "messages-000002.parquet").unlink()
    r = verify_capture(cap)
    assert r.intact and _status(r, "notes.txt") == "other"


def test_flipped_byte_is_a_hash_mismatch(cap: Path) -> None:
    p = cap / "messages-000001.parquet"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    r = verify_capture(cap)
    check = next(f for f in r.files if f.name == p.name)
    assert check.status == "sha256 differs" and check.listed_bytes == check.actual_bytes
    assert check.actual_sha256 != check.listed_sha256
    assert _run(str(cap))[0] == EXIT_DAMAGED


def test_truncated_parquet_is_cut_short(cap: Path) -> None:
    p = cap / "messages-000001.parquet"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 100])
    r = verify_capture(cap)
    check = next(f for f in r.files if f.name == p.name)
    assert check.status == "size differs" and "cut short" in check.detail
    rc, out = _run(str(cap))
    assert rc == EXIT_DAMAGED and "cut short" in out


def test_manifest_edited_to_running_is_an_abnormal_end(cap: Path) -> None:
    m = _manifest(cap)
    m["status"], m["stopped_at"] = "running", None
    _write_manifest(cap, m)
    r = verify_capture(cap)
    assert r.intact and r.end.kind == "died" and not r.end.normal
    rc, out = _run(str(cap))
    assert rc == EXIT_ABNORMAL_END
    assert "ABNORMAL-END" in out and "still says 'running'" in out
    # the evidence id follows the manifest's bytes
    assert r.evidence_id != verify_capture(SAMPLE).evidence_id


def test_failed_capture_says_why(cap: Path) -> None:
    m = _manifest(cap)
    m["status"], m["error"] = "failed", "disk full writing /x: No space left on device"
    _write_manifest(cap, m)
    rc, out = _run(str(cap))
    assert rc == EXIT_ABNORMAL_END and "disk full writing" in out


def test_manifest_damage(cap: Path) -> None:
    m = _manifest(cap)
    m["counts"]["messages"] += 1
    _write_manifest(cap, m)
    r = verify_capture(cap)
    assert r.verdict == "damaged" and any("counts" in p for p in r.problems)
    m["counts"]["messages"] -= 1
    m["files"][0]["name"] = "../../etc/passwd"
    _write_manifest(cap, m)
    r = verify_capture(cap)
    assert _status(r, "../../etc/passwd") == "bad name"
    (cap / "manifest.json").write_bytes(b'{"format": "dnstrail-capture", "sch')
    rc, out = _run(str(cap))
    assert rc == EXIT_DAMAGED and "not valid JSON" in out


def test_newer_schema_version_is_refused_as_damage(cap: Path) -> None:
    m = _manifest(cap)
    m["schema_version"] = 99
    _write_manifest(cap, m)
    r = verify_capture(cap)
    assert r.verdict == "damaged" and any("upgrade dnstrail" in p for p in r.problems)


def test_rows_are_checked_against_the_parquet_footer(cap: Path) -> None:
    m = _manifest(cap)
    entry = next(f for f in m["files"] if f["kind"] == "execs")
    entry["rows"] += 5
    m["counts"]["execs"] += 5
    _write_manifest(cap, m)
    r = verify_capture(cap)
    assert _status(r, entry["name"]) == "rows differ"


def test_hostile_manifest_strings_stay_inert_on_the_terminal(cap: Path) -> None:
    m = _manifest(cap)
    m["host"] = "evil\x1b]0;pwned\x07\x1b[2J"
    m["status"], m["error"] = "failed", "boom\x1b[31m\r\nforged line"
    _write_manifest(cap, m)
    rc, out = _run(str(cap))
    assert rc == EXIT_ABNORMAL_END
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert not any(line.startswith("forged") for line in out.splitlines())


def test_not_a_capture_is_exit_1(tmp_path: Path) -> None:
    with pytest.raises(NotACaptureDirectory):
        verify_capture(tmp_path)
    rc, out = _run(str(tmp_path))
    assert rc == 1 and out.startswith("Error: ") and "manifest.json" in out
    rc, out = _run(str(tmp_path / "nope"))
    assert rc == 1 and "no such capture" in out


def test_several_captures_worst_decides(cap: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(SAMPLE, other)
    (other / "pods.parquet").unlink()
    rc, out = _run(str(cap), str(other), "--format", "json")
    doc = json.loads(out)
    assert [c["verdict"] for c in doc["captures"]][1] == "damaged"
    assert rc == EXIT_DAMAGED == doc["exit_code"]


@pytest.mark.live
def test_kill_9_under_load_ends_abnormally_and_every_finished_file_verifies(
        tmp_path: Path) -> None:
    from capture.spool import count_records, read_segment
    from tests.lab.require import require_root_bcc
    from tests.test_record_live import _start_cli, dns_traffic

    require_root_bcc()
    out = tmp_path / "cap"
    proc, lines = _start_cli(out, "--rotate", "1s", "--max-size", "64KB")
    try:
        with dns_traffic(count=200_000, seconds=30, label=40, tag="kill",
                         stop=lambda: proc.poll() is not None) as sender:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    files = json.loads((out / "manifest.json").read_text())["files"]
                except (OSError, ValueError):
                    files = []
                if sum(1 for f in files if f["kind"] == "messages") >= 3:
                    break
                time.sleep(0.1)
            else:
                pytest.fail("recorder did not finish 3 message files in 30 s: " + "".join(lines))
            proc.kill()
            proc.wait(timeout=10)
            sender.kill()
    finally:
        if proc.poll() is None:
            proc.kill()
    r = verify_capture(out)
    assert r.end.kind == "died", r.end
    assert r.intact, [(f.name, f.status, f.detail) for f in r.damaged] + r.problems
    listed = [f for f in r.files if f.listed_sha256 is not None]
    assert sum(1 for f in listed if f.kind == "messages") >= 3
    assert all(f.status in ("ok", "snapshot newer") for f in listed)
    for f in r.files:
        if f.status == "unlisted" and f.kind == "spool":
            # the segment being written: whole records only, as the analyzer reads it
            assert count_records(out / f.name) == f.rows
            assert sum(len(b) for part in read_segment(out / f.name)
                       for b in part["messages"]) == f.rows
        elif f.status == "unlisted":
            assert pq.read_table(out / f.name).num_rows == f.rows
    rc, text = _run(str(out))
    assert rc == EXIT_ABNORMAL_END and "ABNORMAL-END" in text, text
