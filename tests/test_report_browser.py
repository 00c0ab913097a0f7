"""The HTML report in a real browser (Debian's chromium-headless-shell): it renders, runs no
script it did not ship (it ships none), and fetches nothing, whatever names the capture holds.

Chromium runs with every host name mapped to "not found" (no DNS query leaves the test) and a
network log; a control page without the report's Content-Security-Policy shows that the log
does see a fetch, so the report's empty log is a result, not a blind spot.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import html5lib
import pytest

from analyze import load
from analyze.findings import find
from analyze.report import render
from tests.conftest import ci_strict
from tests.test_findings_wire import T0, Proc, Wire

BROWSER = "chromium-headless-shell"
SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "incident"

#: Labels that would run or fetch if the report let them be markup (no dots: one label each).
#: (A space would be shown as \032, the presentation format, so ``/`` separates attributes.)
HOSTILE = [
    b"<script>document['title']='pwned'</script>",
    b"<img/src='x'/onerror=document['title']='pwned'>",
    b"<img/src=//localhost:9/leak>",
    b"<svg/onload=document['title']='pwned'>",
    b"\"><iframe/src=//localhost:9/frame>",
]


def _browser() -> str:
    path = shutil.which(BROWSER)
    if path is None:
        if ci_strict():
            pytest.fail(f"CI=true: {BROWSER} is not installed (deploy/setup.sh --lab installs it)")
        pytest.skip(f"{BROWSER} is not installed (deploy/setup.sh --lab installs it)")
    return path


def _chromium(page: Path, tmp: Path, *args: str) -> tuple[str, list[dict[str, Any]]]:
    """Load ``page``; return the DOM after its scripts (if any) ran, and the network log's
    URL requests."""
    netlog = tmp / f"{page.stem}.netlog.json"
    profile = tmp / f"{page.stem}.profile"
    cmd = [_browser(), "--headless", "--no-sandbox", "--disable-gpu",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--disable-background-networking",
           "--no-first-run", "--disable-component-update", f"--user-data-dir={profile}",
           f"--log-net-log={netlog}", "--virtual-time-budget=3000", *args, page.as_uri()]
    env = dict(os.environ, HOME=str(tmp))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=True)
    log = json.loads(netlog.read_text())
    kinds = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    requests = [e.get("params", {}) for e in log["events"]
                if kinds.get(e["type"]) in ("URL_REQUEST_START_JOB", "REQUEST_ALIVE")
                and e.get("params", {}).get("url")]
    return out.stdout, requests


def _hostile_exchange(label: bytes, filler: str) -> tuple[bytes, bytes]:
    """A real query and TXT answer for LABEL.FILLER.evil-example.com (the label's bytes
    swapped into the wire messages dnslib built for a placeholder of the same length)."""
    from dnslib import QTYPE, RR, TXT, DNSRecord

    placeholder = "a" * len(label)
    q = DNSRecord.question(f"{placeholder}.{filler}.evil-example.com", "TXT")
    r = q.reply()
    r.add_answer(RR(q.q.qname, QTYPE.TXT, rdata=TXT("<img src=//localhost:9/txt>"), ttl=5))
    out = []
    for wire in (q.pack(), r.pack()):
        i = wire.index(placeholder.encode())
        out.append(wire[:i] + label + wire[i + len(label):])
    return out[0], out[1]


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    wire = Wire()
    proc = Proc(4101, "<b>x</b>", "10.244.2.9")
    rng = random.Random(7)
    for i in range(8):  # random-looking filler: a tunneling finding whose evidence is all 8
        filler = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(50))
        query, answer = _hostile_exchange(HOSTILE[i % len(HOSTILE)], filler)
        t = T0 + i * 500_000_000
        proc.port += 1
        wire._row(proc, t, query, "send", "sendto", proc.addr, proc.port, "10.96.0.10", 53)
        wire._row(proc, t + 1_000_000, answer, "recv", "recvfrom", "10.96.0.10", 53,
                  proc.addr, proc.port)
    cap = load(wire.write(tmp / "cap"), work_dir=tmp / "work")
    found = find(cap)
    assert [f.kind for f in found if f.kind == "tunneling"] == ["tunneling"]
    out = tmp / "hostile.html"
    render(cap, found, "html", out)
    text = out.read_text()
    assert "document[&#x27;title&#x27;]=&#x27;pwned&#x27;" in text  # the names are in it
    return out


def test_hostile_report_runs_nothing_and_fetches_nothing(hostile_report: Path,
                                                         tmp_path: Path) -> None:
    dom, requests = _chromium(hostile_report, tmp_path, "--dump-dom")
    doc = html5lib.parse(dom, namespaceHTMLElements=False)
    title = doc.find("head/title")
    assert title is not None and (title.text or "").startswith("dnstrail report")
    assert doc.findall(".//script") == [] and doc.findall(".//iframe") == []
    assert doc.findall(".//svg") == []
    for el in doc.iter():
        assert not [a for a in el.attrib if a.lower().startswith("on")], el.tag
    imgs = doc.findall(".//img")
    assert imgs and all(i.get("src", "").startswith("data:image/png;base64,") for i in imgs)
    # the hostile names were rendered, as text
    body = "".join(doc.find("body").itertext())  # type: ignore[union-attr]
    assert "<script>document['title']='pwned'</script>" in body
    assert "<img/src=//localhost:9/leak>" in body
    evidence = [td for td in doc.iter("td") if "onerror" in "".join(td.itertext())]
    assert evidence  # in the finding's evidence table too, as text
    assert requests == []


def test_the_network_log_sees_a_fetch(tmp_path: Path) -> None:
    """The control: a page without the report's policy does fetch, and the log shows it."""
    page = tmp_path / "control.html"
    page.write_text('<!DOCTYPE html><html><head><title>c</title></head><body>'
                    '<img src="http://localhost:9/leak.png"></body></html>')
    _dom, requests = _chromium(page, tmp_path, "--dump-dom")
    assert any("localhost:9/leak.png" in r["url"] for r in requests)


def test_sample_report_renders(tmp_path: Path) -> None:
    from PIL import Image

    cap = load(SAMPLE, work_dir=tmp_path / "work")
    page = tmp_path / "sample.html"
    findings = find(cap)
    render(cap, findings, "html", page)
    shot = tmp_path / "sample.png"
    dom, requests = _chromium(page, tmp_path, f"--screenshot={shot}",
                              "--window-size=1280,2400")
    assert requests == []
    image = Image.open(shot)
    assert image.size == (1280, 2400)
    # a page with content: many colours (the severity badges, the banner), not a blank page
    colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50
    dom, _ = _chromium(page, tmp_path, "--dump-dom")
    doc = html5lib.parse(dom, namespaceHTMLElements=False)
    shown = [el for el in doc.iter() if el.get("class") == "finding"]
    assert len(shown) == len(findings)
    assert len(doc.findall(".//img")) == 4
