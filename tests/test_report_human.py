"""The report as a person reads it (issue 16): human units, sentences, tables and plot axes, on
the bundled sample capture and on the formatting helpers' edge cases."""

from __future__ import annotations

import json
import re
from pathlib import Path

import html5lib
import pytest
from matplotlib.figure import Figure

from analyze import load
from analyze.report import _human as hu
from analyze.report import render
from analyze.report.plots import bin_width, ms_axis

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "incident"


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    cap = load(SAMPLE, work_dir=tmp_path_factory.mktemp("work"))
    found = cap.findings()
    return {fmt: render(cap, found, fmt, plots=False) for fmt in ("md", "html", "json")}


def test_units() -> None:
    assert hu.count(1234567) == "1,234,567" and hu.count(0.10134) == "0.1013"
    assert hu.count(5474.0) == "5,474" and hu.count(12345.67) == "12,345.7"
    assert [hu.duration(x) for x in (0, 0.000024, 0.0066, 0.101, 1.5, 12.07, 30, 185, 7800)] \
        == ["0 s", "24 µs", "6.6 ms", "101 ms", "1.5 s", "12.1 s", "30 s", "3 min 5 s",
            "2 h 10 min"]
    assert hu.value(0.106, key="latency_ms") == "106 µs"
    assert hu.value(4026532174.0, key="netns") == "4026532174"   # an id, not a quantity
    assert hu.value(24951, key="pid") == "24951" and hu.value(24951) == "24,951"
    assert hu.value({"TXT": 90, "A": 2}) == "TXT: 90, A: 2"
    assert hu.when("2026-11-26T16:00:25.191134123+00:00") == "2026-11-26 16:00:25.191 UTC"
    assert hu.when("2026-11-26T16:00:25.191134123+00:00", day="2026-11-26",
                   digits=6) == "16:00:25.191134"
    assert hu.lost({"ringbuf_full": 0, "disk_full": 0}) == "No events lost."
    assert hu.lost({"ringbuf_full": 2, "disk_full": 0, "pending_full": 1500}) == \
        "1,502 events lost: 1,500 pending_full and 2 ringbuf_full."
    assert hu.severities({"high": 1, "medium": 0, "info": 2}, ("high", "medium", "info")) \
        == "3 findings: 1 high and 2 info."
    assert hu.label("median_interval_s") == "median interval" and hu.label("ts") == "time (UTC)"


def test_summary_in_human_units_in_markdown_and_html(sample: dict[str, str]) -> None:
    md = sample["md"]
    summary = md[md.index("## Summary"):md.index("## Findings")]
    assert "| capture span | 2026-12-08 00:09:35.482 to 00:10:11.483 UTC (36.0 s) |" in summary
    assert "| transactions | 507: 501 answered, 6 timed out, 0 answers without a query |" \
        in summary
    assert "| lost events | No events lost. |" in summary
    assert "| findings | 12 findings: 3 high, 3 medium, 2 low and 4 info. |" in summary
    assert "{" not in summary and "disk\\_full" not in summary      # no dict of zeros
    assert not re.search(r"\d{2}:\d{2}:\d{2}\.\d{7,}", md)           # no nanosecond stamps
    assert not re.search(r"\+00:00", md.split("_dnstrail")[0])       # no ISO stamps
    # the HTML's summary table has the same rows
    doc = html5lib.parse(sample["html"], namespaceHTMLElements=False)
    table = next(t for t in doc.iter("table") if "capture span" in "".join(t.itertext()))
    rows = {"".join(tr.find("th").itertext()): "".join(tr.find("td").itertext())
            for tr in table.iter("tr")}
    for line in summary.splitlines()[4:]:
        if line.startswith("| ") and line.count(" | ") == 1:
            key, value = line[2:-2].split(" | ")
            assert rows.pop(key) == value.replace("\\", ""), key
    assert rows == {}
    title = doc.find("head/title")
    assert title is not None and title.text == "dnstrail report 2026-12-08 00:09:35.482 UTC"


def test_top_tables(sample: dict[str, str]) -> None:
    md = sample["md"]
    assert "### Top talkers" in md and "### Top names" in md
    assert "| payments/cart-7c6b8d5f9-q4vnt | 242 | 0 | 0 | 2 | 204 µs |" in md
    assert "| redis.payments.svc.cluster.local | A, AAAA | 240 | 1 | 0 | 0 |" in md
    summary = json.loads(sample["json"])["summary"]
    assert summary["top_clients"][0]["client"] == "payments/cart-7c6b8d5f9-q4vnt"
    assert summary["top_names"][0] == {"name": "redis.payments.svc.cluster.local",
                                       "queries": 240, "clients": 1, "nxdomain": 0,
                                       "timeouts": 0, "qtypes": ["A", "AAAA"]}


def test_plot_axes() -> None:
    assert bin_width(12.07) == 0.5 and bin_width(0.02) == 0.001 and bin_width(3600) == 60
    assert bin_width(86400 * 30) >= 86400 * 30 / 60
    fig = Figure()
    ax = fig.subplots()
    ax.plot([0.024, 6.6], [0, 1])
    ms_axis(ax, 0.024, 6.6)
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.01 ms", "0.1 ms", "1 ms",
                                                           "10 ms"]
