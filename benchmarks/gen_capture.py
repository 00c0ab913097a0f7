"""Generate a realistic synthetic dnstrail capture (and the same messages as a pcap).

The capture looks like what ``dnstrail record`` writes on a busy Kubernetes node: every row is
one DNS message a process sent or received, with its wire payload (built with dnslib), the
process identity (tgid, tid, comm, cgroup id, netns) and the socket addresses, plus the
processes, cgroups and pods snapshot tables and a manifest with SHA-256 sums.

What is in it (seeded, so a given ``--seed`` and size always give the same messages):

- pods in several namespaces under both cgroup layouts (systemd and cgroupfs drivers), with
  glibc (``sendmmsg`` A+AAAA pairs), musl (``sendto``) and Go (``write``/``read``, one socket per
  query) clients, and a few host processes;
- names drawn from a Zipf distribution over cluster.local services and CDN/cloud names, asked
  as A+AAAA pairs; CNAME chains for CDN names; NODATA for AAAA of most in-cluster names;
- about 10 % NXDOMAIN responses, part of them from ndots:5 search-list walks;
- a few percent unique tunnel-like TXT names (base32 labels) under one domain from one pod;
- a pod whose resolver is dead (queries retransmitted, never answered);
- latencies: sub-millisecond for cluster names and cached answers, tens of ms otherwise;
- connect() events to a share of the answered addresses.

``--all-unique`` is the worst case for every cache: each transaction asks a distinct name.

Usage::

    python benchmarks/gen_capture.py -o /var/tmp/bench-1m --messages 1000000 \
        --pcap /var/tmp/bench-1m.pcap --expected /var/tmp/bench-1m.expected.json

The expected-counts JSON (also printed) lets a test check what the analyzer finds.
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import json
import struct
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from dnslib import AAAA, CNAME, QTYPE, RCODE, RR, SOA, TXT, A, DNSHeader, DNSQuestion, DNSRecord

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from capture.schema import SCHEMAS
from capture.writer import CaptureWriter

KUBE_DNS = "10.96.0.10"
DEAD_DNS = "10.96.0.99"
TUNNEL_DOMAIN = "t.cdn-telemetry-sync.net"
CLUSTER_SUFFIX = "svc.cluster.local"
NAMESPACES = ("shop", "payments", "monitoring", "kube-system", "default", "batch", "search")
BOOT_UPTIME_NS = 3 * 86400 * 10**9 + 123_456_789

EXTERNAL_FIXED = (
    "api.github.com", "github.com", "objects.githubusercontent.com", "registry-1.docker.io",
    "auth.docker.io", "production.cloudflare.docker.com", "ghcr.io", "quay.io",
    "sts.amazonaws.com", "sts.us-east-1.amazonaws.com", "s3.amazonaws.com",
    "s3.us-east-1.amazonaws.com", "dynamodb.us-east-1.amazonaws.com", "sqs.us-east-1.amazonaws.com",
    "ec2.us-east-1.amazonaws.com", "logs.us-east-1.amazonaws.com", "storage.googleapis.com",
    "oauth2.googleapis.com", "www.googleapis.com", "pubsub.googleapis.com",
    "login.microsoftonline.com", "management.azure.com", "graph.microsoft.com",
    "api.stripe.com", "hooks.slack.com", "api.segment.io", "o123456.ingest.sentry.io",
    "http-intake.logs.datadoghq.com", "api.datadoghq.com", "collector.newrelic.com",
    "api.honeycomb.io", "pypi.org", "files.pythonhosted.org", "registry.npmjs.org",
    "repo1.maven.org", "proxy.golang.org", "deb.debian.org", "security.debian.org",
    "archive.ubuntu.com", "api.openai.com", "www.google.com", "www.example.com",
    "cdn.jsdelivr.net", "fonts.googleapis.com", "fonts.gstatic.com", "ocsp.digicert.com",
    "ocsp.pki.goog", "crl.pki.goog", "time.cloudflare.com", "api.twilio.com",
    "smtp.sendgrid.net", "api.mailgun.net", "sentry.io", "api.pagerduty.com",
    "events.pagerduty.com", "vault.internal.example.com", "kafka-0.events.example.com",
    "db-primary.prod.example.com", "redis.prod.example.com",
)
CDN_SUFFIXES = ("cloudfront.net", "akamaiedge.net", "fastly.net", "azureedge.net",
                "edgekey.net", "cdn.cloudflare.net")


@dataclass
class Proc:
    tgid: int
    tid: int
    comm: str
    uid: int
    cgroup_id: int
    cgroup_path: str
    netns: int
    addr: str
    kind: str  # glibc | musl | go
    app: str
    resolver: str
    namespace: str | None
    search_walk: bool  # ndots:5 and names with few dots: walks the search list
    weight: float
    exe: str
    cmdline: str
    ppid: int
    start_ns: int
    next_fd: int = 7
    used_ports: set[int] = field(default_factory=set)


@functools.lru_cache(maxsize=65536)
def _h(name: str) -> int:
    """A stable hash (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")


def _ip_for(name: str, family: int, n: int = 0) -> str:
    h = hashlib.blake2b(f"{name}/{n}".encode(), digest_size=16).digest()
    if family == 4:
        return f"{h[0] % 200 + 13}.{h[1]}.{h[2]}.{h[3] % 254 + 1}"
    groups = [0x2600, 0x1F18] + [int.from_bytes(h[i:i + 2], "big") for i in range(0, 12, 2)]
    return ":".join(f"{g:x}" for g in groups)


class Universe:
    """The node: pods, processes, names and the answers the resolver gives."""

    def __init__(self, rng: np.random.Generator, start_ns: int) -> None:
        self.rng = rng
        self.start_ns = start_ns
        self.procs: list[Proc] = []
        self.cgroups: list[tuple[int, str]] = []
        self.pods: list[dict[str, Any]] = []
        self._build_pods()
        self.names = self._build_names()
        self._templates: dict[tuple[Any, ...], bytes] = {}

    # --- pods and processes -----------------------------------------------------------------

    def _build_pods(self) -> None:
        rng = self.rng
        tgid = 4100
        cgid = 9000
        netns = 4026532300
        pod_specs = [
            ("shop", "frontend", "web", "glibc", 3), ("shop", "cart", "cart", "go", 2),
            ("shop", "checkout", "checkout", "musl", 2), ("shop", "catalog", "catalog", "glibc", 2),
            ("payments", "payments-api", "api", "go", 2), ("payments", "ledger", "ledger", "glibc", 1),
            ("monitoring", "prometheus", "prometheus", "go", 1),
            ("monitoring", "node-exporter", "node-exporter", "go", 1),
            ("monitoring", "fluent-bit", "fluent-bit", "glibc", 1),
            ("kube-system", "metrics-server", "metrics-server", "go", 1),
            ("default", "debug-shell", "shell", "musl", 1),
            ("batch", "report-gen", "worker", "glibc", 1),
            ("search", "indexer", "indexer", "glibc", 2), ("search", "query", "query", "musl", 2),
        ]
        comms = {"glibc": ("python3", "java", "nginx", "ruby"), "musl": ("node", "curl", "wget"),
                 "go": ("server", "app", "prometheus")}
        pod_ip = 10
        for ns, app, container, kind, replicas in pod_specs:
            for r in range(replicas):
                pod_uid = str(uuid.UUID(int=int(rng.integers(0, 2**63)) << 64
                                        | int(rng.integers(0, 2**63)), version=4))
                suffix = "".join(rng.choice(list("bcdfghjklmnpqrstvwxz2456789"), 5))
                pod = f"{app}-7f9c{r}d{pod_ip:02d}-{suffix}"
                cid = hashlib.sha256(pod.encode()).hexdigest()
                qos = ("guaranteed", "burstable", "besteffort")[int(rng.integers(0, 3))]
                systemd = (pod_ip % 2) == 0
                path = _cgroup_path(pod_uid, cid, qos, systemd)
                cgid += int(rng.integers(3, 40))
                netns += 8
                self.cgroups.append((cgid, path))
                self.pods.append({"pod_uid": pod_uid, "namespace": ns, "pod": pod,
                                  "container": None, "container_id": None})
                self.pods.append({"pod_uid": pod_uid, "namespace": ns, "pod": pod,
                                  "container": container, "container_id": cid})
                addr = f"10.244.1.{pod_ip}"
                pod_ip += 1
                comm = comms[kind][int(rng.integers(0, len(comms[kind])))]
                if app == "report-gen":
                    comm = "python3"
                nproc = 1 + int(rng.integers(0, 3))
                for p in range(nproc):
                    tgid += int(rng.integers(5, 300))
                    self.procs.append(Proc(
                        tgid=tgid, tid=tgid, comm=comm, uid=1000 if kind != "go" else 65532,
                        cgroup_id=cgid, cgroup_path=path, netns=netns, addr=addr, kind=kind, app=app,
                        resolver=DEAD_DNS if app == "ledger" else KUBE_DNS, namespace=ns,
                        search_walk=app in ("checkout", "debug-shell", "indexer"),
                        weight=float(rng.pareto(1.2) + 0.2) * (0.05 if app == "ledger" else 1.0),
                        exe=f"/usr/bin/{comm}", cmdline=f"{comm} --serve",
                        ppid=tgid - 1 if p else 3000 + pod_ip, start_ns=self.start_ns
                        - int(rng.integers(10**9, 10**13)),
                    ))
        # Host processes: no pod, system cgroups, root netns, the node's own resolver.
        for comm, path in (("kubelet", "/system.slice/kubelet.service"),
                           ("containerd", "/system.slice/containerd.service"),
                           ("chronyd", "/system.slice/chrony.service")):
            cgid += 7
            tgid += 11
            self.cgroups.append((cgid, path))
            self.procs.append(Proc(
                tgid=tgid, tid=tgid, comm=comm, uid=0, cgroup_id=cgid, cgroup_path=path,
                netns=4026531840, addr="10.0.12.34", kind="glibc", app=comm, resolver="10.0.0.2",
                namespace=None, search_walk=False, weight=0.6, exe=f"/usr/bin/{comm}",
                cmdline=comm, ppid=1, start_ns=self.start_ns - 2 * 86400 * 10**9,
            ))

    # --- names -----------------------------------------------------------------------------

    def _build_names(self) -> list[tuple[str, str]]:
        """(name, category) in Zipf rank order; category: svc, ext, cdn, typo."""
        rng = self.rng
        svc_words = ("api", "db", "cache", "redis", "postgres", "auth", "users", "orders",
                     "inventory", "search", "kafka", "zookeeper", "grafana", "loki", "tempo",
                     "mailer", "images", "thumbs", "pricing", "tax", "shipping", "reviews")
        names: list[tuple[str, str]] = []
        for ns in NAMESPACES:
            for w in svc_words:
                names.append((f"{w}.{ns}.{CLUSTER_SUFFIX}", "svc"))
        names.append((f"kubernetes.default.{CLUSTER_SUFFIX}", "svc"))
        for n in EXTERNAL_FIXED:
            names.append((n, "ext"))
        for i in range(600):
            sfx = CDN_SUFFIXES[i % len(CDN_SUFFIXES)]
            names.append((f"d{hashlib.md5(str(i).encode()).hexdigest()[:13]}.{sfx}", "cdn"))
        for i in range(400):
            names.append((f"bucket-{i:04d}.s3.us-east-1.amazonaws.com", "ext"))
        for i in range(120):
            names.append((f"svc-{i:03d}.internal.example.com", "ext"))
        order = rng.permutation(len(names))
        # Keep the heavy hitters realistic: cluster services and a few APIs at the top.
        top = [i for i in order if names[i][1] == "svc"][:12] + [
            i for i in order if names[i][1] == "ext"][:8]
        rest = [i for i in order if i not in set(top)]
        return [names[i] for i in top + rest]

    # --- wire payloads ---------------------------------------------------------------------

    def query_wire(self, dns_id: int, name: str, qtype: str, cache: bool = True) -> bytes:
        key = ("q", name, qtype)
        t = self._templates.get(key) if cache else None
        if t is None:
            rec = DNSRecord(DNSHeader(id=0, rd=1), q=DNSQuestion(name, getattr(QTYPE, qtype)))
            t = rec.pack()
            if cache:
                self._templates[key] = t
        return struct.pack(">H", dns_id) + t[2:]

    def response_wire(self, dns_id: int, name: str, qtype: str, rcode: str, category: str,
                      cache: bool = True, txt: str | None = None) -> tuple[bytes, list[str]]:
        """Response payload and the answer addresses in it."""
        key = ("r", name, qtype, rcode)
        hit = self._templates.get(key) if cache else None
        if hit is not None:
            t, ips = hit  # type: ignore[misc]
            return struct.pack(">H", dns_id) + t[2:], ips
        rec = DNSRecord(DNSHeader(id=0, qr=1, rd=1, ra=1, aa=category == "svc",
                                  rcode=getattr(RCODE, rcode)),
                        q=DNSQuestion(name, getattr(QTYPE, qtype)))
        ips: list[str] = []
        zone = "cluster.local" if name.endswith("cluster.local") else ".".join(
            name.split(".")[-2:])
        if rcode == "NOERROR":
            owner = name
            if category == "cdn" or (category == "ext" and _h(name) % 3 == 0):
                target = f"{name.split('.')[0]}.edge-{_h(name) % 97}.{CDN_SUFFIXES[_h(name) % 6]}"
                rec.add_answer(RR(owner, QTYPE.CNAME, rdata=CNAME(target), ttl=300))
                owner = target
            if qtype == "A":
                n = 1 if category == "svc" else 1 + _h(name) % 4
                for i in range(n):
                    ip = (f"10.96.{_h(name) % 250}.{(_h(name) >> 8) % 250 + 1}"
                          if category == "svc" else _ip_for(name, 4, i))
                    ips.append(ip)
                    rec.add_answer(RR(owner, QTYPE.A, rdata=A(ip),
                                      ttl=30 if category == "svc" else 60 + _h(name) % 240))
            elif qtype == "AAAA" and category != "svc" and _h(name) % 2 == 0:
                for i in range(1 + _h(name) % 2):
                    ip = _ip_for(name, 6, i)
                    ips.append(ip)
                    rec.add_answer(RR(owner, QTYPE.AAAA, rdata=AAAA(ip), ttl=120))
            elif qtype == "TXT":
                rec.add_answer(RR(name, QTYPE.TXT, rdata=TXT(txt or "ok"), ttl=0))
        if not rec.rr:
            rec.add_auth(RR(zone, QTYPE.SOA, ttl=30, rdata=SOA(
                f"ns.dns.{zone}", f"hostmaster.{zone}", (1700000000, 7200, 1800, 86400, 30))))
        t = rec.pack()
        if cache:
            self._templates[key] = (t, ips)  # type: ignore[assignment]
        return struct.pack(">H", dns_id) + t[2:], ips


def _cgroup_path(pod_uid: str, cid: str, qos: str, systemd: bool) -> str:
    if systemd:
        u = pod_uid.replace("-", "_")
        if qos == "guaranteed":
            return f"/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{cid}.scope"
        return (f"/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{u}.slice/"
                f"cri-containerd-{cid}.scope")
    if qos == "guaranteed":
        return f"/kubepods/pod{pod_uid}/{cid}"
    return f"/kubepods/{qos}/pod{pod_uid}/{cid}"


class Rows:
    """Column lists for the messages table (one entry per message)."""

    COLS = ("ts", "tgid", "tid", "uid", "comm", "cgroup_id", "netns", "syscall", "direction",
            "fd", "sock_id", "msg_index", "family", "src_addr", "src_port", "dst_addr",
            "dst_port", "payload")

    def __init__(self) -> None:
        self.c: dict[str, list[Any]] = {k: [] for k in self.COLS}

    def add(self, ts: int, p: Proc, syscall: str, direction: str, fd: int, sock: int,
            idx: int, src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> None:
        c = self.c
        c["ts"].append(ts)
        c["tgid"].append(p.tgid)
        c["tid"].append(p.tid)
        c["uid"].append(p.uid)
        c["comm"].append(p.comm)
        c["cgroup_id"].append(p.cgroup_id)
        c["netns"].append(p.netns)
        c["syscall"].append(syscall)
        c["direction"].append(direction)
        c["fd"].append(fd)
        c["sock_id"].append(sock)
        c["msg_index"].append(idx)
        c["family"].append("inet")
        c["src_addr"].append(src[0])
        c["src_port"].append(src[1])
        c["dst_addr"].append(dst[0])
        c["dst_port"].append(dst[1])
        c["payload"].append(payload)

    def __len__(self) -> int:
        return len(self.c["ts"])

    def split(self, before: int) -> dict[str, list[Any]]:
        """Take out the rows with ``ts < before`` (in the order added); keep the others."""
        return _split(self.c, before)


def _split(c: dict[str, list[Any]], before: int) -> dict[str, list[Any]]:
    """The rows of column lists ``c`` with ``ts < before``, removed from ``c`` (both parts
    keep the order rows were added in)."""
    ts = np.asarray(c["ts"], dtype=np.int64)
    early = ts < before
    if early.all():
        out = {k: v for k, v in c.items()}
        for k in c:
            c[k] = []
        return out
    take, keep = np.flatnonzero(early), np.flatnonzero(~early)
    out = {k: [v[i] for i in take] for k, v in c.items()}
    for k, v in c.items():
        c[k] = [v[i] for i in keep]
    return out


@dataclass
class Expected:
    messages: int = 0
    queries: int = 0
    responses: int = 0
    nxdomain_responses: int = 0
    noerror_responses: int = 0
    answered_transactions: int = 0
    unanswered_queries: int = 0
    retransmitted_queries: int = 0
    tunnel_queries: int = 0
    tunnel_domain: str = TUNNEL_DOMAIN
    lookups: int = 0
    connects: int = 0
    distinct_qnames: int = 0
    pods: int = 0
    processes: int = 0


def _latency_ns(rng: np.random.Generator, category: str, rcode: str) -> int:
    if category == "svc" or rcode == "NXDOMAIN" and category != "ext":
        return int(rng.lognormal(np.log(350e3), 0.5))
    if category == "tunnel":
        return int(rng.lognormal(np.log(40e6), 0.4))
    if rng.random() < 0.7:  # served from the cluster resolver's cache
        return int(rng.lognormal(np.log(500e3), 0.5))
    return int(rng.lognormal(np.log(18e6), 0.8))


#: Messages generated before the earlier ones are handed on (``generate``'s ``emit``).
CHUNK = 1_000_000

Emit = Callable[[dict[str, list[Any]], dict[str, list[Any]]], None]


def generate(n_messages: int, rng: np.random.Generator, uni: Universe, all_unique: bool,
             emit: Emit, hold: int = CHUNK) -> Expected:
    """Generate ``n_messages``; ``emit(messages, connects)`` receives them as column lists,
    in slices of about ``hold`` messages: every row earlier than the lookup being made (no
    later lookup adds an earlier one), so the slices, each sorted by time, follow each other
    in time and hold the rows in the order one sort of them all would give."""
    rows = Rows()
    emitted = 0
    conn: dict[str, list[Any]] = {k: [] for k in ("ts", "tgid", "tid", "uid", "comm",
                                                   "cgroup_id", "netns", "fd", "dst_addr",
                                                   "dst_port", "result", "latency_ns")}
    exp = Expected(pods=len({p["pod_uid"] for p in uni.pods}))
    pod_procs = [p for p in uni.procs]
    weights = np.array([p.weight for p in pod_procs])
    weights /= weights.sum()
    tunnel_proc = next(p for p in uni.procs if p.app == "report-gen")
    nnames = len(uni.names)
    zipf_w = 1.0 / np.arange(1, nnames + 1) ** 1.05
    zipf_w /= zipf_w.sum()
    qnames: set[str] = set()
    # Lookups arrive as a Poisson process, ~2500 messages/s on the node.
    rate_ns = 1e9 / 2500 * 2.2
    t = uni.start_ns
    batch = 4096
    lookup_no = 0
    b32 = base64.b32encode

    def new_socket(p: Proc) -> tuple[int, int, int]:
        port = int(rng.integers(32768, 61000))
        fd = p.next_fd
        p.next_fd = 7 + (p.next_fd - 6) % 40
        sock = 0xFFFF888100000000 + int(rng.integers(0, 2**31)) * 64
        return port, fd, sock

    def exchange(p: Proc, t0: int, name: str, qtypes: tuple[str, ...], rcode: str,
                 category: str, cache: bool = True, pair_socket: bool = True,
                 answered: bool = True, txt: str | None = None) -> tuple[int, list[str]]:
        """Queries for qtypes in parallel, their responses; returns end time and addresses."""
        qnames.add(name)
        end = t0
        addrs: list[str] = []
        server = (p.resolver, 53)
        port, fd, sock = new_socket(p)
        for i, qt in enumerate(qtypes):
            if p.kind == "go" and i > 0:
                port, fd, sock = new_socket(p)
            dns_id = int(rng.integers(0, 65536))
            q = uni.query_wire(dns_id, name, qt, cache)
            tq = t0 + i * int(rng.integers(2000, 30000))
            if p.kind == "glibc":
                sc_send, sc_recv, idx = "sendmmsg", "recvfrom", i
            elif p.kind == "musl":
                sc_send, sc_recv, idx = "sendto", "recvfrom", 0
            else:
                sc_send, sc_recv, idx = "write", "read", 0
            if p.kind == "glibc" and len(qtypes) > 1:
                tq = t0  # both in one sendmmsg call
            rows.add(tq, p, sc_send, "send", fd, sock, idx, (p.addr, port), server, q)
            exp.queries += 1
            if not answered:
                # glibc/musl retransmit after their timeout; nobody answers either copy.
                rows.add(tq + 1_500_000_000, p, sc_send, "send", fd, sock, idx, (p.addr, port),
                         server, q)
                exp.queries += 1
                exp.retransmitted_queries += 1
                exp.unanswered_queries += 1
                end = max(end, tq + 6 * 10**9)
                continue
            r, ips = uni.response_wire(dns_id, name, qt, rcode, category, cache, txt)
            tr = tq + _latency_ns(rng, category, rcode)
            rows.add(tr, p, sc_recv, "recv", fd, sock, 0, server, (p.addr, port), r)
            exp.responses += 1
            exp.answered_transactions += 1
            if rcode == "NXDOMAIN":
                exp.nxdomain_responses += 1
            else:
                exp.noerror_responses += 1
            addrs.extend(ips)
            end = max(end, tr)
        return end, addrs

    while emitted + len(rows) < n_messages:
        procs_idx = rng.choice(len(pod_procs), size=batch, p=weights)
        name_idx = rng.choice(nnames, size=batch, p=zipf_w)
        kinds = rng.random(batch)
        gaps = rng.exponential(rate_ns, size=batch)
        for k in range(batch):
            if emitted + len(rows) >= n_messages:
                break
            t += int(gaps[k])
            if len(rows) >= hold:
                part = rows.split(t)
                emitted += len(part["ts"])
                emit(part, _split(conn, t))
            p = pod_procs[procs_idx[k]]
            lookup_no += 1
            exp.lookups += 1
            u = kinds[k]
            if all_unique:
                label = b32(rng.bytes(5)).decode().lower()
                zone = uni.names[name_idx[k]][0]
                name = f"h{lookup_no}-{label}.{zone}"
                rc = "NXDOMAIN" if u < 0.1 else "NOERROR"
                exchange(p, t, name, ("A",), rc, "ext", cache=False)
                continue
            if p.resolver == DEAD_DNS:
                exchange(p, t, uni.names[name_idx[k]][0], ("A", "AAAA"), "NOERROR", "svc",
                         answered=False)
                continue
            if p is tunnel_proc and u < 0.5 or u < 0.03:
                # Tunnel-like: one TXT query per chunk, a unique base32 label each time.
                p = tunnel_proc
                chunk = b32(rng.bytes(35)).decode().rstrip("=").lower()
                name = f"{chunk}.{lookup_no:x}.{TUNNEL_DOMAIN}"
                reply = b32(rng.bytes(20)).decode().rstrip("=").lower()
                exchange(p, t, name, ("TXT",), "NOERROR", "tunnel", cache=False, txt=reply)
                exp.tunnel_queries += 1
                continue
            name, cat = uni.names[name_idx[k]]
            qtypes = ("A", "AAAA")
            if u < 0.06:
                # A name that does not exist (typo, stale config, dead service).
                name = f"{'old-' if u < 0.025 else 'legacy-'}{name}"
                exchange(p, t, name, qtypes, "NXDOMAIN", cat)
                continue
            if p.search_walk and p.namespace and cat != "svc" and kinds[k] > 0.9:
                # ndots:5 walks the search list before the absolute name.
                tt = t
                for sfx in (f"{p.namespace}.{CLUSTER_SUFFIX}", CLUSTER_SUFFIX, "cluster.local"):
                    tt, _ = exchange(p, tt, f"{name}.{sfx}", qtypes, "NXDOMAIN", "svc")
                    tt += int(rng.integers(5000, 60000))
                end, addrs = exchange(p, tt, name, qtypes, "NOERROR", cat)
            else:
                end, addrs = exchange(p, t, name, qtypes, "NOERROR", cat)
            if addrs and u > 0.6:
                tc = end + int(rng.integers(20_000, 400_000))
                for key, val in (("ts", tc), ("tgid", p.tgid), ("tid", p.tid), ("uid", p.uid),
                                 ("comm", p.comm), ("cgroup_id", p.cgroup_id),
                                 ("netns", p.netns), ("fd", p.next_fd), ("dst_addr", addrs[0]),
                                 ("dst_port", 443), ("result", -115),
                                 ("latency_ns", int(rng.integers(8000, 60000)))):
                    conn[key].append(val)
                exp.connects += 1
    emitted += len(rows)
    emit(rows.split(2**63 - 1), _split(conn, 2**63 - 1))
    exp.messages = emitted
    exp.distinct_qnames = len(qnames)
    exp.processes = len(uni.procs)
    return exp


def _dict_array(values: list[str]) -> pa.Array:
    return pa.array(values, type=pa.string()).dictionary_encode().cast(
        pa.dictionary(pa.int8(), pa.string()))


def messages_table(c: dict[str, list[Any]], boot_time_ns: int) -> pa.Table:
    ts = np.asarray(c["ts"], dtype=np.int64)
    order = np.argsort(ts, kind="stable")

    def col(name: str, typ: pa.DataType) -> pa.Array:
        arr = pa.array(c[name], type=typ)
        return arr.take(pa.array(order))

    payload = pa.array(c["payload"], type=pa.binary()).take(pa.array(order))
    lens = pa.compute.binary_length(payload).cast(pa.uint32())
    n = len(order)
    cols = {
        "ts": pa.array(ts[order], type=pa.timestamp("ns", tz="UTC")),
        "mono_ns": pa.array(ts[order] - boot_time_ns, type=pa.int64()),
        "seq": pa.array(np.arange(n, dtype=np.uint64)),
        "tgid": col("tgid", pa.int32()),
        "tid": col("tid", pa.int32()),
        "uid": col("uid", pa.uint32()),
        "comm": col("comm", pa.string()),
        "cgroup_id": col("cgroup_id", pa.uint64()),
        "netns": col("netns", pa.uint32()),
        "syscall": _dict_array(c["syscall"]).take(pa.array(order)),
        "direction": _dict_array(c["direction"]).take(pa.array(order)),
        "fd": col("fd", pa.int32()),
        "sock_id": col("sock_id", pa.uint64()),
        "msg_index": col("msg_index", pa.uint16()),
        "protocol": _dict_array(["udp"] * n),
        "family": _dict_array(c["family"]).take(pa.array(order)),
        "src_addr": col("src_addr", pa.string()),
        "src_port": col("src_port", pa.uint16()),
        "dst_addr": col("dst_addr", pa.string()),
        "dst_port": col("dst_port", pa.uint16()),
        "payload": payload,
        "orig_len": lens,
        "truncated": pa.array(np.zeros(n, dtype=bool)),
    }
    schema = SCHEMAS["messages"]
    return pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)


def connects_table(conn: dict[str, list[Any]], boot_time_ns: int) -> pa.Table:
    ts = np.asarray(conn["ts"], dtype=np.int64)
    order = pa.array(np.argsort(ts, kind="stable"))
    n = len(ts)
    schema = SCHEMAS["connects"]
    types = {f.name: f.type for f in schema}
    cols: dict[str, pa.Array] = {
        "ts": pa.array(ts, type=types["ts"]).take(order),
        "mono_ns": pa.array(ts - boot_time_ns, type=pa.int64()).take(order),
        "seq": pa.array(np.arange(n, dtype=np.uint64)),
        "family": _dict_array(["inet"] * n),
        "protocol": _dict_array(["tcp"] * n),
    }
    for name in ("tgid", "tid", "uid", "comm", "cgroup_id", "netns", "fd", "dst_addr",
                 "dst_port", "result", "latency_ns"):
        cols[name] = pa.array(conn[name], type=types[name]).take(order)
    return pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)


