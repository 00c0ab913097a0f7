"""The lab: a server namespace running dnsmasq, client namespaces wired to it, fake pods.

Topology (addresses are private and exist only inside the lab's own namespaces):

    dtl-<id>-srv   br0 10.213.0.1 (dnsmasq #1)  .2 (dnsmasq #2)  .3 (unbound, on demand)
                       .80 .81 .90 (service addresses of the zone, for --connect)
                       .253 (assigned, nothing on :53: ICMP port unreachable)
                       fd00:213::1 ::2 ::3 ::80
    dtl-<id>-cN    eth0 10.213.0.(100+slot) fd00:213::(100+slot)  <- veth -> vcN on br0
    10.213.0.254   on the link but nobody answers: the "dead server" (queries time out)

No namespace has a route anywhere else, so nothing a lab client sends can leave the lab.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from . import clients as _clients
from . import registry
from ._sys import LabError, cgroup2_mount, proc_start_time, run_cmd
from .pods import FakePod, PodsRoot, kubelet_cgroup_dirs, new_container_id, new_uid
from .zone import Zone, default_zone, dnsmasq_config, merge_zone, unbound_config

SUBNET = "10.213.0"
SUBNET6 = "fd00:213:"
SERVER_ADDR = f"{SUBNET}.1"
SERVER2_ADDR = f"{SUBNET}.2"
UNBOUND_ADDR = f"{SUBNET}.3"
REFUSED_ADDR = f"{SUBNET}.253"
DEAD_ADDR = f"{SUBNET}.254"
SERVICE_ADDRS = (f"{SUBNET}.80", f"{SUBNET}.81", f"{SUBNET}.90")
FIRST_CLIENT = 100
MAX_CLIENTS = 150
LISTENER = Path(__file__).resolve().parent / "listener.py"
PUSH = Path(__file__).resolve().parent / "push.py"
IODINE_ADDR = f"{SUBNET}.4"
IODINE_NET = "10.214.0.1/27"

_counter = itertools.count(1)
_open_labs: weakref.WeakSet[Lab] = weakref.WeakSet()


@dataclass
class NetNS:
    """A lab network namespace. `ip netns exec NAME` sees resolv_conf as /etc/resolv.conf."""

    name: str
    addr: str
    addr6: str | None
    nameservers: list[str]
    search: list[str]
    ndots: int | None
    resolv_conf: str

    @property
    def path(self) -> Path:
        return Path("/run/netns") / self.name

    @property
    def inode(self) -> int:
        """The namespace's inode: the `netns` a capture records for processes inside it."""
        return os.stat(self.path).st_ino

    def __str__(self) -> str:
        return self.name


class LabResult(subprocess.CompletedProcess[str]):
    """CompletedProcess plus the pid the command ran as (the client itself: `ip netns exec`
    and the cgroup wrapper both exec), and where it ran."""

    def __init__(self, args: Any, returncode: int, stdout: str, stderr: str, *, pid: int,
                 ns: NetNS, pod: FakePod | None, seconds: float) -> None:
        super().__init__(args, returncode, stdout, stderr)
        self.pid = pid
        self.ns = ns
        self.pod = pod
        self.seconds = seconds

    def lines(self) -> list[str]:
        return self.stdout.splitlines()


class LabProcess(subprocess.Popen):  # type: ignore[type-arg]
    """A Popen started by Lab.spawn; output_path holds its output unless redirected."""

    output_path: Path | None = None
    ns_name: str = ""

    def output(self) -> str:
        if self.output_path is None or not self.output_path.exists():
            return ""
        return self.output_path.read_text(errors="replace")


@dataclass
class Server:
    """A DNS server the lab started (dnsmasq or unbound)."""

    kind: str
    addr: str
    ns: NetNS
    proc: LabProcess
    config: Path
    log: Path | None


@dataclass
class DnsperfResult:
    qps: float
    sent: int
    completed: int
    lost: int
    output: str
    argv: list[str] = field(default_factory=list)


