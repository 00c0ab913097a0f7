"""The staged analyzer: the work-directory cache, damaged evidence, stage contracts, SQL,
filters pushed into the engine. On the bundled sample capture (real recorder output)."""

from __future__ import annotations

import fnmatch
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from analyze import load
from analyze.cache import WorkDirError
from analyze.capture import glob_regex
from analyze.errors import CaptureDamaged
from analyze.stages import ContractError, check

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "incident"


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    out = tmp_path / "incident"
    shutil.copytree(SAMPLE, out)
    return out


def _entries(work: Path, stage: str) -> set[str]:
    d = work / stage
    return {p.name for p in d.iterdir() if not p.name.startswith(".")} if d.exists() else set()


def test_cache_is_reused_while_the_evidence_is_unchanged(sample: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    first = load(sample, work_dir=work)
    n = len(first.transactions)
    assert n > 0 and _entries(work, "ingest") and _entries(work, "relate")
    before = {p: p.stat().st_mtime_ns for p in work.rglob("*.parquet")}
    again = load(sample, work_dir=work)
    assert len(again.transactions) == n
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*.parquet")} == before
    # the evidence itself is only read
    assert sorted(p.name for p in sample.iterdir()) == sorted(p.name for p in SAMPLE.iterdir())


def test_changed_evidence_is_rebuilt_never_stale(sample: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    assert len(load(sample, work_dir=work, verify=False).transactions) > 0
    keys = _entries(work, "ingest")
    # without verification the key holds each file's size and mtime: touching one rebuilds
    victim = next(sample.glob("messages-*.parquet"))
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert len(load(sample, work_dir=work, verify=False).transactions) > 0
    assert len(_entries(work, "ingest") - keys) == 1
    # with verification a changed byte is damage, not a cache hit
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(CaptureDamaged, match="sha256"):
        load(sample, work_dir=work)


def test_a_damaged_file_is_named_and_skipped_and_the_rest_analyzed(sample: Path,
                                                                   tmp_path: Path) -> None:
    whole = load(sample, work_dir=tmp_path / "w1")
    victim = next(sample.glob("connects-*.parquet"), None) or next(
        sample.glob("messages-*.parquet"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    cap = load(sample, work_dir=tmp_path / "w2", on_damage="skip")
    assert [s["path"] for s in cap.skipped_files] == [str(victim)]
    assert any(victim.name in w and "skipped" in w for w in cap.warnings)
    if victim.name.startswith("connects"):
        assert len(cap.connects) < len(whole.connects) or len(whole.connects) == 0
        assert len(cap.transactions) == len(whole.transactions)
    doc = cap.report(format="json")
    assert victim.name in doc


def test_sql_runs_over_the_stage_tables_and_sees_the_filters(tmp_path: Path) -> None:
    cap = load(SAMPLE, work_dir=tmp_path / "w")
    n = cap.sql("SELECT count(*) AS n FROM transactions")["n"].iloc[0]
    assert n == len(cap.transactions)
    per = cap.sql("SELECT status, count(*) AS n FROM transactions GROUP BY status")
    assert dict(zip(per["status"], per["n"])) == cap.transactions["status"].value_counts()[
        lambda s: s > 0].to_dict()
    joined = cap.sql("SELECT count(*) AS n FROM messages m JOIN transactions t USING (txn_id)")
    assert joined["n"].iloc[0] == cap.messages["txn_id"].notna().sum()
    pods = [p for p in cap.transactions["pod"].dropna().unique()]
    assert pods, "the sample has pods"
    one = cap.filter(pod=str(pods[0]))
    got = one.sql("SELECT DISTINCT pod FROM transactions")["pod"].tolist()
    assert got == [pods[0]]
    assert one.count("transactions") == (cap.transactions["pod"] == pods[0]).sum()
    assert len(one.transactions) == one.count("transactions")


def test_filter_on_time_and_rcode_in_the_engine(tmp_path: Path) -> None:
    cap = load(SAMPLE, work_dir=tmp_path / "w")
    tx = cap.transactions
    mid = tx["ts"].sort_values().iloc[len(tx) // 2]
    assert len(cap.filter(since=mid).transactions) == (tx["ts"] >= mid).sum()
    assert len(cap.filter(until=mid).transactions) == (tx["ts"] <= mid).sum()
    nx = cap.filter(rcode="NXDOMAIN")
    assert len(nx.transactions) == (tx["rcode_name"] == "NXDOMAIN").sum()
    assert set(nx.messages["txn_id"]) == set(nx.transactions["txn_id"])
    assert len(cap.filter(rcode="TIMEOUT").transactions) == (tx["status"] == "timeout").sum()


@pytest.mark.parametrize("pattern", ["*.example.com", "a?c", "[ab]*", "[!a]*", "x[", "*",
                                     "a*b*c", "*[.]svc", "a\\b", "(x)+"])
def test_glob_regex_agrees_with_fnmatch(pattern: str) -> None:
    import duckdb

    values = ["www.example.com", "example.com", "abc", "adc", "bcd", "x[", "aXbYc", "a.svc",
              "kube.svc", "a\\b", "(x)+", "", "\n"]
    con = duckdb.connect()
    got = [bool(con.execute("SELECT regexp_full_match(?, ?)", [v, glob_regex(pattern)])
                .fetchone()[0]) for v in values]  # type: ignore[index]
    assert got == [fnmatch.fnmatchcase(v, pattern) for v in values]


def test_stage_contract_names_the_missing_column() -> None:
    with pytest.raises(ContractError, match="message_txn.*txn_id"):
        check(pa.table({"msg_id": pa.array([1], pa.int64())}), "message_txn")
    with pytest.raises(ContractError, match="has nulls"):
        check(pa.table({"msg_id": pa.array([None], pa.int64()),
                        "txn_id": pa.array([1], pa.int64())}), "message_txn")


def test_unusable_work_dir_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WorkDirError, match="work directory"):
        load(SAMPLE, work_dir=blocker / "cache")


def test_second_report_reads_the_findings_back_and_says_the_same(tmp_path: Path) -> None:
    import json

    work = tmp_path / "w"
    first = load(SAMPLE, work_dir=work)
    cold = {fmt: first.report(format=fmt, plots=False) for fmt in ("md", "json")}
    assert len(_entries(work, "findings")) == 1
    second = load(SAMPLE, work_dir=work)
    warm = {fmt: second.report(format=fmt, plots=False) for fmt in ("md", "json")}
    assert len(_entries(work, "findings")) == 1          # read back, not computed again
    a, b = json.loads(cold["json"]), json.loads(warm["json"])
    assert a["findings"] and a["findings"] == b["findings"] and a["summary"] == b["summary"]
    strip = lambda t: "\n".join(ln for ln in t.splitlines() if "generated" not in ln)
    assert strip(cold["md"]) == strip(warm["md"])
    # what changes the findings changes the key: a filter, an argument, an allow file
    second.filter(namespace="*").findings()
    second.findings(min_severity="high")
    allow = tmp_path / "allow"
    allow.write_text("* *.example\n")
    second.findings(allow=allow)
    assert len(_entries(work, "findings")) == 4
    allow.write_text("* *.example.org\n")
    second.findings(allow=allow)
    assert len(_entries(work, "findings")) == 5
    assert [f.kind for f in second.findings(cache=False)] == [f["kind"] for f in a["findings"]]


def test_a_full_work_dir_is_a_one_line_error_and_the_evidence_is_untouched(
        sample: Path, tmp_path: Path) -> None:
    import subprocess

    from analyze.cache import WorkDirFull

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)  # fill it to the last block
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        before = {p.name: p.read_bytes() for p in sample.iterdir()}
        with pytest.raises(WorkDirFull, match="no space left") as exc:
            len(load(sample, work_dir=mnt / "cache").transactions)
        assert "\n" not in str(exc.value)
        assert {p.name: p.read_bytes() for p in sample.iterdir()} == before
        # nothing half-built is left to be mistaken for an entry
        assert not _entries(mnt / "cache", "ingest")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)  # lazy: even if still open


def test_filters_are_validated_in_one_line(tmp_path: Path) -> None:
    from analyze.errors import BadFilter

    cap = load(SAMPLE, work_dir=tmp_path / "w")
    for bad in ("10s", "5m"):
        with pytest.raises(BadFilter, match=r"needs a sign: \+"):
            cap.filter(since=bad)
    with pytest.raises(BadFilter, match="not an rcode"):
        cap.filter(rcode="BOGUS")
    with pytest.raises(BadFilter, match="is after until"):
        cap.filter(since="+5s", until="+2s")
    # -D counts back from the last message
    tx = cap.transactions
    last = cap.filter(since="-2s").transactions
    assert 0 < len(last) < len(tx)
    assert (last["ts"] >= tx["ts"].max() - pd.Timedelta(seconds=2.5)).all()
    assert len(cap.filter(rcode="servfail").transactions) == (
        tx["rcode_name"] == "SERVFAIL").sum()


def test_the_same_capture_twice_is_read_once_and_said(tmp_path: Path) -> None:
    one = load(SAMPLE, work_dir=tmp_path / "w")
    twice = load([SAMPLE, SAMPLE], work_dir=tmp_path / "w")
    assert len(twice.transactions) == len(one.transactions)
    assert any("same capture" in w for w in twice.input_notes)
    doc = twice.report(format="json", plots=False)
    assert "same capture" in doc


def test_replay_says_when_nothing_matches(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dnstrail.cli import main

    r = CliRunner().invoke(main, ["replay", str(SAMPLE), "--work-dir", str(tmp_path / "w"),
                                  "--pod", "no-such-pod-*"])
    assert r.exit_code == 0
    assert "no transactions match --pod no-such-pod-*" in r.stderr
    bad = CliRunner().invoke(main, ["replay", str(SAMPLE), "--work-dir", str(tmp_path / "w"),
                                    "--since", "10s"])
    assert bad.exit_code == 1 and "needs a sign" in bad.output


def test_a_filtered_report_says_it_is_filtered(tmp_path: Path) -> None:
    import json

    import html5lib
    from click.testing import CliRunner

    from dnstrail.cli import main

    base = ["report", str(SAMPLE), "--work-dir", str(tmp_path / "w")]
    whole = json.loads(CliRunner().invoke(main, base + ["--format", "json"]).stdout)
    r = CliRunner().invoke(main, base + ["--format", "json", "--rcode", "NXDOMAIN"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["summary"]["filters"] == {"rcode": "NXDOMAIN"}
    assert doc["summary"]["transactions"] == doc["summary"]["nxdomain"] > 0
    assert doc["summary"]["transactions"] < whole["summary"]["transactions"]
    assert whole["summary"]["filters"] == {}
    md = CliRunner().invoke(main, base + ["--format", "md", "--pod", "<b>*"]).stdout
    assert "> **Filtered report (pod=&lt;b&gt;\\*): only what matches" in md
    assert "<b>" not in md
    page = CliRunner().invoke(main, base + ["--format", "html", "--no-plots", "--pod",
                                            "<b>*"]).stdout
    tree = html5lib.parse(page, namespaceHTMLElements=False)
    banner = [el for el in tree.iter() if el.get("class") == "filtered"]
    assert banner and "pod=<b>*" in "".join(banner[0].itertext())
    assert not [el for el in tree.iter() if el.tag == "b"]


def _edit_manifest(directory: Path, **changes: object) -> None:
    import json

    m = json.loads((directory / "manifest.json").read_text())
    m.update(changes)
    (directory / "manifest.json").write_text(json.dumps(m))


def test_incomplete_evidence_is_said_first_in_every_output(sample: Path, tmp_path: Path) -> None:
    import json

    import html5lib
    from click.testing import CliRunner

    from dnstrail.cli import main

    lost = json.loads((sample / "manifest.json").read_text())["lost"]
    _edit_manifest(sample, status="running",           # the recorder died
                   lost=dict(lost, untracked_socket_io=3))  # and had lost events
    (next(sample.glob("connects-*.parquet"))).unlink()  # a file is gone
    base = ["--work-dir", str(tmp_path / "w")]
    r = CliRunner().invoke(main, ["report", str(sample), "--format", "json", *base])
    assert r.exit_code == 0, r.output
    comp = json.loads(r.stdout)["summary"]["completeness"]
    assert comp["complete"] is False and comp["verified"] is True
    text = "\n".join(comp["problems"])
    assert "still says 'running'" in text
    assert "connects-000001.parquet is listed in the manifest but missing" in text
    assert "untracked_socket_io" in text and "recorded with filters (pods" in text
    md = CliRunner().invoke(main, ["report", str(sample), "--format", "md", *base]).stdout
    first = md.splitlines()[2]
    assert first.startswith("> **Incomplete evidence:**")
    assert "still says 'running'" in md.split("## Summary")[0]
    page = CliRunner().invoke(main, ["report", str(sample), "--format", "html", "--no-plots",
                                     *base]).stdout
    tree = html5lib.parse(page, namespaceHTMLElements=False)
    body = tree.find("body")
    assert body is not None
    blocks = [el for el in body if el.tag != "h1"]
    assert blocks[0].get("class") == "incomplete"       # before anything else
    assert "missing" in "".join(blocks[0].itertext())
    rp = CliRunner().invoke(main, ["replay", str(sample), *base])
    assert rp.exit_code == 0
    assert "incomplete: " in rp.stderr and "running" in rp.stderr
    # --fail-on incomplete: exit 4; a complete capture exits 0
    fail = CliRunner().invoke(main, ["report", str(sample), "--format", "json",
                                     "--fail-on", "incomplete", *base])
    assert fail.exit_code == 4


def test_complete_evidence_has_no_banner_and_hostile_strings_stay_inert(
        sample: Path, tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from dnstrail.cli import main

    m = json.loads((sample / "manifest.json").read_text())
    filters = dict(m["filters"], pods=[], pod_uids=[])
    _edit_manifest(sample, lost={}, filters=filters)
    base = ["--work-dir", str(tmp_path / "w")]
    r = CliRunner().invoke(main, ["report", str(sample), "--format", "json",
                                  "--fail-on", "incomplete", *base])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["summary"]["completeness"] == {
        "complete": True, "verified": True, "problems": [], "problems_total": 0}
    md = CliRunner().invoke(main, ["report", str(sample), "--format", "md", *base]).stdout
    assert "Incomplete evidence" not in md
    _edit_manifest(sample, status="failed", error="disk \x1b[31mfull\x07 <script>x</script>")
    rp = CliRunner().invoke(main, ["replay", str(sample), *base])
    assert "\x1b" not in rp.stderr and "\x07" not in rp.stderr
    assert "\\x1b[31mfull" in rp.stderr
    page = CliRunner().invoke(main, ["report", str(sample), "--format", "html", "--no-plots",
                                     *base]).stdout
    assert "<script>x" not in page and "&lt;script&gt;x" in page


def test_pod_filter_takes_a_name_namespace_slash_name_or_a_uid(tmp_path: Path) -> None:
    cap = load(SAMPLE, work_dir=tmp_path / "w")
    tx = cap.transactions
    row = tx.dropna(subset=["pod"]).iloc[0]
    want = int((tx["pod"] == row["pod"]).sum())
    assert len(cap.filter(pod=str(row["pod"])).transactions) == want
    assert len(cap.filter(pod=f"{row['namespace']}/{row['pod']}").transactions) == want
    assert len(cap.filter(pod=f"{row['namespace']}/*").transactions) == int(
        (tx["namespace"] == row["namespace"]).sum())
    assert len(cap.filter(pod=str(row["pod_uid"]).upper()).transactions) == int(
        (tx["pod_uid"] == row["pod_uid"]).sum())
    assert len(cap.filter(pod=f"not-{row['namespace']}/{row['pod']}").transactions) == 0


def test_lookups_built_in_the_engine_are_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A big capture's lookups are grouped in the engine (analyze.lookups, out of core):
    the same lookups as the in-memory build."""
    from analyze import relate

    whole = load(SAMPLE, work_dir=tmp_path / "whole").lookups
    monkeypatch.setattr(relate, "LOOKUP_PART_ROWS", 40)
    cap = load(SAMPLE, work_dir=tmp_path / "parts")
    n = cap.count("transactions")
    assert n > 4 * 40  # really past the in-memory build
    split = cap.lookups
    assert len(split) == len(whole) > 20
    assert split["lookup_id"].tolist() == list(range(len(split)))
    assert split.drop(columns="lookup_id").astype(str).equals(
        whole.drop(columns="lookup_id").astype(str))
    # expanded lookups (the search walk) are among them, so the suffixes mattered
    assert (split["names"].map(len) >= 2).any()