def snapshot_tables(uni: Universe) -> dict[str, pa.Table]:
    procs = uni.procs
    ts_type = pa.timestamp("ns", tz="UTC")
    processes = pa.table({
        "tgid": pa.array([p.tgid for p in procs], pa.int32()),
        "ppid": pa.array([p.ppid for p in procs], pa.int32()),
        "uid": pa.array([p.uid for p in procs], pa.uint32()),
        "comm": [p.comm for p in procs],
        "exe": [p.exe for p in procs],
        "cmdline": [p.cmdline for p in procs],
        "cgroup_id": pa.array([p.cgroup_id for p in procs], pa.uint64()),
        "cgroup_path": [p.cgroup_path for p in procs],
        "netns": pa.array([p.netns for p in procs], pa.uint32()),
        "start_time": pa.array([p.start_ns for p in procs], ts_type),
        "source": _dict_array(["scan"] * len(procs)),
    })
    cgroups = pa.table({
        "cgroup_id": pa.array([c[0] for c in uni.cgroups], pa.uint64()),
        "path": [c[1] for c in uni.cgroups],
        "resolved_at": pa.array([uni.start_ns] * len(uni.cgroups), ts_type),
    })
    pods = pa.table({
        "pod_uid": [p["pod_uid"] for p in uni.pods],
        "namespace": [p["namespace"] for p in uni.pods],
        "pod": [p["pod"] for p in uni.pods],
        "container": [p["container"] for p in uni.pods],
        "container_id": [p["container_id"] for p in uni.pods],
        "source": _dict_array(["var-log-pods"] * len(uni.pods)),
    })
    return {"processes": processes, "cgroups": cgroups, "pods": pods}


