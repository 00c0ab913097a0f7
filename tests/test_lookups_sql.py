"""The engine's lookups (analyze.lookups) against the in-memory build (reconstruct.build_lookups)
on real captures: the bundled sample, corpus pcaps and a generated node; and relate choosing
the engine for a capture larger than one in-memory build."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from analyze import load, relate
from analyze.lookups import lookups_sql
from tests.corpus import corpus

REPO = Path(__file__).resolve().parents[1]


def _plain(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT:
        return None
    if hasattr(v, "__len__") and not isinstance(v, str):
        return [_plain(x) for x in v]
    return v


def _rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    df = df.drop(columns=["lookup_id"])
    return [{k: _plain(v) for k, v in r.items()} for r in df.to_dict("records")]


def _both(capture: Path, tmp: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    cap = load(capture, work_dir=tmp / "work")
    tx = cap._ctx.related.file("transactions")
    con = relate.connect(cap._ctx.work)
    try:
        lookups_sql(con, f"SELECT * FROM read_parquet({relate.quote(str(tx))})",
                    str(tmp / "sql.parquet"), gap_s=cap.lookup_gap_s, timeout_s=cap.timeout_s)
    finally:
        con.close()
    return cap.lookups, pq.read_table(tmp / "sql.parquet").to_pandas()


def _dedup(ips: list[str] | None) -> list[str]:
    return list(dict.fromkeys(ips or []))


@pytest.mark.parametrize("capture", [
    "samples/incident", "tunnels/sods.pcap", "tunnels/dns2tcp.pcap", "tunnels/iodine.pcap",
    "benign/http_espn.pcapng", "benign/dns_axfr.pcapng", "benign/dns_lab.pcapng",
])
def test_engine_lookups_equal_the_in_memory_build(capture: str, tmp_path: Path) -> None:
    path = REPO / capture if capture.startswith("samples") else corpus(capture)
    mem, sql = _both(path, tmp_path)
    assert len(mem) > 0
    a, b = _rows(mem), _rows(sql)
    # the engine lists an answer once per lookup (the in-memory build keeps repeats within
    # one response, e.g. an AXFR's): the same addresses in the same order otherwise
    for r in a:
        r["answer_ips"] = _dedup(r["answer_ips"])
    assert a == b
    assert sql["lookup_id"].tolist() == list(range(len(sql)))


def test_relate_groups_a_large_capture_in_the_engine(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """More client transactions than one in-memory build: the engine groups them, and the
    lookups (and so the findings built on them) are those of the in-memory build."""
    gen = REPO / "benchmarks" / "gen_capture.py"
    out = tmp_path / "gen"
    subprocess.run([sys.executable, str(gen), "-o", str(out), "--messages", "30000"],
                   check=True, capture_output=True, timeout=300)
    small = load(out, work_dir=tmp_path / "w1").lookups
    monkeypatch.setattr(relate, "LOOKUP_PART_ROWS", 1000)
    big = load(out, work_dir=tmp_path / "w2").lookups
    assert len(small) > 1000
    a, b = _rows(small), _rows(big)
    for r in a:
        r["answer_ips"] = _dedup(r["answer_ips"])
    assert a == b


def test_the_engine_aggregates_lookups_in_batches_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-lookup aggregates run in batches of AGG_ROWS transactions (list states do not
    spill): many batches give the lookups one batch gives."""
    from analyze import lookups

    path = REPO / "samples" / "incident"
    mem, one = _both(path, tmp_path / "one")
    monkeypatch.setattr(lookups, "AGG_ROWS", 7)
    _, many = _both(path, tmp_path / "many")
    assert len(mem) > 4 * 7  # really many batches
    assert _rows(many) == _rows(one)
    assert many["lookup_id"].tolist() == list(range(len(many)))


def test_a_filtered_capture_groups_its_lookups_in_the_engine_when_large(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filter keeps more client transactions than one in-memory build: the filtered
    lookups come from the engine and equal the in-memory ones, through every accessor."""
    sample = REPO / "samples" / "incident"
    small = load(sample, work_dir=tmp_path / "w").filter(namespace="shop")
    expect = _rows(small.lookups)
    n = small.count("lookups")
    monkeypatch.setattr(relate, "LOOKUP_PART_ROWS", 5)
    big = load(sample, work_dir=tmp_path / "w").filter(namespace="shop")
    assert big.count("lookups") == n > 5
    got = _rows(big.lookups)
    for r in expect:
        r["answer_ips"] = _dedup(r["answer_ips"])
    assert got == expect
    names = big.sql("SELECT count(*) AS n FROM lookups WHERE n_nxdomain > 0")["n"].iloc[0]
    assert names == sum(1 for r in expect if r["n_nxdomain"] > 0)


def _txn_rows(cap: Any) -> list[dict[str, Any]]:
    tx = cap.transactions
    return [{k: _plain(v) for k, v in r.items()} for r in tx.to_dict("records")]


@pytest.mark.parametrize("capture", [
    "samples/incident", "tunnels/iodine.pcap", "benign/dns_tcp.pcapng",
    "benign/dns_lab.pcapng", "benign/http_espn.pcapng",
])
def test_matching_in_partitions_gives_the_same_transactions(
        capture: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """relate matches one partition of (name, id) at a time once a capture is large: the
    transactions, their numbering and every message's transaction are those of one pass."""
    path = REPO / capture if capture.startswith("samples") else corpus(capture)
    whole = load(path, work_dir=tmp_path / "whole")
    n = whole.count("messages")
    a = _txn_rows(whole)  # relate runs here, before the patch
    assert n >= 4
    monkeypatch.setattr(relate, "PART_ROWS", max(1, n // 6))  # several partitions
    split = load(path, work_dir=tmp_path / "split")
    b = _txn_rows(split)
    assert len(a) == len(b) >= 2
    assert a == b
    mt = [pq.read_table(c._ctx.related.file("message_txn")).to_pylist() for c in (whole, split)]
    assert mt[0] == mt[1] and len(mt[0]) >= 4
