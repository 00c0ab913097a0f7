"""The lab itself, exercised with real clients: every client resolves inside a fake pod and the
answer is the zone's; TCP and EDNS fallbacks happen; dead servers time out; teardown is clean;
and no lab query can reach this machine's own resolver."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab import Lab, LabError, NetNS, cgroup2_mount, default_zone
from tests.lab.require import require_lab

WWW = "www.lab.test"


def zone_addrs(lab: Lab, name: str) -> set[str]:
    """Addresses name resolves to in the lab zone, following CNAMEs (bounded)."""
    for _ in range(8):
        recs = lab.zone[name]
        cname = [v for t, v in recs if t == "CNAME"]
        if not cname:
            return {v for t, v in recs if t in ("A", "AAAA")}
        name = cname[0]
    raise AssertionError("CNAME chain too long")


def addrs_in(out: str) -> set[str]:
    found = set()
    for tok in out.split():
        try:
            found.add(str(ipaddress.ip_address(tok)))
        except ValueError:
            pass
    return found


# ------------------------------------------------------------------ clients in fake pods
@pytest.mark.parametrize("style", ["cgroupfs", "systemd"])
def test_getent_in_fake_pod(lab: Lab, style: str) -> None:
    ns = lab.client_ns(search=["default.svc.cluster.local", "svc.cluster.local",
                               "cluster.local"], ndots=5, timeout=1, attempts=2)
    pod = lab.fake_pod(namespace="shop", name=f"web-{style}", style=style)
    r = lab.run(ns, ["getent", "ahosts", "alias.lab.test"], pod=pod, timeout=15)
    assert r.returncode == 0, r.stderr
    assert addrs_in(r.stdout) == zone_addrs(lab, "alias.lab.test")
    # the search list was walked: the server saw the suffixed names first
    log = lab.server_log()
    assert "alias.lab.test.default.svc.cluster.local" in log


def test_client_is_in_pod_cgroup_from_the_start(lab: Lab) -> None:
    ns = lab.client_ns(timeout=1, attempts=1)
    pod = lab.fake_pod(namespace="shop", name="cg-check", style="cgroupfs", qos="besteffort")
    r = lab.run(ns, ["cat", "/proc/self/cgroup"], pod=pod, check=True)
    v2 = [line.split(":", 2)[2] for line in r.lines() if line.startswith("0::")]
    assert v2 == [pod.cgroup_path]
    assert pod.cgroup_id == os.stat(cgroup2_mount() / pod.cgroup_path.lstrip("/")).st_ino
    assert pod.cgroup_path.startswith(f"/kubepods/besteffort/pod{pod.uid}/")
    # and it ran in the lab namespace: its netns is the lab namespace's inode
    r = lab.run(ns, ["readlink", "/proc/self/ns/net"], pod=pod, check=True)
    assert r.stdout.strip() == f"net:[{ns.inode}]"


@pytest.mark.parametrize("client", ["musl", "go"])
def test_static_clients_in_fake_pod(lab: Lab, client: str) -> None:
    ns = lab.client_ns(search=["shop.svc.cluster.local", "svc.cluster.local"], ndots=2,
                      timeout=1, attempts=2)
    pod = lab.fake_pod(namespace="shop", name=f"{client}-1", style="systemd", qos="guaranteed")
    resolve = lab.resolve_musl if client == "musl" else lab.resolve_go
    names = [WWW, "alias.lab.test", "web", "nope.lab.test"]
    r = resolve(ns, names, pod=pod)
    assert r.returncode == 2, r.stdout + r.stderr  # nope.lab.test fails
    got: dict[str, set[str]] = {}
    for line in r.lines():
        name, rest = line.split(" ", 1)
        got.setdefault(name, set()).add(rest)
    assert got[WWW] == zone_addrs(lab, WWW)
    assert got["alias.lab.test"] == zone_addrs(lab, "alias.lab.test")
    assert got["web"] == zone_addrs(lab, "web.shop.svc.cluster.local")  # via the search list
    assert len(got["nope.lab.test"]) == 1 and next(iter(got["nope.lab.test"])).startswith("ERROR")


def test_go_client_hammers_without_cache(lab: Lab) -> None:
    ns = lab.client_ns(timeout=1, attempts=1)
    r = lab.resolve_go(ns, ["api.lab.test"], rounds=5, interval_ms=10)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.lines() == ["api.lab.test 10.213.0.81"] * 5
    time.sleep(0.2)  # dnsmasq writes its log asynchronously
    asked = re.findall(rf"query\[(A|AAAA)\] api\.lab\.test from {re.escape(ns.addr)}$",
                       lab.server_log(), re.MULTILINE)
    assert asked.count("A") == 5 and asked.count("AAAA") == 5


# ------------------------------------------------------------------ dig, TCP and EDNS
def test_dig_udp_and_tcp(lab: Lab, lab_ns: NetNS) -> None:
    udp = lab.dig(lab_ns, WWW)
    tcp = lab.dig(lab_ns, WWW, tcp=True)
    for r in (udp, tcp):
        assert r.returncode == 0 and "status: NOERROR" in r.stdout
        assert lab.web_addr in r.stdout
    assert "(UDP)" in udp.stdout and "(TCP)" in tcp.stdout
    nx = lab.dig(lab_ns, "missing.lab.test")
    assert "status: NXDOMAIN" in nx.stdout


def test_large_answers_fall_back_to_tcp(lab: Lab, lab_ns: NetNS) -> None:
    # without EDNS the 40-record answer does not fit in 512 bytes
    r = lab.dig(lab_ns, "big.lab.test", args=["+noedns"])
    assert "Truncated, retrying in TCP mode" in r.stdout
    assert "ANSWER: 40" in r.stdout and "(TCP)" in r.stdout
    # the 100-record answer does not fit in EDNS's 1232 bytes either
    r = lab.dig(lab_ns, "huge.lab.test")
    assert "Truncated, retrying in TCP mode" in r.stdout and "ANSWER: 100" in r.stdout
    # with a big enough EDNS buffer it comes over UDP in one piece
    r = lab.dig(lab_ns, "bigtxt.lab.test", "TXT", args=["+bufsize=4096"])
    assert "Truncated" not in r.stdout and "(UDP)" in r.stdout
    size = int(re.search(r"MSG SIZE\s+rcvd: (\d+)", r.stdout).group(1))  # type: ignore[union-attr]
    assert 512 < size <= 1232
    # glibc (no EDNS) retries over TCP by itself and gets every address
    g = lab.getent(lab_ns, "big.lab.test")
    assert g.returncode == 0
    assert addrs_in(g.stdout) == zone_addrs(lab, "big.lab.test")


def test_second_server_answers_for_itself(lab: Lab, lab_ns: NetNS) -> None:
    one = lab.dig(lab_ns, "whoami.lab.test", "TXT", args=["+short"])
    two = lab.dig(lab_ns, "whoami.lab.test", "TXT", server=lab.server2_addr, args=["+short"])
    assert one.stdout.strip() == '"server1"' and two.stdout.strip() == '"server2"'


# ------------------------------------------------------------------ failing servers
def test_dead_server_times_out_quickly(lab: Lab) -> None:
    dead = lab.client_ns([lab.dead_addr], timeout=1, attempts=1)
    r = lab.getent(dead, WWW, timeout=15)
    assert r.returncode != 0 and r.stdout == ""
    assert 0.9 < r.seconds < 5.0
    # dead first, then the real one: the answer arrives after the first timeout
    failover = lab.client_ns([lab.dead_addr, lab.server_addr], timeout=1, attempts=1)
    r = lab.run(failover, [str(lab.musl_client), WWW], timeout=15)
    assert r.returncode == 0 and lab.web_addr in r.stdout


def test_refused_address_fails_fast(lab: Lab) -> None:
    ns = lab.client_ns([lab.refused_addr], timeout=2, attempts=1)
    r = lab.dig(ns, WWW, server=lab.refused_addr)
    assert "connection refused" in r.stdout.lower() or r.returncode != 0
    assert r.seconds < 1.5


# ------------------------------------------------------------------ connect after resolve
@pytest.mark.parametrize("client", ["musl", "go"])
def test_connect_after_resolve(lab: Lab, client: str) -> None:
    port = 8080 if client == "musl" else 8081
    lab.tcp_listener(port)
    ns = lab.client_ns(timeout=1, attempts=1)
    resolve = lab.resolve_musl if client == "musl" else lab.resolve_go
    r = resolve(ns, [WWW], connect=port)
    assert r.returncode == 0, r.stdout + r.stderr
    connect = [line for line in r.lines() if line.startswith("CONNECT")]
    assert len(connect) == 1 and connect[0].endswith(f"{port} ok")
    assert connect[0].split()[1] in zone_addrs(lab, WWW)


def test_hard_coded_ip_connect_sends_no_query(lab: Lab) -> None:
    lab.tcp_listener(8082)
    ns = lab.client_ns(timeout=1, attempts=1)
    r = lab.resolve_musl(ns, [lab.web_addr], connect=8082)
    assert r.returncode == 0 and f"CONNECT {lab.web_addr} 8082 ok" in r.stdout
    time.sleep(0.2)
    assert f"from {ns.addr}\n" not in lab.server_log()


# ------------------------------------------------------------------ pods metadata
def test_pods_root_layout(lab: Lab) -> None:
    pod = lab.fake_pod(namespace="billing", name="pay-7", container="api")
    side = lab.fake_container(pod, "envoy")
    assert side.uid == pod.uid and side.container_id != pod.container_id
    assert Path(side.cgroup_dir).parent == Path(pod.cgroup_dir).parent
    for p in (pod, side):
        log = lab.pods_root / "var/log/pods" / f"billing_pay-7_{p.uid}" / p.container / "0.log"
        assert log.is_file()
        link = (lab.pods_root / "var/log/containers" /
                f"pay-7_billing_{p.container}-{p.container_id}.log")
        assert link.is_symlink() and link.resolve() == log.resolve()
    doc = json.loads(lab.pods_json.read_text())
    (item,) = [i for i in doc["items"] if i["metadata"]["uid"] == pod.uid]
    assert item["metadata"]["name"] == "pay-7" and item["metadata"]["namespace"] == "billing"
    ids = {s["name"]: s["containerID"] for s in item["status"]["containerStatuses"]}
    assert ids == {"api": f"containerd://{pod.container_id}",
                   "envoy": f"containerd://{side.container_id}"}


# ------------------------------------------------------------------ unbound and dnsperf
def test_unbound_and_dnsperf(lab: Lab) -> None:
    ub = lab.unbound()
    ns = lab.client_ns(timeout=1, attempts=1)
    r = lab.dig(ns, WWW, server=ub.addr)
    assert "status: NOERROR" in r.stdout and lab.web_addr in r.stdout
    assert "status: NXDOMAIN" in lab.dig(ns, "example.com", server=ub.addr).stdout
    perf = lab.dnsperf(ns, ub.addr, [(WWW, "A"), ("api.lab.test", "A")], duration=1,
                       max_qps=2000)
    assert perf.completed > 500 and perf.lost == 0
    assert 500 < perf.qps <= 2200
    with pytest.raises(LabError):
        lab.dnsperf(ns, "192.0.2.1")  # never anything outside the lab


# ------------------------------------------------------------------ safety
def host_nameservers() -> list[str]:
    out = []
    for line in Path("/etc/resolv.conf").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            out.append(parts[1].split("%")[0])
    return out


def test_no_lab_query_can_reach_the_host_resolver(lab: Lab) -> None:
    ns = lab.client_ns(search=["cluster.local"], ndots=5, timeout=1, attempts=1)
    lab_net = ipaddress.ip_network("10.213.0.0/24")
    lab_net6 = ipaddress.ip_network("fd00:213::/64")
    assert lab.server_ns is not None
    for space in (ns, lab.server_ns):
        seen = lab.run(space, ["cat", "/etc/resolv.conf"], check=True).stdout
        assert seen == space.resolv_conf
        assert lab.run(space, ["ip", "route", "show", "default"], check=True).stdout == ""
        assert lab.run(space, ["ip", "-6", "route", "show", "default"],
                       check=True).stdout == ""
        nss = lab.run(space, ["cat", "/etc/nsswitch.conf"], check=True).stdout
        assert re.search(r"^hosts:\s+files dns\s*$", nss, re.MULTILINE)
        for server in host_nameservers():
            addr = ipaddress.ip_address(server)
            if addr in lab_net or addr in lab_net6:
                continue  # the lab's own address: fine
            r = lab.run(space, ["ip", "route", "get", server])
            if addr.is_loopback:
                # loopback inside a namespace is the namespace's own, not the host's
                assert "dev lo" in r.stdout, r.stdout + r.stderr
                continue
            assert r.returncode != 0, f"{space.name} has a route to {server}: {r.stdout}"
            assert "unreachable" in r.stderr.lower()
    # nothing the lab's own servers are told to do involves an upstream
    ub = next((s for s in lab.servers if s.kind == "unbound"), None) or lab.unbound()
    for srv in lab.servers:
        conf = srv.config.read_text()
        if srv.kind == "dnsmasq":
            assert "no-resolv" in conf.splitlines()
            assert not re.search(r"^\s*(server|rev-server|resolv-file)\s*=", conf, re.MULTILINE)
        else:
            assert not re.search(r"forward-|stub-|auth-zone|root-hints", conf)
            assert 'local-zone: "." static' in conf
    assert ub.addr.startswith("10.213.0.")


def _absent(res_netns: list[str], res: object) -> list[str]:
    """What a torn-down lab left behind (empty: nothing)."""
    from tests.lab import registry
    from tests.lab._sys import process_alive

    left = []
    listed = subprocess.run(["ip", "netns", "list"], check=False, capture_output=True, text=True).stdout
    mounts = Path("/proc/self/mounts").read_text()
    for name in res_netns:
        if name in listed or Path(f"/run/netns/{name}").exists() or name in mounts:
            left.append(f"netns {name}")
        if Path(f"/etc/netns/{name}").exists():
            left.append(f"/etc/netns/{name}")
    assert isinstance(res, registry.Resources)
    left += [f"cgroup {c}" for c in res.cgroups if Path(c).exists()]
    left += [f"tmpdir {d}" for d in res.tmpdirs if Path(d).exists()]
    left += [f"pid {p}" for p, start in res.pids if process_alive(p, start)]
    for parent in res.cgroup_parents:  # shared parents go once empty
        p = Path(parent)
        if p.exists() and not any(c.is_dir() for c in p.iterdir()):
            left.append(f"empty cgroup parent {parent}")
    if res.path.exists():
        left.append(f"registry {res.path}")
    return left


@pytest.mark.lab
def test_teardown_leaves_the_machine_clean() -> None:
    require_lab()
    stray: subprocess.Popen[bytes] | None = None
    with pytest.raises(RuntimeError, match="test failure inside the lab"), Lab() as lab:
        ns = lab.client_ns()
        pods = [lab.fake_pod(style="systemd", qos="burstable"),
                lab.fake_pod(style="cgroupfs", qos="guaranteed")]
        lab.spawn(ns, ["sleep", "60"], pod=pods[0])
        lab.tcp_listener(9000)
        # a process the lab did not start, inside its namespace and pod
        script = f'echo $$ > "$0"; exec ip netns exec {ns.name} sleep 60'
        stray = subprocess.Popen(["/bin/sh", "-c", script, str(pods[1].procs_file)],
                                 start_new_session=True)
        deadline = time.monotonic() + 5
        while not pods[1].pids() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pods[0].pids() and pods[1].pids()
        res = lab.resources()
        names = list(res.netns)
        assert all(Path(f"/run/netns/{n}").exists() for n in names)
        raise RuntimeError("test failure inside the lab")
    assert stray is not None
    assert stray.wait(timeout=5) != 0  # killed by the teardown
    assert _absent(names, res) == []


@pytest.mark.lab
def test_cleanup_stale_removes_a_crashed_lab() -> None:
    require_lab()
    from tests.lab import cleanup_stale, registry

    code = ("import sys, time\n"
            "from tests.lab import Lab\n"
            "lab = Lab().start()\n"
            "ns = lab.client_ns()\n"
            "pod = lab.fake_pod(style='systemd')\n"
            "lab.spawn(ns, ['sleep', '60'], pod=pod)\n"
            "print(lab.resources().path, flush=True)\n"
            "time.sleep(60)\n")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert owner.stdout is not None
        reg_path = Path(owner.stdout.readline().strip())
        res = registry.Resources.load(reg_path)
        assert res is not None and res.netns and res.cgroups
    finally:
        owner.kill()  # SIGKILL: no finalizer runs, everything is left behind
        owner.wait()
    assert Path(f"/run/netns/{res.netns[0]}").exists() and Path(res.cgroups[0]).exists()
    removed = cleanup_stale()
    assert res.lab_id in removed
    assert _absent(res.netns, res) == []


@pytest.mark.lab
def test_lab_refuses_to_work_after_close() -> None:
    require_lab()
    lab = Lab()
    with lab:
        pass
    with pytest.raises(LabError):
        lab.client_ns()


def test_default_zone_is_what_tests_rely_on() -> None:
    zone = default_zone()
    assert len(zone["big.lab.test"]) == 40 and len(zone["huge.lab.test"]) == 100
    assert zone["alias.lab.test"] == [("CNAME", "mid.lab.test")]


# ------------------------------------------------------------------ the CI rule of conftest
def test_ci_turns_skipped_live_and_lab_tests_into_failures(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Path(__file__).resolve().parents[1]
    pytester.makeconftest((repo / "tests" / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    live: l\n    lab: l\n")
    pytester.makepyfile(test_rule="""