def open_capture(out: Path, uni: Universe, boot_time_ns: int,
                 argv: list[str]) -> CaptureWriter:
    """The capture's writer, started (``write`` the messages and connects, then ``close``)."""
    from capture.writer import utc_iso

    info = {
        "source": "ebpf",
        "host": "ip-10-0-12-34.synthetic",
        "kernel": "6.1.0-synthetic",
        "boot_time_ns": boot_time_ns,
        "started_at": utc_iso(uni.start_ns),
        "command_line": argv,
        "filters": {"ports": [53], "snaplen": 512},
    }
    snaps = snapshot_tables(uni)
    w = CaptureWriter(out, info=info, snapshot_provider=lambda: snaps)
    w.start()
    w.set_lost({"ringbuf_full": 0, "payload_unreadable": 0})
    return w


def _ip_bytes(addr: str) -> bytes:
    return bytes(int(x) for x in addr.split("."))


class Pcap:
    """The messages as a classic nanosecond pcap: Ethernet/IPv4/UDP, one packet each
    (``write`` each slice in turn)."""

    def __init__(self, path: Path) -> None:
        self.fh = open(path, "wb", buffering=1 << 20)  # noqa: SIM115  (closed by close)
        self.fh.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1))
        self.packets = 0

    def write(self, messages: pa.Table) -> None:
        self.packets += _write_packets(self.fh, messages, self.packets)

    def close(self) -> None:
        self.fh.close()


