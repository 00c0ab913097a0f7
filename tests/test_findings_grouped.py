"""Findings grouped as a person reads them (issue 16): one cache_miss per workload with its
names in a table, a single-label name that never resolves said to be a typo or a missing
service (never `NXDOMAIN for None`), connect results by errno name. Real wire messages
(dnslib) in the capture format, read back with ``analyze.load``."""

from __future__ import annotations

from pathlib import Path

from dnslib import A

from analyze import load
from analyze.findings import find
from analyze.report import render
from tests.test_findings_wire import T0, Proc, Wire


def test_cache_miss_is_one_finding_per_workload(tmp_path: Path) -> None:
    wire = Wire()
    t = T0
    # 49 short-lived processes of one program, each re-asking its names well inside the TTL
    for i in range(49):
        proc = Proc(5000 + i, "php-fpm", "10.244.3.3")
        for _ in range(6):
            for name in (f"db{i % 7}.shop.svc.cluster.local", "cache.shop.svc.cluster.local"):
                wire.exchange(proc, t, name, answers=[A("10.96.1.1")], ttl=30)
                t += 100_000_000
    other = Proc(6001, "node_exporter", "10.0.0.4")
    for _ in range(12):
        wire.exchange(other, t, "metrics.example.net", answers=[A("192.0.2.7")], ttl=60)
        t += 200_000_000
    cap = load(wire.write(tmp_path / "cap"), work_dir=tmp_path / "work")
    found = [f for f in find(cap, kinds=["cache_miss"])]
    assert sorted(f.comm or "" for f in found) == ["node_exporter", "php-fpm"]
    php = next(f for f in found if f.comm == "php-fpm")
    assert php.pid is None                      # many processes: no one pid
    assert php.metrics["processes"] == 49
    assert php.metrics["names"] == 8
    assert set(php.metrics["per_name"]) == {f"db{i}.shop.svc.cluster.local" for i in range(7)} \
        | {"cache.shop.svc.cluster.local"}
    assert php.domain == "cache.shop.svc.cluster.local"   # asked by all 49: the worst
    assert php.metrics["per_name"][php.domain]["queries"] == 49 * 6
    assert "8 names" in php.explanation and "49 processes" in php.explanation
    # the names are a table in both reports
    md = render(cap, found, "md")
    assert "per name (8):" in md
    assert "| name | types | queries | ttl | median interval | saved queries per min |" in md
    assert "| cache.shop.svc.cluster.local | A | 294 | 30 s |" in md


SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "incident"


def test_a_single_label_name_that_never_resolves_is_an_unknown_service(tmp_path: Path) -> None:
    cap = load(SAMPLE, work_dir=tmp_path / "work")
    found = find(cap)
    (svc,) = [f for f in found if f.kind == "unknown_service"]
    assert svc.domain == "paymnets-api" and svc.pod == "frontend-6d8f7c9b5-x2kqp"
    assert svc.severity == "medium"
    assert "typo" in svc.explanation and "missing" in svc.explanation
    assert "trailing dot" in svc.explanation and "would not" in svc.explanation
    assert svc.metrics["lookups"] == 12 and svc.metrics["nxdomain"] == 96
    assert all(e["answer"] == "NXDOMAIN for every name tried, 8 queries"
               for e in svc.evidence)
    # not an ndots finding: the search list is how a service name is meant to resolve
    assert not [f for f in found if f.kind == "ndots_amplification"
                and f.domain == "paymnets-api"]
    assert [f.domain for f in found if f.kind == "ndots_amplification"] == ["api.stripe.com"]
    for fmt in ("md", "html", "json"):
        assert "for None" not in render(cap, found, fmt, plots=False)


def test_similar_services_that_resolved_are_named(tmp_path: Path) -> None:
    wire = Wire()
    app = Proc(7001, "node", "10.244.4.4")
    other = Proc(7002, "curl", "10.244.4.5")
    t = T0
    wire.exchange(other, t, "payments-api.shop.svc.cluster.local", answers=[A("10.96.3.3")])
    for _ in range(4):
        t += 1_000_000_000
        for suffix in (".shop.svc.cluster.local", ".svc.cluster.local", ".cluster.local", ""):
            for qtype in ("A", "AAAA"):
                wire.exchange(app, t, "paymnets-api" + suffix, qtype, rcode="NXDOMAIN")
                t += 300_000
    cap = load(wire.write(tmp_path / "cap"), work_dir=tmp_path / "work")
    (svc,) = find(cap, kinds=["unknown_service"])
    assert svc.comm == "node" and svc.domain == "paymnets-api"
    assert svc.metrics["similar_services"] == ["payments-api.shop"]
    assert "payments-api (namespace shop)" in svc.explanation
    assert "the client's search domains" in svc.explanation


def test_connect_results_are_named(tmp_path: Path) -> None:
    cap = load(SAMPLE, work_dir=tmp_path / "work")
    (f,) = [f for f in find(cap, kinds=["unresolved_connect"]) if f.pod == "debug-shell"]
    assert {e["result"] for e in f.evidence} == {"EINPROGRESS"}
    md = render(cap, [f], "md")
    assert "EINPROGRESS" in md and "-115" not in md
