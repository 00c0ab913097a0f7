"""The analyzer on a real recording: `dnstrail record` (the BPF probe) watching real resolvers
(glibc getent, musl, dig) in the network-namespace lab, inside fake kubelet pods of both
cgroup drivers. One recording serves every assertion (loading the probe takes a while).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from analyze import Capture, load

pytestmark = [pytest.mark.live, pytest.mark.lab]

SEARCH = ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local"]


@dataclass
class Recorded:
    cap: Capture
    path: Path
    lab: Any
    walk: Any          # getent ahosts www.lab.test, ndots:5, k8s search list, pod shop/web-an1
    musl: Any          # resolve-musl api.lab.test, pod kube-system/tools-an1 (systemd driver)
    dead: Any          # dig at the dead server, 2 tries of 1 s
    retry: Any         # musl at the dead server: re-sends its queries on the same socket
    pod_a: Any
    pod_b: Any


@pytest.fixture(scope="module")
def recorded(lab: Any, lab_clients: Any, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Recorded]:
    from tests.lab.require import require_root_bcc

    require_root_bcc()
    try:
        from capture.recorder import RecordOptions
        from tests.test_record_live import Recording
    except ImportError as exc:          # pragma: no cover - a half-built tree
        pytest.skip(f"the recorder is not available: {exc}")
    k8s = lab.client_ns(search=SEARCH, ndots=5, timeout=1, attempts=2)
    plain = lab.client_ns(timeout=1, attempts=2)
    dead_ns = lab.client_ns(nameservers=[lab.dead_addr], timeout=2, attempts=2)
    pod_a = lab.fake_pod("shop", "web-an1", container="app", style="cgroupfs")
    pod_b = lab.fake_pod("kube-system", "tools-an1", container="debug", style="systemd",
                         qos="besteffort")
    out = tmp_path_factory.mktemp("analyze-lab") / "cap"
    opts = RecordOptions(output=out, pods_root=lab.pods_root, pods_json=lab.pods_json)
    with Recording(opts) as rec:
        walk = lab.getent(k8s, "www.lab.test", pod=pod_a)
        musl = lab.resolve_musl(plain, ["api.lab.test"], pod=pod_b)
        dead = lab.dig(plain, "www.lab.test", server=lab.dead_addr,
                       args=["+tries=2", "+timeout=1"], pod=pod_b, timeout=20)
        retry = lab.resolve_musl(dead_ns, ["api.lab.test"], pod=pod_b, timeout=20)
        rec.stop()
    assert retry.returncode != 0
    assert walk.returncode == 0 and musl.returncode == 0, (walk.stderr, musl.stderr)
    assert dead.returncode != 0          # nobody answers at the dead address
    yield Recorded(load(out), out, lab, walk, musl, dead, retry, pod_a, pod_b)


def test_ndots_walk_is_one_lookup_attributed_to_the_cgroupfs_pod(recorded: Recorded) -> None:
    lk = recorded.cap.lookups
    mine = lk[lk["tgid"] == recorded.walk.pid]
    assert len(mine) == 1, mine[["names", "qtypes", "n_queries"]]
    walk = mine.iloc[0]
    assert list(walk["names"]) == [f"www.lab.test.{s}" for s in SEARCH] + ["www.lab.test"]
    assert walk["first_name"] == "www.lab.test.shop.svc.cluster.local"
    assert walk["final_name"] == "www.lab.test" and walk["base_name"] == "www.lab.test"
    assert walk["n_nxdomain"] == 6 and walk["n_queries"] == 8
    assert walk["rcode_name"] == "NOERROR"
    assert "10.213.0.80" in list(walk["answer_ips"])
    assert (walk["namespace"], walk["pod"], walk["qos"]) == ("shop", "web-an1", "burstable")
    assert walk["container"] == "app"
    assert walk["container_id"] == recorded.pod_a.container_id


def test_musl_client_in_the_systemd_pod(recorded: Recorded) -> None:
    tx = recorded.cap.transactions
    mine = tx[tx["tgid"] == recorded.musl.pid]
    assert len(mine) >= 1
    assert set(mine["status"]) == {"answered"}
    assert set(mine["side"]) == {"client"}
    assert set(mine["pod"]) == {"tools-an1"} and set(mine["namespace"]) == {"kube-system"}
    assert set(mine["qos"]) == {"besteffort"} and set(mine["container"]) == {"debug"}
    assert set(mine["pod_uid"]) == {recorded.pod_b.uid}
    assert (mine["latency_s"] > 0).all() and (mine["latency_s"] < 1).all()
    assert set(mine["server_addr"]) == {recorded.lab.server_addr}
    assert set(mine["server_port"]) == {53}


def test_dead_server_gives_timeouts_with_the_retry_counted(recorded: Recorded) -> None:
    tx = recorded.cap.transactions
    mine = tx[(tx["tgid"] == recorded.dead.pid)]
    assert len(mine) >= 1
    assert set(mine["status"]) == {"timeout"}
    assert set(mine["server_addr"]) == {recorded.lab.dead_addr}
    assert mine["response_ts"].isna().all() and mine["latency_s"].isna().all()
    sent = recorded.cap.messages
    sent = sent[(sent["tgid"] == recorded.dead.pid) & (sent["role"] == "client_query")]
    assert len(sent) == 2                                       # +tries=2
    # the second try is a retransmission of the first (same id) or its own transaction
    assert mine["retransmissions"].sum() + len(mine) == 2
    lk = recorded.cap.lookups
    dl = lk[lk["tgid"] == recorded.dead.pid]
    assert len(dl) == 1 and dl["rcode_name"].iloc[0] == "TIMEOUT"
    assert dl["n_queries"].iloc[0] == 2


def test_every_lab_query_is_in_a_transaction(recorded: Recorded) -> None:
    m = recorded.cap.messages
    pids = {recorded.walk.pid, recorded.musl.pid, recorded.dead.pid}
    ours = m[m["tgid"].isin(pids)]
    assert ours["txn_id"].notna().all()
    assert set(ours["role"]) <= {"client_query", "client_response"}
    tx = recorded.cap.transactions
    assert (tx[tx["tgid"].isin(pids)]["status"] != "unsolicited").all()


def test_replay_filters_by_pod_on_the_recording(recorded: Recorded) -> None:
    from dnstrail.cli import main

    r = CliRunner().invoke(main, ["replay", str(recorded.path), "--pod", "web-an*"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert len(lines) == 1 + 8
    assert all(ln.split()[1].startswith("shop/web-an1") for ln in lines[1:])
    assert max(len(ln) for ln in lines) <= 80
    r = CliRunner().invoke(main, ["replay", str(recorded.path), "--lookups", "--namespace",
                                  "kube-system", "--rcode", "TIMEOUT"])
    assert r.exit_code == 0
    body = r.output.splitlines()[1:]
    assert len(body) == 2 and all("TIMEOUT" in ln for ln in body)   # dig and musl
    by_pod = recorded.cap.by_pod()
    assert {"web-an1", "tools-an1"} <= set(by_pod["pod"])


def test_dnsmasq_answering_is_matched_on_the_server_side(recorded: Recorded) -> None:
    # the recorder sees the whole machine: keep the lab's server namespace and our clients
    tx = recorded.cap.transactions
    # other lab daemons (an iodined left by an earlier test) share the server namespace
    server = tx[(tx["side"] == "server") & (tx["netns"] == recorded.lab.server_ns.inode)
                & (tx["comm"] == "dnsmasq")]
    ours = {recorded.walk.pid, recorded.musl.pid}
    client = tx[(tx["side"] == "client") & (tx["status"] == "answered")
                & tx["tgid"].isin(ours)]
    assert len(server) >= 1
    assert set(server["status"]) == {"answered"}
    # every answered client query was seen arriving at dnsmasq with the same id and name
    pairs = set(zip(server["dns_id"], server["qname"], server["client_port"]))
    for row in client.itertuples():
        assert (row.dns_id, row.qname, row.client_port) in pairs
    # dnsmasq answers from its zone: microseconds (the syscall stamps of client and server
    # are taken at different points, so the two latencies are not compared)
    assert (server["latency_s"] >= 0).all() and (server["latency_s"] < 0.5).all()
    assert set(server["server_port"]) == {53}


def test_musl_retransmissions_are_counted(recorded: Recorded) -> None:
    m = recorded.cap.messages
    sent = m[(m["tgid"] == recorded.retry.pid) & (m["role"] == "client_query")]
    tx = recorded.cap.transactions
    mine = tx[tx["tgid"] == recorded.retry.pid]
    assert set(mine["status"]) == {"timeout"}
    # musl re-sends the same A and AAAA queries (same ids, same socket) until its timeout
    assert len(sent) > len(mine) >= 1
    assert mine["retransmissions"].sum() == len(sent) - len(mine)
    assert (mine["last_query_ts"] > mine["ts"]).any()
    lk = recorded.cap.lookups
    mlk = lk[lk["tgid"] == recorded.retry.pid]
    assert len(mlk) == 1 and mlk["n_retransmissions"].iloc[0] == len(sent) - len(mine)
