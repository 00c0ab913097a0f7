"""The committed sample `samples/incident` tells the stories samples/README.md says it does.

Issue 16 added two stories to the sample: a sidecar container of a payments pod that resolves
a new intake domain and connects to it at once (the bpftrace article's Datadog agent), found by
`new_domain_connect` naming the sidecar and not the pod's main container; and a real iodine
tunnel from a pod, found by `tunneling`. Every row of the README's story table is checked
against the findings of the committed capture, and every finding must be in the table (or
in the README's note on what else this recording shows).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from analyze import load
from analyze.findings import Finding

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "incident"
README = REPO / "samples" / "README.md"

CART = ("payments", "cart-7c6b8d5f9-q4vnt")
WORDPRESS = ("marketing", "wordpress-5f7d8c9b6-kx7pz")
INTAKE = "intake.metrics-collector.example"
IODINE_RD = "wp-cache-relay.org"
IODINE_SERVER = "10.213.0.4"  # iodined in the lab's server namespace (tests/lab/lab.py)
#: new_domain_connect's warm-up without a baseline (analyze/findings/connects.py Thresholds)
WARMUP_S = 30.0


@pytest.fixture(scope="module")
def cap():  # type: ignore[no-untyped-def]
    assert SAMPLE.is_dir(), "samples/incident is missing"
    return load(SAMPLE)


@pytest.fixture(scope="module")
def findings(cap) -> list[Finding]:  # type: ignore[no-untyped-def]
    return cap.findings()


def _of(findings: list[Finding], kind: str, pod: tuple[str, str]) -> list[Finding]:
    return [f for f in findings if f.kind == kind and (f.namespace, f.pod) == pod]


def test_the_sidecar_new_domain_connect_names_the_sidecar(cap, findings) -> None:  # type: ignore[no-untyped-def]
    hits = _of(findings, "new_domain_connect", CART)
    assert [(f.domain, f.registered_domain) for f in hits] == [
        (INTAKE, "metrics-collector.example")], [(f.kind, f.pod, f.domain) for f in findings]
    f = hits[0]
    # the sidecar container and its process, not the cart container (which never connects)
    assert (f.container, f.comm) == ("datadog-agent", "datadog-agent")
    assert f.pid is not None
    assert f.severity == "low"  # no baseline: a domain first asked after the warm-up
    assert f"{f.pod} resolved {INTAKE}" in f.explanation
    (ev,) = f.evidence
    assert ev["query"] == f"{INTAKE} A" and ev["connect"] == f"{ev['answer']}:8080"
    assert 0 < ev["delay_ms"] < 1000  # at once
    # asked well after the capture's first query, so not mistaken for a name older than it
    tx = cap.transactions
    first = pd.Timestamp(f.metrics["first_asked"])
    assert (first - tx["ts"].min()).total_seconds() >= WARMUP_S
    # the sidecar is another container of the same pod: same pod uid, its own cgroup
    pod = tx[(tx["namespace"] == CART[0]) & (tx["pod"] == CART[1])]
    by = pod.groupby("container", observed=True).agg(
        cgroups=("cgroup_id", "unique"), uids=("pod_uid", "unique"), pids=("tgid", "unique"),
        names=("qname", "unique"))
    assert set(by.index) == {"cart", "datadog-agent"}
    assert len(set(by.loc["cart", "uids"]) | set(by.loc["datadog-agent", "uids"])) == 1
    assert not set(by.loc["cart", "cgroups"]) & set(by.loc["datadog-agent", "cgroups"])
    assert list(by.loc["datadog-agent", "pids"]) == [f.pid]
    assert list(by.loc["datadog-agent", "names"]) == [INTAKE]
    assert INTAKE not in set(by.loc["cart", "names"])
    # no finding pins the sidecar's domain on the main container
    assert not [g for g in findings if g.container == "cart" and INTAKE in (g.domain or "")]


def test_the_real_iodine_tunnel_is_found(cap, findings) -> None:  # type: ignore[no-untyped-def]
    hits = [f for f in _of(findings, "tunneling", WORDPRESS) if f.registered_domain == IODINE_RD]
    assert len(hits) == 1, [(f.kind, f.pod, f.domain) for f in findings]
    f = hits[0]
    assert f.severity == "high"
    assert (f.container, f.comm) == ("wordpress", "iodine") and f.pid is not None
    assert "data_names" in f.metrics["fired"]
    assert set(f.metrics["record_types"]) == {"NULL"}  # iodine's downstream records
    # the queries went straight to iodined, not through the lab's resolver
    tx = cap.transactions
    mine = tx[(tx["pod"] == WORDPRESS[1]) & (tx["comm"] == "iodine")]
    assert len(mine) >= 10
    assert set(mine["server_addr"]) == {IODINE_SERVER}
    assert mine["qname"].str.endswith(".t." + IODINE_RD).all()
    # the other tunnel, the python client under cdn-telemetry-sync.net, is still there
    other = _of(findings, "tunneling", ("batch", "report-gen-28412-7hx2d"))
    assert [(g.registered_domain, g.severity) for g in other] == [
        ("cdn-telemetry-sync.net", "high")]


_ROW = re.compile(r"^\| `(?P<ns>[^`/]+)/(?P<pod>[^`]+)`(?P<rest>.*)$", re.MULTILINE)
_EXPECTED = re.compile(r"`(?P<kind>[a-z_]+)` \((?P<severity>info|low|medium|high)\)"
                       r"(?: (?:for|on) `(?P<subject>[^`]+)`)?")


def _table() -> list[dict[str, object]]:
    """The README's story table: per row the pod, the container (when the row names one)
    and the expected findings (kind, severity, domain or None), or [] for 'none'."""
    text = README.read_text()
    table = text[text.index("## The story"):]
    rows = []
    for m in _ROW.finditer(table):
        cells = [c.strip() for c in m.group("rest").split(" | ")]
        first = cells[0]
        container = re.match(r"\s*container `([^`]+)`", first)
        expected = cells[-1].rstrip("|").strip()
        rows.append({
            "pod": (m.group("ns"), m.group("pod")),
            "container": container.group(1) if container else None,
            "none": expected == "none",
            "expected": [(e["kind"], e["severity"], e["subject"])
                         for e in _EXPECTED.finditer(expected)],
        })
    return rows


def test_the_readme_table_parses() -> None:
    rows = _table()
    assert len(rows) == 9
    assert all(r["expected"] or r["none"] for r in rows), rows
    assert {r["pod"] for r in rows} >= {CART, WORDPRESS}


@pytest.mark.parametrize("row", _table(), ids=lambda r: "/".join(r["pod"]) + (  # type: ignore[index, operator]
    f":{r['container']}" if r["container"] else ""))
def test_every_story_of_the_readme_table(findings, row) -> None:  # type: ignore[no-untyped-def]
    mine = [f for f in findings if (f.namespace, f.pod) == row["pod"]]
    if row["none"]:
        assert mine == [], [(f.kind, f.severity) for f in mine]
        return
    for kind, severity, subject in row["expected"]:
        hits = [f for f in mine if f.kind == kind and f.severity == severity
                and (subject is None or subject in (f.domain, f.registered_domain))
                and (row["container"] is None or f.container == row["container"])]
        assert len(hits) == 1, (kind, severity, subject, row["container"],
                                [(f.kind, f.severity, f.domain, f.container) for f in mine])


def test_every_finding_is_in_the_readme(findings) -> None:  # type: ignore[no-untyped-def]
    told = {(r["pod"], kind) for r in _table() for kind, _, _ in r["expected"]}  # type: ignore[attr-defined]
    # the README's note under the table: iodine's queries in flight when it was stopped
    told.add((WORDPRESS, "resolver_errors"))
    assert "`resolver_errors` (low) for the wordpress pod" in README.read_text()
    untold = [(f.kind, f.severity, f.namespace, f.pod, f.domain) for f in findings
              if ((f.namespace, f.pod), f.kind) not in told]
    assert untold == []


def test_the_sample_is_small_and_trimmed(cap) -> None:  # type: ignore[no-untyped-def]
    size = sum(p.stat().st_size for p in SAMPLE.iterdir())
    assert size < 300 * 1024
    (manifest,) = cap.manifests
    assert "kept only rows of the story's pods" in manifest["filters"]["sample_trim"]
    # nothing outside the story's pods: every attributed row is one of the README's pods
    pods = {r["pod"] for r in _table()}
    for name in ("transactions", "connects", "execs"):
        frame = getattr(cap, name)
        seen = set(zip(frame["namespace"].astype(str), frame["pod"].astype(str)))
        assert seen <= pods, (name, seen - pods)
