"""analyze.load on real packet captures (../shared/corpus) imported with analyze.pcap."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from analyze import Capture, load
from analyze.capture import CaptureDamaged, CaptureNotFound, CaptureTooNew, NotACapture
from analyze.pcap import import_pcap
from dnstrail.errors import DnstrailError
from tests.corpus import corpus

pytestmark = pytest.mark.corpus




@pytest.fixture
def lab_capture(tmp_path: Path) -> Path:
    out = tmp_path / "dns_lab"
    import_pcap(corpus("benign/dns_lab.pcapng"), out)
    return out


def test_dns_lab_latencies_match_the_pcap(lab_capture: Path) -> None:
    cap = load(lab_capture)
    tx = cap.transactions
    assert isinstance(cap, Capture)
    assert len(tx) == 11
    assert set(tx["status"]) == {"answered"}
    assert set(tx["side"]) == {"wire"}
    ok = tx[tx["rcode_name"] == "NOERROR"]
    assert len(ok) == 10
    # the corpus README: RTTs 25-83 ms
    assert ok["latency_s"].min() >= 0.025
    assert ok["latency_s"].max() <= 0.084
    nx = tx[tx["rcode_name"] == "NXDOMAIN"]
    assert len(nx) == 1 and nx["qname"].iloc[0] == "test.chrissanders.org"
    # every message in one transaction; roles from the wire
    assert set(cap.messages["role"]) == {"query", "response"}
    assert cap.messages["txn_id"].notna().all()
    assert tx["query_msg_id"].notna().all() and tx["response_msg_id"].notna().all()
    assert cap.errors == 0
    assert cap.messages["msg_id"].is_unique


def test_pcap_path_loads_directly() -> None:
    cap = load(corpus("benign/dns_lab.pcapng"))
    assert len(cap.transactions) == 11
    assert cap.manifests[0]["source"] == "pcap"


def test_dns_over_tcp_is_matched() -> None:
    cap = load(corpus("benign/dns_tcp.pcapng"))
    tx = cap.transactions.set_index("protocol")
    # the UDP answer is truncated (TC), the client asks again over TCP
    assert sorted(tx.index) == ["tcp", "udp"]
    assert bool(tx.loc["udp", "tc"]) and not bool(tx.loc["tcp", "tc"])
    assert (tx["status"] == "answered").all()
    assert (tx["latency_s"] > 0).all()
    assert tx.loc["tcp", "ts"] > tx.loc["udp", "response_ts"]
    # one resolver call: a truncated answer is not final
    assert len(cap.lookups) == 1 and cap.lookups["n_queries"].iloc[0] == 2


def test_several_captures_load_together(tmp_path: Path, lab_capture: Path) -> None:
    other = tmp_path / "iodine"
    import_pcap(corpus("tunnels/iodine.pcap"), other)
    a, b = load(lab_capture), load(other)
    both = load([lab_capture, other])
    assert len(both.messages) == len(a.messages) + len(b.messages)
    assert len(both.transactions) == len(a.transactions) + len(b.transactions)
    assert both.messages["msg_id"].is_unique
    assert set(both.messages["capture"]) == {str(lab_capture), str(other)}
    assert len(both.manifests) == 2
    # ids in transactions point at rows of this messages table
    ids = set(both.messages["msg_id"])
    assert set(both.transactions["query_msg_id"].dropna()) <= ids


def test_filters(lab_capture: Path) -> None:
    cap = load(lab_capture)
    g = cap.filter(name="*.google.com")
    assert set(g.transactions["qname"]) == {"notifications.google.com", "play.google.com"}
    nx = cap.filter(rcode="NXDOMAIN")
    assert list(nx.transactions["qname"]) == ["test.chrissanders.org"]
    assert len(nx.messages) == 2          # the query travels with its NXDOMAIN answer
    assert set(nx.messages["txn_id"]) == set(nx.transactions["txn_id"])
    start = cap.start
    assert start is not None
    early = cap.filter(until="+2s")
    late = cap.filter(since="+2s")
    assert len(early.transactions) + len(late.transactions) == len(cap.transactions)
    assert len(early.transactions) == 9 and len(late.transactions) == 2
    iso = cap.filter(since=late.transactions["ts"].min().isoformat())
    assert len(iso.transactions) == 2
    assert len(cap.filter(rcode=3).transactions) == 1
    assert len(cap.filter(pid=1).transactions) == 0    # pcaps have no processes
    assert cap.filter(name="*.google.com").lookups["final_name"].tolist() == [
        "notifications.google.com", "play.google.com"]
    with pytest.raises(DnstrailError):
        cap.filter(since="yesterday-ish")


def test_by_pod_summarises_clients(lab_capture: Path) -> None:
    summary = load(lab_capture).by_pod()
    assert summary["transactions"].sum() == 11
    assert summary["nxdomain"].sum() == 1


def test_missing_and_non_capture_paths(tmp_path: Path) -> None:
    with pytest.raises(CaptureNotFound, match="no such"):
        load(tmp_path / "nope")
    with pytest.raises(NotACapture, match="not a dnstrail capture"):
        load(tmp_path)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello")
    with pytest.raises(NotACapture):
        load(junk)
    assert issubclass(CaptureNotFound, DnstrailError)


def test_newer_schema_is_refused(lab_capture: Path) -> None:
    manifest = lab_capture / "manifest.json"
    data = json.loads(manifest.read_text())
    data["schema_version"] = 99
    manifest.write_text(json.dumps(data))
    with pytest.raises(CaptureTooNew, match="newer"):
        load(lab_capture)


def test_damaged_file_is_detected_and_tmp_files_ignored(lab_capture: Path) -> None:
    (lab_capture / ".tmp-messages-000002.parquet").write_bytes(b"half-written")
    assert len(load(lab_capture).transactions) == 11      # .tmp- files are not read
    victim = lab_capture / "messages-000001.parquet"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(CaptureDamaged, match="sha256"):
        load(lab_capture)
    # verify=False reads what it can; a Parquet file this damaged is still an error
    try:
        cap = load(lab_capture, verify=False)
    except CaptureDamaged:
        pass
    else:
        assert isinstance(cap.messages, pd.DataFrame)


def test_empty_capture_has_empty_tables(tmp_path: Path) -> None:
    import pyarrow as pa

    from analyze.pcap import write_capture
    from capture.schema import MESSAGES_SCHEMA

    out = write_capture(tmp_path / "empty", MESSAGES_SCHEMA.empty_table())
    cap = load(out)
    assert len(cap.messages) == 0 and len(cap.transactions) == 0 and len(cap.lookups) == 0
    assert isinstance(pa.__version__, str)
