"""Capture.findings_frame and Capture.lookups_with_connects on the bundled sample."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from analyze import load
from analyze.errors import BadFilter

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "incident"


@pytest.fixture(scope="module")
def cap():  # type: ignore[no-untyped-def]
    return load(SAMPLE)


def test_findings_frame_is_one_row_per_finding(cap) -> None:  # type: ignore[no-untyped-def]
    findings = cap.findings()
    ff = cap.findings_frame()
    assert len(ff) == len(findings)
    assert list(ff.columns) == ["kind", "severity", "subject", "namespace", "pod", "container",
                                "comm", "pid", "client", "domain", "count", "count_of",
                                "summary", "metrics", "evidence"]
    # most severe first
    ranks = ff["severity"].map(["info", "low", "medium", "high"].index).tolist()
    assert ranks == sorted(ranks, reverse=True)
    tunnel = ff[ff["kind"] == "tunneling"].iloc[0]
    assert tunnel["domain"] == "cdn-telemetry-sync.net"
    assert tunnel["subject"].startswith("batch/report-gen-28412-7hx2d (worker) python[")
    assert (tunnel["count"], tunnel["count_of"]) == (90, "queries")
    assert tunnel["summary"] == next(f.explanation for f in findings if f.kind == "tunneling")
    assert isinstance(tunnel["evidence"], list) and tunnel["evidence"][0]["query"]
    d2c = ff[(ff["kind"] == "dns_to_connect") & (ff["pod"] == "checkout-5b7d9f6c4-m8wzr")].iloc[0]
    assert (d2c["pod"], d2c["domain"], d2c["count"], d2c["count_of"]) == (
        "checkout-5b7d9f6c4-m8wzr", "api.stripe.com", 3, "connects_after_answer")
    # given findings are shown as they are
    only = [f for f in findings if f.kind == "cache_miss"]
    assert cap.findings_frame(only)["kind"].tolist() == ["cache_miss"]
    assert cap.findings_frame([]).empty


def test_lookups_with_connects_on_the_sample(cap) -> None:  # type: ignore[no-untyped-def]
    lc = cap.lookups_with_connects()
    # checkout resolves api.stripe.com three times and connects to the answer on port 8080;
    # cart's datadog-agent sidecar resolves its intake once and connects (Go: non-blocking)
    assert len(lc) == 4
    who = list(zip(lc["pod"].astype(str), lc["container"].astype(str),
                   lc["final_name"].str.rstrip("."), lc["connect_result"]))
    assert sorted(who) == sorted(
        [("checkout-5b7d9f6c4-m8wzr", "checkout", "api.stripe.com", "ok")] * 3
        + [("cart-7c6b8d5f9-q4vnt", "datadog-agent", "intake.metrics-collector.example",
            "EINPROGRESS")])
    assert set(lc["connect_port"]) == {8080}
    assert (lc["connect_addr"] == lc["answer"]).all()
    assert all(a in list(ips) for a, ips in zip(lc["answer"], lc["answer_ips"]))
    assert (lc["delay_ms"] > 0).all() and (lc["delay_ms"] < 10).all()
    assert (lc["connect_ts"] >= lc["ts"]).all()
    assert lc["connect_ts"].is_monotonic_increasing
    # the same connects and delays the dns_to_connect findings judged: one join, not two
    d2c = [f for f in cap.findings() if f.kind == "dns_to_connect"]
    assert sorted(str(f.pod) for f in d2c) == ["cart-7c6b8d5f9-q4vnt", "checkout-5b7d9f6c4-m8wzr"]
    assert sorted(lc["delay_ms"]) == sorted(e["delay_ms"] for f in d2c for e in f.evidence)

    # the debug shell's hard-coded connects follow no lookup
    assert "debug-shell" not in set(lc["pod"].astype(str))
    # a window shorter than the delays keeps nothing
    assert cap.lookups_with_connects(within=0.00001).empty
    everything = cap.lookups_with_connects(unmatched=True)
    assert len(everything) == len(cap.lookups)
    assert everything["connect_ts"].iloc[:4].notna().all()
    assert everything["connect_ts"].iloc[4:].isna().all()
    with pytest.raises(BadFilter):
        cap.lookups_with_connects(within=-1)


def test_lookups_with_connects_follows_the_filters(cap) -> None:  # type: ignore[no-untyped-def]
    assert cap.filter(namespace="monitoring").lookups_with_connects().empty
    payments = cap.filter(namespace="payments").lookups_with_connects()
    assert list(payments["container"].astype(str)) == ["datadog-agent"]
    shop = cap.filter(pod="checkout-*").lookups_with_connects()
    assert len(shop) == 3 and isinstance(shop, pd.DataFrame)
