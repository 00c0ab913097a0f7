"""The same capture given twice, a copy inside a later capture, captures of one node that overlap:
read once or refused, never counted twice (issue 14), on copies of the bundled sample capture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from analyze import load
from analyze.capture import OverlappingCaptures
from analyze.completeness import completeness
from capture.writer import sha256_file
from dnstrail.cli import main

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "incident"
MESSAGES = "messages-000001.parquet"


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    cap = load(SAMPLE, work_dir=tmp_path_factory.mktemp("work"))
    return {"messages": cap.count("messages"), "transactions": cap.count("transactions"),
            "connects": cap.count("connects")}


def _copy(dst: Path) -> Path:
    shutil.copytree(SAMPLE, dst)
    return dst


def _with_messages(capture: Path, parts: dict[str, pa.Table]) -> Path:
    """Replace the capture's messages files by ``parts`` (name -> rows), manifest updated."""
    manifest = json.loads((capture / "manifest.json").read_text())
    files = [f for f in manifest["files"] if f["kind"] != "messages"]
    (capture / MESSAGES).unlink()
    for name, table in parts.items():
        pq.write_table(table, capture / name, compression="zstd")
        files.append({"name": name, "kind": "messages", "rows": table.num_rows,
                      "bytes": (capture / name).stat().st_size,
                      "sha256": sha256_file(capture / name)})
    manifest["files"] = files
    manifest["counts"]["messages"] = sum(t.num_rows for t in parts.values())
    (capture / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return capture


def _rows() -> pa.Table:
    return pq.read_table(SAMPLE / MESSAGES)


def test_the_same_capture_twice_is_read_once(tmp_path: Path, whole: dict[str, int]) -> None:
    copy = _copy(tmp_path / "copy")
    for verify in (True, False):  # without verify the copy's mtimes differ: still one capture
        cap = load([SAMPLE, SAMPLE, copy], work_dir=tmp_path / "work", verify=verify)
        assert cap.count("messages") == whole["messages"]
        assert cap.count("transactions") == whole["transactions"]
        assert cap.count("connects") == whole["connects"]
        notes = cap.input_notes
        assert len(notes) == 2 and all("the same capture as" in n for n in notes)
        problems = completeness(cap)["problems"]
        assert problems[:2] == notes


def test_a_copy_inside_a_later_capture_is_left_out(tmp_path: Path,
                                                   whole: dict[str, int]) -> None:
    rows = _rows()
    half = rows.num_rows // 2
    first = {"messages-000001.parquet": rows.slice(0, half)}
    # the finished capture: the copy's file, and the one the recorder wrote after it
    later = _with_messages(_copy(tmp_path / "later"),
                           {**first, "messages-000002.parquet": rows.slice(half)})
    early = _with_messages(_copy(tmp_path / "early"), first)
    cap = load([early, later], work_dir=tmp_path / "work")
    assert cap.count("messages") == whole["messages"]
    assert cap.count("transactions") == whole["transactions"]
    assert [m["path"] for m in cap.manifests] == [str(later)]
    (note,) = cap.input_notes
    assert str(early) in note and f"read {later} only" in note


def test_overlapping_split_is_refused(tmp_path: Path) -> None:
    rows = _rows()
    n = rows.num_rows
    a = _with_messages(_copy(tmp_path / "a"), {MESSAGES: rows.slice(0, 2 * n // 3)})
    b = _with_messages(_copy(tmp_path / "b"), {MESSAGES: rows.slice(n // 3)})
    with pytest.raises(OverlappingCaptures, match=r"share [0-9,]+ messages"):
        load([a, b], work_dir=tmp_path / "work")
    # the CLI says it in one line and exits 1
    result = CliRunner().invoke(main, ["report", str(a), str(b), "-o",
                                       str(tmp_path / "r.json"), "--work-dir",
                                       str(tmp_path / "work")])
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "overlap" in lines[0]
    assert not (tmp_path / "r.json").exists()
    # the same split without the overlap: both parts read, every message once
    d = _copy_rows(tmp_path / "d", rows.slice(0, n // 3))
    assert load([d, b], work_dir=tmp_path / "work").count("messages") == n


def _copy_rows(dst: Path, rows: pa.Table) -> Path:
    return _with_messages(_copy(dst), {MESSAGES: rows})


def test_overlap_without_shared_messages_is_read_with_a_note(
        tmp_path: Path, whole: dict[str, int]) -> None:
    # two recorders of one node at once, each filtered to other processes: no message twice
    rows = _rows()
    odd = pc.equal(pc.bit_wise_and(rows.column("tgid"), 1), 1)
    a = _copy_rows(tmp_path / "odd", rows.filter(odd))
    b = _copy_rows(tmp_path / "even", rows.filter(pc.invert(odd)))
    cap = load([a, b], work_dir=tmp_path / "work")
    assert cap.count("messages") == whole["messages"]
    (note,) = cap.input_notes
    assert "overlap" in note and "share no message" in note
    assert note in completeness(cap)["problems"]


def test_the_note_is_in_every_output(tmp_path: Path) -> None:
    runner = CliRunner()
    work = ["--work-dir", str(tmp_path / "work")]
    for suffix in ("json", "md", "html"):
        out = tmp_path / f"r.{suffix}"
        result = runner.invoke(main, ["report", str(SAMPLE), str(SAMPLE), "-o", str(out),
                                      *work])
        assert result.exit_code == 0, result.output
        text = out.read_text()
        if suffix == "json":
            problems = json.loads(text)["summary"]["completeness"]["problems"]
            assert any("the same capture as" in p for p in problems)
            assert json.loads(text)["summary"]["messages"] == load(
                SAMPLE, work_dir=tmp_path / "work").count("messages")
        else:
            assert "the same capture as" in text
    result = runner.invoke(main, ["replay", str(SAMPLE), str(SAMPLE), *work])
    assert result.exit_code == 0
    assert "incomplete: " in result.output and "the same capture as" in result.output