@dataclass
class IodineResult:
    domain: str
    ns: NetNS
    pod: FakePod | None
    client_ip: str
    server_ip: str
    bytes_sent: int
    bytes_received: int
    seconds: float
    client_pid: int
    client_output: str
    server_output: str


class Lab:
    """See tests/lab/README.md. Use as a context manager; close() is idempotent."""

    def __init__(self, zone: Mapping[str, Sequence[tuple[str, str]]] | None = None, *,
                 ttl: int = 60, second_server: bool = True, log_queries: bool = True,
                 pods_root: Path | str | None = None, replace_zone: bool = False) -> None:
        self.lab_id = f"{os.getpid()}x{next(_counter)}"
        self.zone: Zone = merge_zone({} if replace_zone else default_zone(), zone)
        self.ttl = ttl
        self.second_server = second_server
        self.log_queries = log_queries
        self.server_addr = SERVER_ADDR
        self.server2_addr = SERVER2_ADDR
        self.dead_addr = DEAD_ADDR
        self.refused_addr = REFUSED_ADDR
        self.web_addr = SERVICE_ADDRS[0]
        self.servers: list[Server] = []
        self.namespaces: list[NetNS] = []
        self.pods: list[FakePod] = []
        self._procs: list[LabProcess] = []
        self._slots: dict[str, int] = {}  # client namespace -> address slot
        self._serial = itertools.count()
        self._res = registry.Resources.new(self.lab_id)
        self._user_pods_root = Path(pods_root) if pods_root is not None else None
        self._started = False
        self._closed = False
        self.tmp: Path = Path()
        self.server_ns: NetNS | None = None
        self._pods_root: PodsRoot | None = None

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(raise_errors=exc_type is None)

    def start(self) -> Lab:
        if self._started:
            return self
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, cgroups)")
        for tool in ("ip", "dnsmasq"):
            if shutil.which(tool) is None:
                raise LabError(f"{tool} is not installed")
        self._started = True
        _open_labs.add(self)
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=f"dtl-{self.lab_id}-"))
            self._res.tmpdirs.append(str(self.tmp))
            self._res.save()
            root = self._user_pods_root or self.tmp / "pods-root"
            self._pods_root = PodsRoot(root)
            self._start_server_ns()
        except BaseException:
            self.close(raise_errors=False)
            raise
        return self

    def close(self, raise_errors: bool = True) -> None:
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        self._stop(self._procs)
        errors = registry.teardown(self._res)
        _open_labs.discard(self)
        if errors:
            msg = "lab teardown left things behind: " + "; ".join(errors)
            if raise_errors:
                raise LabError(msg)
            print(msg, file=sys.stderr)

    @staticmethod
    def _stop(procs: Sequence[LabProcess]) -> None:
        """SIGTERM each process group, SIGKILL what is left after 3 s, reap them all."""
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    p.terminate()
        for p in procs:
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=3)

    # ----------------------------------------------------------------- namespaces
    def _new_ns(self, suffix: str) -> str:
        name = f"{registry.NETNS_PREFIX}{self.lab_id}-{suffix}"
        self._res.netns.append(name)
        self._res.etc_netns.append(f"/etc/netns/{name}")
        self._res.save()
        run_cmd(["ip", "netns", "add", name])
        run_cmd(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def _write_etc(self, name: str, nameservers: Sequence[str], search: Sequence[str],
                   ndots: int | None, timeout: int | None, attempts: int | None,
                   options: Sequence[str]) -> str:
        lines = [f"# dnstrail lab {self.lab_id}: namespace {name}"]
        lines += [f"nameserver {ns}" for ns in nameservers]
        if search:
            lines.append("search " + " ".join(search))
        opts = list(options)
        if ndots is not None:
            opts.append(f"ndots:{ndots}")
        if timeout is not None:
            opts.append(f"timeout:{timeout}")
        if attempts is not None:
            opts.append(f"attempts:{attempts}")
        if opts:
            lines.append("options " + " ".join(opts))
        text = "\n".join(lines) + "\n"
        etc = Path("/etc/netns") / name
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(text)
        # files then dns only: no nss module may reach a resolver outside the namespace
        (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files dns\n")
        (etc / "hosts").write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost\n")
        return text

    def _start_server_ns(self) -> None:
        name = self._new_ns("srv")
        text = self._write_etc(name, [SERVER_ADDR], [], None, 1, 1, [])
        self.server_ns = NetNS(name, SERVER_ADDR, f"{SUBNET6}:1", [SERVER_ADDR], [], None, text)
        self.namespaces.append(self.server_ns)
        ip = ["ip", "-n", name]
        run_cmd([*ip, "link", "add", "br0", "type", "bridge"])
        run_cmd([*ip, "link", "set", "br0", "up"])
        v4 = [SERVER_ADDR, SERVER2_ADDR, UNBOUND_ADDR, IODINE_ADDR, *SERVICE_ADDRS, REFUSED_ADDR]
        for a in v4:
            run_cmd([*ip, "addr", "add", f"{a}/24", "dev", "br0"])
        for a in ("1", "2", "3", "80"):
            run_cmd([*ip, "addr", "add", f"{SUBNET6}:{a}/64", "dev", "br0", "nodad"])
        self._start_dnsmasq(SERVER_ADDR, f"{SUBNET6}:1", "server1")
        if self.second_server:
            self._start_dnsmasq(SERVER2_ADDR, f"{SUBNET6}:2", "server2")
        for s in self.servers:
            self._wait_dns(self.server_ns, s.addr)

    def _start_dnsmasq(self, addr: str, addr6: str, ident: str,
                       ns: NetNS | None = None) -> Server:
        ns = ns or self.server_ns
        assert ns is not None
        conf = self.tmp / f"dnsmasq-{ident}.conf"
        log = self.tmp / f"dnsmasq-{ident}.log"
        # queries are logged to stderr ("-"), which goes to the log file: one copy, no pipe
        text = dnsmasq_config(self.zone, listen=[a for a in (addr, addr6) if a], ttl=self.ttl,
                              log_file="-" if self.log_queries else None,
                              extra_txt={"whoami.lab.test": ident})
        conf.write_text("user=root\n" + text)
        with open(log, "wb") as log_file:
            proc = self.spawn(ns, ["dnsmasq", "--keep-in-foreground", "--no-daemon",
                                   f"--conf-file={conf}", "--pid-file=", "--no-resolv",
                                   "--no-hosts"],
                              stdout=subprocess.DEVNULL, stderr=log_file)
        proc.output_path = log
        server = Server("dnsmasq", addr, ns, proc, conf, log)
        self.servers.append(server)
        return server

    def dnsmasq(self, ns: NetNS, addr: str = "127.0.0.1", ident: str | None = None) -> Server:
        """Another dnsmasq with the lab zone, e.g. on a client namespace's loopback (a
        node-local cache). whoami.lab.test TXT answers ident (default: dnsmasq-<addr>)."""
        self._require_started()
        server = self._start_dnsmasq(addr, "", ident or f"dnsmasq-{addr}", ns)
        self._wait_dns(ns, addr)
        return server

    def _wait_dns(self, ns: NetNS, addr: str, seconds: float = 10.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            r = self.run(ns, ["dig", f"@{addr}", "+time=1", "+tries=1", "+short",
                              "whoami.lab.test", "TXT"], timeout=5)
            if r.returncode == 0 and r.stdout.strip():
                return
            for s in self.servers:
                if s.addr == addr and s.proc.poll() is not None:
                    err = s.proc.output()
                    raise LabError(f"{s.kind} on {addr} exited ({s.proc.returncode}): {err}")
            time.sleep(0.1)
        raise LabError(f"no DNS server answered on {addr} within {seconds}s")

    def client_ns(self, nameservers: Sequence[str] | None = None, *,
                  search: Sequence[str] = (), ndots: int | None = None,
                  timeout: int | None = None, attempts: int | None = None,
                  options: Sequence[str] = ()) -> NetNS:
        """A new namespace on the lab link with its own resolv.conf (default nameserver:
        the lab's first dnsmasq). timeout/attempts/ndots become `options` entries."""
        self._require_started()
        assert self.server_ns is not None
        used = set(self._slots.values())
        k = next((i for i in range(MAX_CLIENTS) if i not in used), None)
        if k is None:
            raise LabError(f"a lab has at most {MAX_CLIENTS} client namespaces at a time "
                           "(lab.remove_ns() frees one)")
        serial = next(self._serial)
        name = self._new_ns(f"c{serial}")
        self._slots[name] = k
        servers = list(nameservers) if nameservers is not None else [SERVER_ADDR]
        text = self._write_etc(name, servers, search, ndots, timeout, attempts, options)
        addr, addr6 = f"{SUBNET}.{FIRST_CLIENT + k}", f"{SUBNET6}:{FIRST_CLIENT + k:x}"
        ip_srv = ["ip", "-n", self.server_ns.name]
        run_cmd([*ip_srv, "link", "add", f"vc{serial}", "type", "veth", "peer", "name", "eth0",
                 "netns", name])
        run_cmd([*ip_srv, "link", "set", f"vc{serial}", "master", "br0", "up"])
        ip = ["ip", "-n", name]
        run_cmd([*ip, "addr", "add", f"{addr}/24", "dev", "eth0"])
        run_cmd([*ip, "addr", "add", f"{addr6}/64", "dev", "eth0", "nodad"])
        run_cmd([*ip, "link", "set", "eth0", "up"])
        # a reused address slot: forget the old namespace's MAC on the server side
        for a in (addr, addr6):
            run_cmd([*ip_srv, "neigh", "flush", "to", a], check=False)
        ns = NetNS(name, addr, addr6, servers, list(search), ndots, text)
        self.namespaces.append(ns)
        return ns

    def remove_ns(self, ns: NetNS) -> None:
        """Delete a client namespace now (its processes are killed), freeing its address."""
        self._require_started()
        if ns is self.server_ns or ns.name not in self._slots:
            raise LabError(f"{ns.name} is not a client namespace of this lab")
        self._stop([p for p in self._procs if p.ns_name == ns.name])
        errors = registry.delete_netns(ns.name)
        assert self.server_ns is not None
        for a in (ns.addr, ns.addr6):
            if a:
                run_cmd(["ip", "-n", self.server_ns.name, "neigh", "flush", "to", a], check=False)
        etc = Path("/etc/netns") / ns.name
        shutil.rmtree(etc, ignore_errors=True)
        if errors or etc.exists():
            raise LabError(f"could not remove {ns.name}: {'; '.join(errors)}")
        del self._slots[ns.name]
        self.namespaces.remove(ns)
        self._res.netns.remove(ns.name)
        self._res.etc_netns.remove(str(etc))
        self._res.save()

    # ----------------------------------------------------------------- pods
    @property
    def pods_root(self) -> Path:
        self._require_started()
        assert self._pods_root is not None
        return self._pods_root.root

    @property
    def pods_json(self) -> Path:
        self._require_started()
        assert self._pods_root is not None
        return self._pods_root.pods_json

    def fake_pod(self, namespace: str = "default", name: str | None = None, *,
                 container: str = "app", style: str = "cgroupfs", qos: str = "burstable",
                 uid: str | None = None, container_id: str | None = None) -> FakePod:
        """A kubelet-shaped cgroup v2 directory for one container of a pod, plus its node
        metadata (var/log/pods, var/log/containers, pods.json) under pods_root."""
        self._require_started()
        uid = uid or new_uid()
        name = name or f"pod-{uid[:8]}"
        container_id = container_id or new_container_id()
        chain = kubelet_cgroup_dirs(uid, container_id, qos, style)
        mount = cgroup2_mount()
        shared = [mount.joinpath(*chain[:i]) for i in range(1, len(chain))]
        pod_dir = shared.pop()  # the pod's own directory belongs to this lab
        cdir = mount.joinpath(*chain)
        new = [str(d) for d in shared if str(d) not in self._res.cgroup_parents]
        self._res.cgroup_parents += new
        if str(pod_dir) not in self._res.cgroups:
            self._res.cgroups.append(str(pod_dir))
        self._res.save()
        for attempt in range(20):  # another lab may rmdir a shared parent meanwhile
            try:
                cdir.mkdir(parents=True, exist_ok=True)
                break
            except FileNotFoundError:
                if attempt == 19:
                    raise
                time.sleep(0.05)
        pod = FakePod(uid=uid, namespace=namespace, name=name, container=container,
                      container_id=container_id, qos=qos, style=style,
                      cgroup_path="/" + str(cdir.relative_to(mount)),
                      pod_cgroup_path="/" + str(pod_dir.relative_to(mount)),
                      cgroup_dir=cdir, cgroup_id=os.stat(cdir).st_ino)
        assert self._pods_root is not None
        self._pods_root.add(pod)
        self.pods.append(pod)
        return pod

    def fake_container(self, pod: FakePod, container: str,
                       container_id: str | None = None) -> FakePod:
        """Another container of the same pod (same uid, sibling cgroup)."""
        return self.fake_pod(pod.namespace, pod.name, container=container, style=pod.style,
                             qos=pod.qos, uid=pod.uid, container_id=container_id)

    # ----------------------------------------------------------------- processes
    def _argv(self, ns: NetNS, argv: Sequence[str], pod: FakePod | None) -> list[str]:
        base = ["ip", "netns", "exec", ns.name, *[str(a) for a in argv]]
        if pod is None:
            return base
        # the shell joins the pod's cgroup, then execs: the client is in the pod from its
        # first instruction, under the same pid
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(pod.procs_file), *base]

    def spawn(self, ns: NetNS, argv: Sequence[str], *, pod: FakePod | None = None,
              stdout: Any = None, stderr: Any = None,
              env: Mapping[str, str] | None = None, text: bool = False) -> LabProcess:
        """Start a background process in ns (and pod); the lab kills it on close().
        By default stdout and stderr go to a file (proc.output_path, under lab.tmp): a pipe
        nobody reads would block a chatty process once 64 KiB are buffered."""
        self._require_started()
        full = self._argv(ns, argv, pod)
        out_path = self.tmp / f"spawn-{next(_counter)}-{Path(str(argv[0])).name}.out"
        out_file = None
        if stdout is None or stderr is None:
            out_file = open(out_path, "wb")  # noqa: SIM115 - closed once the child has it
        try:
            proc = LabProcess(full, stdout=out_file if stdout is None else stdout,
                              stderr=out_file if stderr is None else stderr,
                              stdin=subprocess.DEVNULL,
                              env=dict(env) if env is not None else None, text=text,
                              start_new_session=True)
        finally:
            if out_file is not None:
                out_file.close()
        proc.output_path = out_path if out_file is not None else None
        proc.ns_name = ns.name
        self._procs.append(proc)
        self._res.pids.append([proc.pid, proc_start_time(proc.pid) or 0])
        self._res.save()
        return proc

    def run(self, ns: NetNS, argv: Sequence[str], *, pod: FakePod | None = None,
            timeout: float = 10.0, check: bool = False, input: str | None = None,
            env: Mapping[str, str] | None = None) -> LabResult:
        """Run argv inside ns (and pod), wait at most timeout seconds (then kill it and raise
        subprocess.TimeoutExpired). Returns a LabResult (CompletedProcess + pid)."""
        self._require_started()
        full = self._argv(ns, argv, pod)
        t0 = time.monotonic()
        proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                env=dict(env) if env is not None else None, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(input=input, timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(full, timeout, out, err) from None
        res = LabResult(list(argv), proc.returncode, out, err, pid=proc.pid, ns=ns, pod=pod,
                        seconds=time.monotonic() - t0)
        if check and res.returncode != 0:
            raise LabError(f"{' '.join(map(str, argv))} in {ns.name} exited {res.returncode}: "
                           f"{err.strip()}")
        return res

    # ----------------------------------------------------------------- clients
    @property
    def musl_client(self) -> Path:
        return _clients.musl_client()

    @property
    def go_client(self) -> Path:
        return _clients.go_client()

    def getent(self, ns: NetNS, name: str, *, pod: FakePod | None = None,
               timeout: float = 15.0) -> LabResult:
        return self.run(ns, ["getent", "ahosts", name], pod=pod, timeout=timeout)

    def resolve_musl(self, ns: NetNS, names: Iterable[str], *, pod: FakePod | None = None,
                     rounds: int = 1, interval_ms: int = 0, connect: int | None = None,
                     timeout: float = 30.0) -> LabResult:
        argv = [str(self.musl_client), "-n", str(rounds), "-i", str(interval_ms)]
        if connect is not None:
            argv += ["--connect", str(connect)]
        return self.run(ns, [*argv, *names], pod=pod, timeout=timeout)

    def resolve_go(self, ns: NetNS, names: Iterable[str], *, pod: FakePod | None = None,
                   rounds: int = 1, interval_ms: int = 0, connect: int | None = None,
                   timeout: float = 30.0) -> LabResult:
        argv = [str(self.go_client), "-n", str(rounds), "-interval", f"{interval_ms}ms"]
        if connect is not None:
            argv += ["-connect", str(connect)]
        return self.run(ns, [*argv, *names], pod=pod, timeout=timeout)

    def dig(self, ns: NetNS, name: str, qtype: str = "A", *, server: str | None = None,
            tcp: bool = False, args: Sequence[str] = (), pod: FakePod | None = None,
            timeout: float = 10.0) -> LabResult:
        """dig @server (default: the lab's first dnsmasq) with short bounded retries."""
        argv = ["dig", f"@{server or self.server_addr}", "+time=2", "+tries=1", *args]
        if tcp:
            argv.append("+tcp")
        return self.run(ns, [*argv, name, qtype], pod=pod, timeout=timeout)

    def tcp_listener(self, port: int = 8080, addrs: Sequence[str] | None = None,
                     max_seconds: float = 600.0, sink: bool = False) -> LabProcess:
        """A TCP listener in the server namespace (default: every service address of the
        zone) so that --connect / -connect succeed. sink=True: read each connection to EOF
        and reply "got N" (see push()). Killed on close()."""
        assert self.server_ns is not None
        argv = [sys.executable, str(LISTENER), "--port", str(port),
                "--max-seconds", str(max_seconds)]
        if sink:
            argv.append("--sink")
        for a in addrs or ["0.0.0.0", "::"]:
            argv += ["--addr", a]
        proc = self.spawn(self.server_ns, argv, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.wait(timeout=5)
            raise LabError(f"TCP listener on port {port} did not start: {line!r} "
                           f"{proc.output()}")
        return proc

    def push(self, ns: NetNS, host: str, port: int, size: int, *, pod: FakePod | None = None,
             timeout: float = 30.0) -> int:
        """Send size bytes over TCP from ns to a sink listener; returns the bytes it got."""
        r = self.run(ns, [sys.executable, str(PUSH), host, str(port), str(size),
                          "--timeout", str(timeout)], pod=pod, timeout=timeout + 5)
        m = re.fullmatch(r"got (\d+)", r.stdout.strip())
        if r.returncode != 0 or not m:
            raise LabError(f"push to {host}:{port} failed: {r.stdout} {r.stderr}")
        return int(m.group(1))

    @contextlib.contextmanager
    def pcap(self, path: Path | str | None = None, *, ns: NetNS | None = None,
             iface: str = "br0", bpf_filter: str = "port 53",
             max_seconds: float = 300.0) -> Iterator[Path]:
        """Record the lab's wire with tcpdump while the block runs (default: the server
        namespace's bridge, which sees every client's DNS traffic). Yields the pcap path."""
        self._require_started()
        if shutil.which("tcpdump") is None:
            raise LabError("tcpdump is not installed")
        ns = ns or self.server_ns
        assert ns is not None
        out = Path(path) if path is not None else self.tmp / f"lab-{next(_counter)}.pcap"
        proc = self.spawn(ns, ["timeout", str(max_seconds), "tcpdump", "-Z", "root",
                               "--immediate-mode", "-U", "-i", iface, "-n", "-s", "0",
                               "-w", str(out), bpf_filter])
        deadline = time.monotonic() + 10
        while "listening on" not in proc.output():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"tcpdump did not start: {proc.output()}")
            time.sleep(0.05)
        try:
            yield out
        finally:
            time.sleep(0.1)  # let the last packets reach the file
            self._stop([proc])

    # ----------------------------------------------------------------- DNS tunnel
    def iodine_tunnel(self, domain: str = "tun.lab.test", *, ns: NetNS | None = None,
                      pod: FakePod | None = None, size: int = 4096,
                      timeout: float = 30.0) -> IodineResult:
        """A real DNS tunnel through the lab: iodined in the server namespace (on
        10.213.0.4:53, tunnel 10.214.0.1), iodine in a client namespace (in pod, if given) with
        raw UDP mode off, so every byte travels as DNS queries and answers. Pushes size bytes
        over TCP through the tunnel, then stops both ends. Bounded by timeout seconds."""
        self._require_started()
        assert self.server_ns is not None
        for tool, package in (("iodine", "iodine"), ("iodined", "iodine"),
                              ("ifconfig", "net-tools")):  # iodine configures dns0 with it
            if shutil.which(tool, path="/sbin:/bin:/usr/sbin:/usr/bin") is None:
                raise LabError(f"{tool} is not installed (apt-get install {package})")
        if not Path("/dev/net/tun").exists():
            raise LabError("/dev/net/tun is missing")
        t0 = time.monotonic()
        deadline = t0 + timeout
        ns = ns or self.client_ns(timeout=1, attempts=1)
        password = "dnstrail-lab"
        server_ip = IODINE_NET.split("/")[0]
        port = 8999
        served = self.spawn(self.server_ns, ["iodined", "-f", "-c", "-P", password,
                                             "-l", IODINE_ADDR, "-p", "53", "-d", "dns0",
                                             IODINE_NET, domain])
        self._wait_link(self.server_ns, "dns0", server_ip, deadline, served)
        sink = self.tcp_listener(port, addrs=[server_ip], sink=True,
                                 max_seconds=max(1.0, deadline - time.monotonic()))
        # -m: skip the fragment-size probe (its failed sizes cost a timeout each)
        client = self.spawn(ns, ["iodine", "-f", "-r", "-m", "1000", "-P", password,
                                 "-d", "dns0", IODINE_ADDR, domain], pod=pod)
        try:
            client_ip = self._wait_link(ns, "dns0", "10.214.0.", deadline, client)
            got = self.push(ns, server_ip, port, size, pod=pod,
                            timeout=max(1.0, deadline - time.monotonic()))
        finally:
            for p in (client, served, sink):
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(timeout=3)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait(timeout=3)
        return IodineResult(domain=domain, ns=ns, pod=pod, client_ip=client_ip,
                            server_ip=server_ip, bytes_sent=size, bytes_received=got,
                            seconds=time.monotonic() - t0, client_pid=client.pid,
                            client_output=client.output(), server_output=served.output())

    def _wait_link(self, ns: NetNS, dev: str, addr_prefix: str, deadline: float,
                   proc: LabProcess) -> str:
        """Wait until dev in ns has an IPv4 address starting with addr_prefix; return it."""
        while time.monotonic() < deadline:
            out = run_cmd(["ip", "-n", ns.name, "-4", "-o", "addr", "show", "dev", dev],
                          check=False)
            m = re.search(r"inet (\S+)/", out)
            if m and m.group(1).startswith(addr_prefix):
                return m.group(1)
            if proc.poll() is not None:
                raise LabError(f"{proc.args!r} exited ({proc.returncode}): {proc.output()}")
            time.sleep(0.1)
        raise LabError(f"{dev} in {ns.name} got no address in time: {proc.output()}")

    # ----------------------------------------------------------------- unbound, dnsperf
    def unbound(self, ns: NetNS | None = None, addr: str | None = None,
                threads: int = 1) -> Server:
        """Start unbound with the lab zone as local data (no forwarding, '.' static).
        Default: in the server namespace on 10.213.0.3; with ns=<client ns> and
        addr='127.0.0.1' it serves that namespace's loopback."""
        self._require_started()
        if shutil.which("unbound") is None:
            raise LabError("unbound is not installed")
        ns = ns or self.server_ns
        assert ns is not None
        addr = addr or UNBOUND_ADDR
        n = sum(1 for s in self.servers if s.kind == "unbound")
        workdir = self.tmp / f"unbound-{n}"
        workdir.mkdir()
        conf = workdir / "unbound.conf"
        text = unbound_config(self.zone, interface=addr, ttl=self.ttl, workdir=str(workdir),
                              threads=threads)
        text += f"    local-data: 'whoami.lab.test. {self.ttl} IN TXT \"unbound\"'\n"
        conf.write_text(text)
        run_cmd(["unbound-checkconf", str(conf)])
        proc = self.spawn(ns, ["unbound", "-d", "-c", str(conf)])
        server = Server("unbound", addr, ns, proc, conf, None)
        self.servers.append(server)
        self._wait_dns(ns, addr)
        return server

    def dnsperf(self, ns: NetNS, server: str, queries: Sequence[tuple[str, str]] | None = None,
                *, duration: float = 5.0, clients: int = 1, threads: int = 1,
                max_qps: int | None = None, max_outstanding: int | None = None,
                pod: FakePod | None = None, extra: Sequence[str] = ()) -> DnsperfResult:
        """Run dnsperf inside ns against a lab server for `duration` seconds (bounded)."""
        if shutil.which("dnsperf") is None:
            raise LabError("dnsperf is not installed")
        if not server.startswith(SUBNET) and not server.startswith("127.") and \
                not server.startswith(SUBNET6):
            raise LabError(f"dnsperf only runs against lab servers, not {server}")
        queries = queries or [("www.lab.test", "A")]
        data = self.tmp / f"dnsperf-{time.monotonic_ns()}.txt"
        data.write_text("".join(f"{n} {t}\n" for n, t in queries))
        argv = ["dnsperf", "-s", server, "-d", str(data), "-l", str(duration),
                "-c", str(clients), "-T", str(threads), "-t", "2"]
        if max_qps:
            argv += ["-Q", str(max_qps)]
        if max_outstanding:
            argv += ["-q", str(max_outstanding)]
        argv += list(extra)
        r = self.run(ns, argv, pod=pod, timeout=duration + 30)
        if r.returncode != 0:
            raise LabError(f"dnsperf failed ({r.returncode}): {r.stderr.strip()} {r.stdout}")

        def grab(label: str) -> float:
            m = re.search(rf"{label}:\s+([0-9.]+)", r.stdout)
            if not m:
                raise LabError(f"dnsperf output has no '{label}': {r.stdout}")
            return float(m.group(1))

        return DnsperfResult(qps=grab("Queries per second"), sent=int(grab("Queries sent")),
                             completed=int(grab("Queries completed")),
                             lost=int(grab("Queries lost")), output=r.stdout, argv=argv)

    # ----------------------------------------------------------------- misc
    def server_log(self, which: int = 0) -> str:
        """The query log of dnsmasq #which (0: server_addr, 1: server2_addr)."""
        log = [s for s in self.servers if s.kind == "dnsmasq"][which].log
        return log.read_text() if log and log.exists() else ""

    def resources(self) -> registry.Resources:
        """What this lab created (namespaces, cgroups, dirs, pids): for cleanliness checks."""
        return self._res

    def _require_started(self) -> None:
        if not self._started or self._closed:
            raise LabError("the lab is not running: use `with Lab() as lab:` or lab.start()")


@atexit.register
def _close_all() -> None:
    for lab in list(_open_labs):
        lab.close(raise_errors=False)
