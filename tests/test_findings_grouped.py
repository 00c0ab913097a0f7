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
