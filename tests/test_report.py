"""Reports: HTML that stays text whatever the wire says, Markdown escaping, JSON schema, CLI."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import html5lib
import jsonschema
import pytest
from click.testing import CliRunner
from dnslib import QTYPE, RR, TXT, DNSRecord

from analyze import load
from analyze.findings import find
from analyze.report import render
from analyze.report.schema import REPORT_SCHEMA
from dnstrail.cli import main
from tests.corpus import CORPUS
from tests.test_findings_wire import T0, Proc, Wire, busy_node, tunnel_client

#: Labels an attacker controls, each exactly as it goes on the wire.
HOSTILE = [
    b"<script>alert(1)</script>",
    b"\"onmouseover='x'",
    b"line1\nline2\r",
    b"raw\x00\xff\x7fbytes",
    b"pipe|`code`*em*[l](u)",
]


def _hostile_exchange(label: bytes, filler: str) -> tuple[bytes, bytes]:
    """A real query and answer for PLACEHOLDER.filler.evil-example.com, label bytes swapped in.

    dnslib builds both messages for a placeholder label of the same length; the bytes of the
    placeholder are then replaced in the wire data (the answer's owner name is a compression
    pointer to the question, so only the question's copy holds the label).
    """
    placeholder = "a" * len(label)
    q = DNSRecord.question(f"{placeholder}.{filler}.evil-example.com", "TXT")
    r = q.reply()
    r.add_answer(RR(q.q.qname, QTYPE.TXT, rdata=TXT("<img src=x onerror=alert(2)>"), ttl=5))
    out = []
    for wire in (q.pack(), r.pack()):
        i = wire.index(placeholder.encode())
        assert wire[i - 1] == len(label) and wire.count(placeholder.encode()) == 1
        out.append(wire[:i] + label + wire[i + len(label):])
    return out[0], out[1]


@pytest.fixture(scope="module")
def hostile_capture(tmp_path_factory: pytest.TempPathFactory) -> Any:
    rng = random.Random(5)
    wire = Wire()
    proc = Proc(4001, "x$\\bad{<b>$_", "10.244.2.2")  # comm is the process's to choose
    for i in range(8):  # at most 8 evidence rows: every hostile label is in the finding
        label = HOSTILE[i % len(HOSTILE)]
        filler = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(50))
        query, resp = _hostile_exchange(label, filler)
        t = T0 + i * 500_000_000
        wire._row(proc, t, query, "send", "sendto", proc.addr, 40000 + i, "10.96.0.10", 53)
        wire._row(proc, t + 1_000_000, resp, "recv", "recvfrom", "10.96.0.10", 53,
                  proc.addr, 40000 + i)
    cap = load(wire.write(tmp_path_factory.mktemp("hostile") / "cap"))
    return cap


def test_hostile_names_are_in_a_finding(hostile_capture: Any) -> None:
    qnames = set(hostile_capture.transactions["qname"])
    assert any("<script>alert(1)</script>" in q for q in qnames)
    findings = find(hostile_capture)
    tun = [f for f in findings if f.kind == "tunneling"]
    assert tun and tun[0].registered_domain == "evil-example.com"
    assert len(tun[0].evidence) == 8
    assert any("<script>" in e["query"] for e in tun[0].evidence)


def _elements(doc: Any) -> list[Any]:
    return list(doc.iter())


def test_html_renders_wire_strings_as_text(hostile_capture: Any, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    findings = find(hostile_capture)
    text = render(hostile_capture, findings, None, out)
    assert out.read_text() == text
    doc = html5lib.parse(text, namespaceHTMLElements=False)
    tags = [el.tag for el in _elements(doc)]
    assert "script" not in tags and "iframe" not in tags and "link" not in tags
    # only our own images, all embedded
    imgs = [el for el in _elements(doc) if el.tag == "img"]
    assert imgs and all(el.get("src", "").startswith("data:image/png;base64,") for el in imgs)
    for el in _elements(doc):
        for attr in el.attrib:
            assert not attr.lower().startswith("on"), (el.tag, attr)
    body_text = "".join(doc.itertext())
    assert "<script>alert(1)</script>" in body_text  # shown, as text
    assert "<img src=x onerror=alert(2)>" in body_text
    # raw bytes and line breaks of the wire are visible escapes, never raw characters
    assert "\x00" not in text and "\xff" not in text and "\x7f" not in text
    cells = [("".join(el.itertext())) for el in _elements(doc)
             if el.tag == "td" and "line1" in "".join(el.itertext())]
    assert cells and all("\n" not in c and "\r" not in c for c in cells)
    assert not re.search(r"https?://", text.replace("https://json-schema.org", ""))


def test_markdown_escapes_wire_strings(hostile_capture: Any) -> None:
    md = render(hostile_capture, find(hostile_capture), "md")
    assert "<script>" not in md and "<img" not in md
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert "\x00" not in md and "\r" not in md
    rows = [ln for ln in md.splitlines() if ln.startswith("|") and "pipe" in ln]
    assert rows
    assert all("pipe\\|\\`code\\`\\*em\\*\\[l\\](u)" in ln for ln in rows)
    assert any(ln.startswith("| time (UTC) | query | answer") for ln in md.splitlines())


def test_markdown_table_rows_keep_their_width(hostile_capture: Any) -> None:
    md = render(hostile_capture, find(hostile_capture), "md").splitlines()
    i = 0
    while i < len(md):
        if md[i].startswith("|") and i + 1 < len(md) and md[i + 1].startswith("|---"):
            width = len(re.split(r"(?<!\\)\|", md[i]))
            j = i + 2
            while j < len(md) and md[j].startswith("|"):
                assert len(re.split(r"(?<!\\)\|", md[j])) == width, md[j]
                j += 1
            i = j
        else:
            i += 1


def test_json_report_matches_its_schema(hostile_capture: Any) -> None:
    text = render(hostile_capture, find(hostile_capture), "json")
    doc = json.loads(text)
    jsonschema.validate(doc, REPORT_SCHEMA)
    assert doc["schema_version"] == 1
    assert doc["summary"]["transactions"] == 8
    f = doc["findings"][0]
    assert set(f) >= {"kind", "severity", "namespace", "pod", "container", "comm", "pid",
                      "client", "domain", "registered_domain", "explanation", "metrics",
                      "evidence"}
    ev = f["evidence"][0]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", ev["ts"])
    assert text.isascii()


def test_summary_shows_lost_events(hostile_capture: Any, tmp_path: Path) -> None:
    import shutil

    lossy_dir = tmp_path / "lossy"
    shutil.copytree(hostile_capture.manifests[0]["path"], lossy_dir)
    manifest = json.loads((lossy_dir / "manifest.json").read_text())
    manifest["lost"] = {"ringbuf_full": 17, "payload_unreadable": 0}
    (lossy_dir / "manifest.json").write_text(json.dumps(manifest))
    lossy = load(lossy_dir)
    html = render(lossy, [], "html", plots=False)
    doc = html5lib.parse(html, namespaceHTMLElements=False)
    lost = [el for el in doc.iter() if el.get("class") == "lost"]
    assert lost and "17" in "".join(lost[0].itertext())
    text = render(lossy, [], "md")
    # losses as a sentence, only the causes that lost something (no dict of zeros)
    assert "17 events lost: 17 ringbuf\\_full." in text
    assert "payload\\_unreadable" not in text
    assert json.loads(render(lossy, [], "json"))["summary"]["lost_total"] == 17
    clean = render(hostile_capture, [], "html", plots=False)
    assert 'class="lost"' not in clean


@pytest.fixture(scope="module")
def tunnel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(3)
    wire = Wire()
    tunnel_client(wire, rng, "t.exfil-example.com", T0)
    return wire.write(tmp_path_factory.mktemp("tun") / "cap")


@pytest.fixture(scope="module")
def benign_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wire = Wire()
    busy_node(wire, random.Random(9))
    return wire.write(tmp_path_factory.mktemp("benign") / "cap")


def test_cli_fail_on(tunnel_dir: Path, benign_dir: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["report", str(tunnel_dir), "--format", "json", "--fail-on", "high"])
    assert r.exit_code == 3, r.output
    assert json.loads(r.stdout)["findings"][0]["kind"] == "tunneling"
    r = runner.invoke(main, ["report", str(benign_dir), "--format", "json", "--fail-on", "medium"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["report", str(benign_dir), "--fail-on", "info", "--format", "md"])
    assert r.exit_code in (0, 3)
    assert r.stdout.startswith("# dnstrail report")


def test_cli_output_format_from_suffix(tunnel_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    for suffix, check in ((".html", "<!DOCTYPE html>"), (".md", "# dnstrail report"),
                          (".json", '"schema_version": 1')):
        out = tmp_path / f"r{suffix}"
        r = runner.invoke(main, ["report", str(tunnel_dir), "-o", str(out)])
        assert r.exit_code == 0, r.output
        assert check in out.read_text()
        assert "findings" in r.stderr
    r = runner.invoke(main, ["report", str(tunnel_dir), "-o", str(tmp_path / "r.txt")])
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: ") and "suffix" in r.stderr


@pytest.mark.corpus
@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not present at {CORPUS}")
def test_cli_fail_on_corpus() -> None:
    runner = CliRunner()
    tunnel = CORPUS / "tunnels" / "dnscat2.pcap"
    benign = CORPUS / "benign" / "dns_lab.pcapng"
    r = runner.invoke(main, ["report", str(tunnel), "--fail-on", "high", "--format", "json"])
    assert r.exit_code == 3, r.output
    r = runner.invoke(main, ["report", str(benign), "--fail-on", "high", "--format", "json"])
    assert r.exit_code == 0, r.output


def test_cli_baseline_and_allow(benign_dir: Path, tmp_path: Path) -> None:
    from tests.test_findings_wire import _with_new_domain

    current = _with_new_domain(tmp_path / "cap", seed=9)  # benign_dir is seed 9
    runner = CliRunner()
    r = runner.invoke(main, ["report", str(current), "--baseline", str(benign_dir),
                             "--format", "json", "--fail-on", "medium"])
    assert r.exit_code == 3, r.output
    kinds = {(f["kind"], f["registered_domain"]) for f in json.loads(r.stdout)["findings"]
             if f["severity"] == "medium"}
    assert kinds == {("new_domain", "evil-new.com"), ("new_domain_connect", "evil-new.com")}
    bad = tmp_path / "allow.txt"
    bad.write_text("just-one-field\n")
    r = runner.invoke(main, ["report", str(current), "--allow", str(bad)])
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: ") and "allow.txt:1" in r.stderr