def _write_packets(fh: Any, messages: pa.Table, first: int) -> int:
    ts = messages.column("ts").cast(pa.int64()).to_numpy()
    src = messages.column("src_addr").to_pylist()
    dst = messages.column("dst_addr").to_pylist()
    sport = messages.column("src_port").to_pylist()
    dport = messages.column("dst_port").to_pylist()
    payload = messages.column("payload").to_pylist()
    eth = b"\x02\x42\xac\x11\x00\x02" + b"\x02\x42\xac\x11\x00\x03" + b"\x08\x00"
    ipcache: dict[str, bytes] = {}
    rec_hdr = struct.Struct("<IIII")
    ip_hdr = struct.Struct("!BBHHHBBH4s4s")
    udp_hdr = struct.Struct("!HHHH")
    for i in range(len(payload)):
        pl = payload[i]
        s = ipcache.get(src[i])
        if s is None:
            s = ipcache.setdefault(src[i], _ip_bytes(src[i]))
        d = ipcache.get(dst[i])
        if d is None:
            d = ipcache.setdefault(dst[i], _ip_bytes(dst[i]))
        udp_len = 8 + len(pl)
        ip = ip_hdr.pack(0x45, 0, 20 + udp_len, (first + i) & 0xFFFF, 0x4000, 64, 17, 0,
                         s, d)
        frame = eth + ip + udp_hdr.pack(sport[i], dport[i], udp_len, 0) + pl
        t = int(ts[i])
        fh.write(rec_hdr.pack(t // 10**9, t % 10**9, len(frame), len(frame)))
        fh.write(frame)
    return len(payload)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", required=True, type=Path, help="capture directory to create")
    ap.add_argument("--messages", type=int, default=1_000_000, help="number of DNS messages")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--all-unique", action="store_true", help="every transaction a new name")
    ap.add_argument("--pcap", type=Path, help="also write the messages as this pcap")
    ap.add_argument("--expected", type=Path, help="write the expected counts (JSON) here")
    ap.add_argument("--chunk", type=int, default=CHUNK,
                    help="messages held in memory before the earlier ones are written")
    args = ap.parse_args(argv)
    if args.messages <= 0 or args.messages > 50_000_000:
        ap.error("--messages must be between 1 and 50,000,000")
    t0 = time.monotonic()
    start_ns = (time.time_ns() // 10**9 - 3600) * 10**9
    boot_time_ns = start_ns - BOOT_UPTIME_NS
    # the universe (pods, processes) is drawn first from the seed, then the traffic
    rng = np.random.default_rng(args.seed)
    uni = Universe(rng, start_ns)
    w = open_capture(args.output, uni, boot_time_ns,
                     ["gen_capture.py", *(argv if argv is not None else sys.argv[1:])])
    pcap = Pcap(args.pcap) if args.pcap else None

    def emit(messages: dict[str, list[Any]], connects: dict[str, list[Any]]) -> None:
        msgs = messages_table(messages, boot_time_ns)
        w.write("messages", msgs)
        w.write("connects", connects_table(connects, boot_time_ns))
        if pcap is not None:
            pcap.write(msgs)

    try:
        exp = generate(args.messages, rng, uni, args.all_unique, emit, max(1, args.chunk))
        w.close("complete")
    finally:
        if pcap is not None:
            pcap.close()
    result: dict[str, Any] = dict(exp.__dict__)
    result["all_unique"] = args.all_unique
    result["seed"] = args.seed
    result["seconds"] = round(time.monotonic() - t0, 2)
    text = json.dumps(result, indent=1)
    if args.expected:
        args.expected.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
