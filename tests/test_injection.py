"""Hostile names stay inert in every output: replay, the reports and every export.

The capture (tests/test_export.py ``wire_capture``) holds real DNS messages whose names and TXT
strings carry HTML (``<script>``, ``<img onerror>``), Markdown links and pipes, terminal escape
sequences (CSI colour, OSC title), spreadsheet formulas and bytes that are not UTF-8, asked by
a process whose name is itself an escape sequence. Each output is parsed by a real parser
(html.parser, csv, json, a Zeek log reader, dpkt's pcapng reader) and checked for anything
live; each check also finds the hostile text shown, so it cannot pass by dropping it.
"""

from __future__ import annotations

import csv
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from analyze import load
from analyze.export import export
from dnstrail.cli import main
from tests.test_export import wire_capture

FORMULA = ("=", "+", "-", "@", "\t", "\r")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("hostile")
    allow = base / "allow.txt"
    allow.write_text("* example.com\n")  # every hostile domain is then a new_domain finding
    return {"cap": wire_capture(base / "cap"), "work": base / "work", "allow": allow,
            "base": base}


def _run(args: list[str]) -> Any:
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def _no_controls(text: str, what: str, allowed: str = "\n") -> None:
    bad = sorted({f"{ord(c):#04x}" for c in text if (ord(c) < 0x20 and c not in allowed)
                  or 0x7F <= ord(c) < 0xA0})
    assert not bad, f"{what}: raw control characters {bad}"


@pytest.mark.parametrize("extra", [[], ["--lookups"], ["--messages"], ["--width", "200"]])
def test_replay_table_sends_no_escape_to_the_terminal(extra: list[str],
                                                      hostile: dict[str, Path]) -> None:
    res = _run(["replay", str(hostile["cap"]), "--work-dir", str(hostile["work"]), *extra])
    _no_controls(res.stdout, "replay")
    assert "\x1b" not in res.stdout
    assert "<script>" in res.stdout  # shown, as text
    assert "\\x1b[31m" in res.stdout or "\\x1b" in res.stdout  # the comm, made visible


def test_replay_jsonl_is_escaped_json(hostile: dict[str, Path]) -> None:
    res = _run(["replay", str(hostile["cap"]), "--format", "jsonl",
                "--work-dir", str(hostile["work"])])
    _no_controls(res.stdout, "replay jsonl")
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert any(r.get("comm") == "\x1b[31m=evil|<b>" for r in rows)  # full fidelity, escaped


class _Html(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []
        self._in: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))
        self._in.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_report_has_no_live_markup(hostile: dict[str, Path]) -> None:
    out = hostile["base"] / "r.html"
    _run(["report", str(hostile["cap"]), "--allow", str(hostile["allow"]), "-o", str(out),
          "--work-dir", str(hostile["work"])])
    html = out.read_text(encoding="utf-8")
    _no_controls(html, "html")
    p = _Html()
    p.feed(html)
    names = {t for t, _ in p.tags}
    assert "script" not in names and "iframe" not in names and "a" not in names
    # only the tags dnstrail ships: those of the bundled sample's report (findings, plots)
    shipped = hostile["base"] / "sample.html"
    _run(["report", str(Path(__file__).resolve().parent.parent / "samples" / "incident"),
          "-o", str(shipped), "--work-dir", str(hostile["work"])])
    q = _Html()
    q.feed(shipped.read_text(encoding="utf-8"))
    assert names <= {t for t, _ in q.tags}, names - {t for t, _ in q.tags}
    for tag, attrs in p.tags:
        for key, value in attrs:
            assert not key.startswith("on"), (tag, key)
            if key in ("src", "href"):
                assert (value or "").startswith("data:image/"), (tag, key, value)
    text = "".join(p.text)
    assert "<script>alert(1)</script>.com" in text  # the name, shown as text
    assert "<img src=x onerror=alert(1)>" in text
    assert "\\x1b[31m=evil|<b>" in text  # the comm, its escape made visible