import pytest

@pytest.mark.live
def test_live_skips():
    pytest.skip("no bcc here")

@pytest.mark.lab
def test_lab_skips():
    pytest.skip("no lab here")

@pytest.mark.live
@pytest.mark.skipif(True, reason="marker says no")
def test_live_skipif():
    pass

def test_corpus_skips():
    pytest.skip("corpus absent")

@pytest.mark.live
@pytest.mark.xfail(reason="known")
def test_live_xfail():
    assert False
""")
    monkeypatch.setenv("PYTHONPATH", str(repo))
    monkeypatch.setenv("CI", "true")
    strict = pytester.runpytest_subprocess("-rA", "-p", "no:cacheprovider")
    # a skip in setup (skipif, a fixture calling require_lab) becomes an error: also a failure
    strict.assert_outcomes(failed=2, errors=1, skipped=1, xfailed=1)
    assert strict.ret != 0
    out = strict.stdout.str()
    assert "no bcc here" in out and "no lab here" in out and "marker says no" in out
    monkeypatch.setenv("CI", "false")
    lax = pytester.runpytest_subprocess("-rA", "-p", "no:cacheprovider")
    lax.assert_outcomes(skipped=4, xfailed=1)


# ------------------------------------------------------------------ a real DNS tunnel
@pytest.mark.timeout(90)
def test_iodine_tunnel_carries_data_over_dns(lab: Lab) -> None:
    pod = lab.fake_pod(namespace="tunnel", name="exfil-1")
    r = lab.iodine_tunnel("tun.lab.test", pod=pod, size=4096, timeout=40)
    assert r.bytes_received == r.bytes_sent == 4096
    assert "Skipping raw mode" in r.client_output  # every byte went through DNS
    assert r.client_ip.startswith("10.214.0.") and r.server_ip == "10.214.0.1"
    assert r.seconds < 40


def test_remove_ns_frees_the_namespace_and_its_address(lab: Lab) -> None:
    ns = lab.client_ns(timeout=1, attempts=1)
    proc = lab.spawn(ns, ["sleep", "30"])
    lab.remove_ns(ns)
    assert proc.wait(timeout=5) != 0
    assert not ns.path.exists() and not Path(f"/etc/netns/{ns.name}").exists()
    again = lab.client_ns(timeout=1, attempts=1)
    assert again.name != ns.name and again.addr == ns.addr  # the address slot is reused
    assert lab.dig(again, WWW, args=["+short"]).stdout.split() == [lab.web_addr]
    lab.remove_ns(again)


def test_pcap_of_the_lab_wire(lab: Lab, lab_ns: NetNS, tmp_path: Path) -> None:
    with lab.pcap(tmp_path / "wire.pcap") as pcap:
        lab.dig(lab_ns, "txt.lab.test", "TXT")
        lab.dig(lab_ns, "www.lab.test", tcp=True)
    text = subprocess.run(["tcpdump", "-n", "-r", str(pcap)], check=True, capture_output=True,
                          text=True).stdout
    assert f"{lab_ns.addr}." in text
    assert "TXT? txt.lab.test." in text and "A? www.lab.test." in text
    assert "Flags [S]" in text  # the TCP query's handshake is on the wire too


@pytest.mark.lab
def test_custom_zone_is_served_by_dnsmasq_and_unbound() -> None:
    require_lab()
    extra = {"db.payments.svc.cluster.local": [("A", "10.213.0.81")],
             "www.lab.test": [("A", "10.213.0.99")],  # replaces the default records
             "note.lab.test": [("TXT", "x" * 300)]}   # split into 255 + 45 byte strings
    with Lab(extra, second_server=False, ttl=5) as lab:
        assert lab.zone["www.lab.test"] == [("A", "10.213.0.99")]
        ns = lab.client_ns(timeout=1, attempts=1)
        ub = lab.unbound()
        for server in (lab.server_addr, ub.addr):
            r = lab.dig(ns, "db.payments.svc.cluster.local", server=server)
            assert re.search(r"\s5\s+IN\s+A\s+10\.213\.0\.81", r.stdout), r.stdout
            short = lab.dig(ns, WWW, server=server, args=["+short"]).stdout.split()
            assert short == ["10.213.0.99"]
            txt = lab.dig(ns, "note.lab.test", "TXT", server=server, args=["+short"]).stdout
            assert txt.strip() == f'"{"x" * 255}" "{"x" * 45}"'
        assert len([s for s in lab.servers if s.kind == "dnsmasq"]) == 1
    with pytest.raises(LabError):
        Lab({"bad name.lab.test": [("A", "10.213.0.1")]}).start()