def _md_cells(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def test_markdown_report_has_no_live_markup(hostile: dict[str, Path]) -> None:
    res = _run(["report", str(hostile["cap"]), "--allow", str(hostile["allow"]),
                "--format", "md", "--work-dir", str(hostile["work"])])
    md = res.stdout
    _no_controls(md, "markdown")
    assert "findings" in md.lower() and "script" in md
    assert not re.search(r"(?<!\\)<[A-Za-z/!?]", md), "a raw HTML tag in Markdown"
    assert not re.search(r"(?<!\\)\[[^\]\n]*(?<!\\)\]\(", md), "a live Markdown link"
    # every table keeps its column count: a '|' from the wire is escaped
    table: int | None = None
    for line in md.splitlines():
        if line.startswith("|"):
            n = _md_cells(line)
            table = n if table is None else table
            assert n == table, line
        else:
            table = None
    assert "javascript:alert(1)" in md  # shown, inert


def test_json_report_round_trips_the_names(hostile: dict[str, Path]) -> None:
    res = _run(["report", str(hostile["cap"]), "--allow", str(hostile["allow"]),
                "--format", "json", "--work-dir", str(hostile["work"])])
    _no_controls(res.stdout, "json report")
    doc = json.loads(res.stdout)
    assert any("<script>alert(1)</script>.com" in json.dumps(f, ensure_ascii=False)
               for f in doc["findings"])


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "zeek", "pcapng"])
def test_exports_are_inert(fmt: str, hostile: dict[str, Path]) -> None:
    cap = load(hostile["cap"], work_dir=hostile["work"])
    out = export(cap, hostile["base"] / f"x.{fmt}", fmt).path
    if fmt == "pcapng":
        comments = _pcapng_comments(out)
        assert comments and all(c.isascii() for c in comments)
        for c in comments:
            _no_controls(c.replace("\n", " "), "pcapng comment")
        assert any("process=\\x1b[31m=evil|<b>" in c for c in comments)
        return
    raw = out.read_bytes()
    text = raw.decode("utf-8")
    _no_controls(text, fmt, "\n\t" if fmt == "zeek" else "\n")  # tab: Zeek's separator
    if fmt == "csv":
        with open(out, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        cells = [c for row in rows for c in row]
        assert not [c for c in cells if c.startswith(FORMULA)], "a formula-leading cell"
        assert "'=cmd|'\\032/c\\032calc'!a0.com" in cells  # neutralized, still readable
        assert "'+1+1.com" in cells and "'-2.com" in cells and "'@sum(1).com" in cells
        assert "'\\x1b[31m=evil|<b>" not in cells and "\\x1b[31m=evil|<b>" in cells
    elif fmt == "jsonl":
        assert raw.isascii()
        rows = [json.loads(line) for line in text.splitlines()]
        assert {r["comm"] for r in rows} >= {"\x1b[31m=evil|<b>"}
        assert any(r["qname"] == "<script>alert(1)</script>.com" for r in rows)
    else:
        from parsezeeklogs import ZeekLog

        assert raw.isascii()
        from analyze.export import ZEEK_FIELDS

        assert all(line.count("\t") == len(ZEEK_FIELDS) - 1 for line in text.splitlines()
                   if not line.startswith("#"))
        with ZeekLog(out) as log:
            queries = [r["query"] for r in log]
        assert "<script>alert(1)</script>.com" in queries
        assert "\\009tab.\\013cr.com" in queries


def _pcapng_comments(path: Path) -> list[str]:
    """Every packet comment (option 1 of an enhanced packet block), read with dpkt."""
    from dpkt import pcapng as P

    out = []
    data = Path(path).read_bytes()
    pos = 0
    while pos + 12 <= len(data):
        btype = int.from_bytes(data[pos:pos + 4], "little")
        blen = int.from_bytes(data[pos + 4:pos + 8], "little")
        if btype == P.PCAPNG_BT_EPB:
            epb = P.EnhancedPacketBlockLE(data[pos:pos + blen])
            out.extend(o.text for o in epb.opts if o.code == P.PCAPNG_OPT_COMMENT)
        pos += blen
    return out
