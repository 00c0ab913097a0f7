"""`dnstrail record` for real: the BPF probe loaded, real resolvers, signals and kill -9.

Every DNS exchange here stays inside network namespaces the test creates: a private loopback
(`unshare -n`) for the signal tests, the lab (tests/lab) for the resolver tests.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dnslib import DNSRecord

from capture.recorder import RecordOptions, RecordSummary, record
from tests.lab.require import require_root_bcc
from tests.test_writer import check_capture, event_table

pytestmark = pytest.mark.live

DNSTRAIL = Path(sys.executable).parent / "dnstrail"
SENDER_COMM = "dtl-sender"

# A bounded UDP DNS exchange on 127.0.0.1:53 inside a private network namespace: the client
# sends a query (sendto), the server thread-free loop reads it, answers, the client reads.
_SENDER = r"""
import ctypes, os, socket, sys, time
from dnslib import DNSRecord, RR, QTYPE, A
ctypes.CDLL(None).prctl(15, b"@COMM@", 0, 0, 0)  # PR_SET_NAME: a comm the test can find
count, seconds, label, tag = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
srv.bind(("127.0.0.1", 53))
cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
cli.settimeout(1.0)
end = time.monotonic() + seconds
sent = 0
for i in range(count):
    if time.monotonic() > end:
        break
    filler = os.urandom(label // 2 + 1).hex()[:min(label, 63)] if label else "x"
    name = f"q{i}.{filler}.{tag}.lab.test"
    q = DNSRecord.question(name, "A")
    cli.sendto(q.pack(), ("127.0.0.1", 53))
    data, addr = srv.recvfrom(4096)
    r = DNSRecord.parse(data).reply()
    r.add_answer(RR(name, QTYPE.A, rdata=A("10.213.0.80"), ttl=5))
    srv.sendto(r.pack(), addr)
    cli.recvfrom(4096)
    sent += 1
print(sent, flush=True)
""".replace("@COMM@", SENDER_COMM)


def have_probe() -> bool:
    return importlib.util.find_spec("capture.probe") is not None


@pytest.fixture(autouse=True)
def _live() -> None:
    require_root_bcc()
    if not have_probe():
        pytest.skip("capture/probe.py (the probe engineer's) has not landed yet")


@contextlib.contextmanager
def dns_traffic(count: int, seconds: float, label: int = 8, tag: str = "t",
                stop: Callable[[], bool] | None = None) -> Iterator[subprocess.Popen[str]]:
    """Run the sender in a fresh network namespace (loopback only); yields the process.

    On exit waits for it to finish (at most `seconds` + 10 s) unless `stop()` says to end it.
    """
    proc = subprocess.Popen(
        ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable,
         "-c", _SENDER, str(count), str(seconds), str(label), tag],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        yield proc
        deadline = time.monotonic() + seconds + 10
        while proc.poll() is None and time.monotonic() < deadline:
            if stop is not None and stop():
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


class _Stderr(io.StringIO):
    """Captures record()'s stderr and tells when the start line has been written."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()

    def write(self, s: str) -> int:
        if "Tracing DNS" in s:
            self.started.set()
        return super().write(s)


class Recording:
    """record() in a thread; stop() ends it as SIGINT would and returns the summary."""

    def __init__(self, options: RecordOptions) -> None:
        options.handle_signals = False
        self.options = options
        self.err = _Stderr()
        self.summary: RecordSummary | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.summary = record(self.options, err=self.err)
        except BaseException as exc:  # noqa: BLE001  (handed to the test thread)
            self.error = exc
            self.err.started.set()

    def __enter__(self) -> Self:
        self.thread.start()
        if not self.err.started.wait(120):
            raise AssertionError("recorder did not start in 120 s: " + self.err.getvalue())
        if self.error:
            raise self.error
        return self

    def stop(self) -> RecordSummary:
        time.sleep(0.3)  # let the last events reach the ring buffer
        self.options.stop_event.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "recorder did not stop within 60 s"
        if self.error:
            raise self.error
        assert self.summary is not None
        return self.summary

    def __exit__(self, *exc: object) -> None:
        self.options.stop_event.set()
        self.thread.join(60)


def _start_cli(out: Path, *extra: str) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen([str(DNSTRAIL), "record", "-o", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def reader() -> None:
        assert proc.stderr is not None
        # one line at a time: `lines` must grow while the test watches it
        for line in proc.stderr:
            lines.append(line)  # noqa: PERF402

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.monotonic() + 120
    while not any("Tracing DNS" in ln for ln in lines):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"recorder did not start (rc={proc.poll()}): {''.join(lines)}")
        time.sleep(0.05)
    return proc, lines


def _qnames(table: pa.Table, tgid: int, direction: str = "send") -> list[str]:
    rows = table.filter(pa.compute.and_(pa.compute.equal(table["tgid"], tgid),
                                        pa.compute.equal(table["direction"], direction)))
    names = []
    for p in rows.column("payload").to_pylist():
        names.append(str(DNSRecord.parse(p).q.qname).rstrip("."))
    return names


def test_sigterm_finishes_the_capture(tmp_path: Path) -> None:
    sig = signal.SIGTERM
    out = tmp_path / "cap"
    proc, lines = _start_cli(out, "--rotate", "1s")
    try:
        with dns_traffic(count=200, seconds=20, tag=sig.name.lower()) as sender:
            pass
        sent = int(sender.stdout.read().strip()) if sender.stdout else 0
        assert sent == 200, sender.stderr.read() if sender.stderr else ""
        time.sleep(0.5)
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.1)
    text = "".join(lines)
    assert rc == 0, text
    assert "Recorded" in text and "messages" in text
    m = check_capture(out)
    assert m["status"] == "complete" and m["stopped_at"]
    msgs = event_table(out, "messages")
    mine = msgs.filter(pa.compute.equal(msgs["tgid"], sender.pid))
    assert set(mine.column("comm").to_pylist()) == {SENDER_COMM}
    lost = sum(m["lost"].values())
    expected = {f"q{i}" for i in range(200)}
    got = {n.split(".", 1)[0] for n in _qnames(msgs, sender.pid, "send")
           if n.endswith(f".{sig.name.lower()}.lab.test")}
    # client query + server answer are both sends of this process
    if lost == 0:
        assert got == expected
        assert mine.num_rows == 4 * 200  # send+recv on each side
    else:
        assert len(got) >= 200 - lost
    netns = set(mine.column("netns").to_pylist())
    assert len(netns) == 1 and netns != {os.stat("/proc/self/ns/net").st_ino}
    procs = pq.read_table(out / "processes.parquet")
    assert procs.num_rows > 0 and "scan" in set(procs.column("source").to_pylist())


def test_kill_9_mid_capture_keeps_finished_files(tmp_path: Path) -> None:
    out = tmp_path / "cap"
    proc, lines = _start_cli(out, "--rotate", "1s", "--max-size", "64KB")
    try:
        with dns_traffic(count=200_000, seconds=30, label=40, tag="kill",
                         stop=lambda: proc.poll() is not None) as sender:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    files = json.loads((out / "manifest.json").read_text())["files"]
                except (OSError, ValueError):
                    files = []
                # finished message files, or spool segments (saturated: not converted yet)
                if sum(1 for f in files if f["kind"] in ("messages", "spool")) >= 3:
                    break
                time.sleep(0.1)
            else:
                pytest.fail("recorder did not finish 3 message files in 30 s: " + "".join(lines))
            proc.kill()
            proc.wait(timeout=10)
            sender.kill()
    finally:
        if proc.poll() is None:
            proc.kill()
    m = check_capture(out, crashed=True)
    assert m["status"] == "running" and m["stopped_at"] is None
    rows = 0
    for p in out.glob("*.parquet"):
        if not p.name.startswith(".tmp-"):
            t = pq.read_table(p)  # every finished file reads, listed or not yet
            rows += t.num_rows if p.name.startswith("messages-") else 0
    from capture.spool import count_records

    rows += sum(count_records(p) for p in out.glob("spool-*.spool"))
    assert rows > 0
    # the analyzer reads all of it: finished files and the segment being written
    import analyze

    cap = analyze.load(out, work_dir=tmp_path / "work")
    assert cap.sql("SELECT count(*) AS n FROM messages")["n"][0] == rows


def test_lab_clients_in_fake_pods(lab, lab_clients, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ns = lab.client_ns(timeout=1, attempts=2)
    pod_a = lab.fake_pod("shop", "web-1", container="app", style="cgroupfs")
    pod_b = lab.fake_pod("kube-system", "tools-1", container="debug", style="systemd",
                         qos="besteffort")
    out = tmp_path / "cap"
    opts = RecordOptions(output=out, pods_root=lab.pods_root, pods_json=lab.pods_json,
                         rotate_seconds=2)
    with Recording(opts) as rec:
        r_glibc = lab.getent(ns, "www.lab.test", pod=pod_a)
        r_musl = lab.resolve_musl(ns, ["api.lab.test"], pod=pod_a)
        r_go = lab.resolve_go(ns, ["web.shop.svc.cluster.local"], pod=pod_b)
        r_dig = lab.dig(ns, "mail.lab.test", "MX", pod=pod_b)
        # a pod that appears during the capture: its cgroup id is resolved on first sight
        pod_c = lab.fake_pod("shop", "late-1", container="app", style="systemd")
        r_late = lab.resolve_musl(ns, ["www.lab.test"], pod=pod_c)
        summary = rec.stop()
    for r in (r_glibc, r_musl, r_go, r_dig, r_late):
        assert r.returncode == 0, (r.args, r.stderr)
    assert summary.status == "complete"
    m = check_capture(out)
    msgs = event_table(out, "messages")
    cg = pq.read_table(out / "cgroups.parquet")
    cg_path = dict(zip(cg.column("cgroup_id").to_pylist(), cg.column("path").to_pylist(),
                       strict=True))
    cases = [(r_glibc, pod_a, "getent", "www.lab.test"),
             (r_musl, pod_a, "resolve-musl", "api.lab.test"),
             (r_go, pod_b, "goresolve", "web.shop.svc.cluster.local"),
             (r_dig, pod_b, None, "mail.lab.test"),
             (r_late, pod_c, "resolve-musl", "www.lab.test")]
    for res, pod, comm, name in cases:
        mine = msgs.filter(pa.compute.equal(msgs["tgid"], res.pid))
        assert mine.num_rows >= 2, f"no messages of {res.args[0]} (pid {res.pid})"
        assert set(mine.column("cgroup_id").to_pylist()) == {pod.cgroup_id}, res.args
        assert cg_path[pod.cgroup_id] == pod.cgroup_path
        assert set(mine.column("netns").to_pylist()) == {ns.inode}
        if comm is not None:
            assert set(mine.column("comm").to_pylist()) == {comm}
        assert name in _qnames(msgs, res.pid, "send"), res.args
        assert "recv" in set(mine.column("direction").to_pylist())
    pods = pq.read_table(out / "pods.parquet").to_pylist()
    for pod in (pod_a, pod_b, pod_c):
        rows = [p for p in pods if p["pod_uid"] == pod.uid]
        assert {p["source"] for p in rows} == {"var-log-pods", "kubectl"}
        assert pod.container_id in {p["container_id"] for p in rows}
        assert {(p["namespace"], p["pod"]) for p in rows} == {(pod.namespace, pod.name)}
    execs = event_table(out, "execs")
    exec_pids = set(execs.column("tgid").to_pylist())
    assert {r_glibc.pid, r_musl.pid, r_go.pid, r_dig.pid} <= exec_pids
    procs = pq.read_table(out / "processes.parquet")
    from_exec = procs.filter(pa.compute.equal(procs["source"], "exec"))
    assert r_musl.pid in set(from_exec.column("tgid").to_pylist())
    assert m["counts"]["messages"] == msgs.num_rows


def test_pod_filter_records_only_that_pod_and_its_new_containers(lab, lab_clients,  # type: ignore[no-untyped-def]
                                                                 tmp_path: Path) -> None:
    ns = lab.client_ns(timeout=1, attempts=2)
    pod_a = lab.fake_pod("shop", "cart-1", container="app")
    pod_b = lab.fake_pod("shop", "other-1", container="app")
    out = tmp_path / "cap"
    opts = RecordOptions(output=out, pods=(f"shop/{pod_a.name}",), pods_root=lab.pods_root,
                         refilter_seconds=0.3)
    with Recording(opts) as rec:
        in_a = lab.resolve_musl(ns, ["www.lab.test"], pod=pod_a)
        in_b = lab.resolve_musl(ns, ["www.lab.test"], pod=pod_b)
        sidecar = lab.fake_container(pod_a, "sidecar")  # a container that starts later
        time.sleep(1.5)  # > refilter_seconds: the recorder picks the new cgroup up
        in_sidecar = lab.resolve_musl(ns, ["api.lab.test"], pod=sidecar)
        summary = rec.stop()
    assert summary.pod_uids == [pod_a.uid]
    msgs = event_table(out, "messages")
    pids = set(msgs.column("tgid").to_pylist())
    assert in_a.pid in pids and in_sidecar.pid in pids
    assert in_b.pid not in pids
    allowed = {pod_a.cgroup_id, sidecar.cgroup_id}
    for kind in ("messages", "connects", "execs"):
        seen = set(event_table(out, kind).column("cgroup_id").to_pylist())
        assert seen <= allowed, f"{kind} from cgroups outside the pod: {seen - allowed}"
    m = json.loads((out / "manifest.json").read_text())
    assert m["filters"]["pods"] == [f"shop/{pod_a.name}"]
    assert m["filters"]["pod_uids"] == [pod_a.uid]


def test_lost_events_are_counted_and_printed(tmp_path: Path) -> None:
    """Stop the recorder (SIGSTOP) while traffic flows: the 1 MB ring fills and the kernel
    side counts what it drops; the summary and the manifest must say so."""
    out = tmp_path / "cap"
    proc, lines = _start_cli(out, "--ringbuf-mb", "1", "--snaplen", "512")
    try:
        proc.send_signal(signal.SIGSTOP)
        with dns_traffic(count=20_000, seconds=20, label=60, tag="lost"):
            pass
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
    time.sleep(0.1)
    text = "".join(lines)
    assert rc == 0, text
    m = check_capture(out)
    lost = {k: v for k, v in m["lost"].items() if v}
    assert lost.get("ringbuf_full", 0) > 0, (m["lost"], text)
    assert "LOST events: " in text
    assert f"ringbuf_full {m['lost']['ringbuf_full']:,}" in text
    # what did arrive is whole: every payload kept parses
    msgs = event_table(out, "messages")
    assert msgs.num_rows > 0
    assert m["counts"]["messages"] == msgs.num_rows


def test_ctrl_c_on_a_terminal_shows_status_and_finishes(tmp_path: Path) -> None:
    """On a terminal: a live status line (\\r, under 80 columns); SIGINT ends it cleanly."""
    import pty

    master, slave = pty.openpty()
    out = tmp_path / "cap"
    proc = subprocess.Popen([str(DNSTRAIL), "record", "-o", str(out)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    buf = bytearray()

    def reader() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the recorder closed its end
                return
            if not chunk:
                return
            buf.extend(chunk)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 120
        while b"Tracing DNS" not in buf:
            assert proc.poll() is None and time.monotonic() < deadline, bytes(buf)
            time.sleep(0.05)
        with dns_traffic(count=100, seconds=20, tag="sigint") as sender:
            pass
        time.sleep(1.2)  # at least two status updates
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, bytes(buf)
        t.join(5)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = buf.decode(errors="replace")
    assert "Tracing DNS on port 53" in text
    status = [s for s in text.split("\r") if " events " in s and "lost" in s]
    assert len(status) >= 2, text
    assert all(len(s.split("\n")[0].rstrip()) < 80 for s in status)
    assert "Recorded" in text and ("Lost events: none" in text or "LOST events:" in text)
    m = check_capture(out)
    assert m["status"] == "complete"
    msgs = event_table(out, "messages")
    names = {n for n in _qnames(msgs, sender.pid) if n.endswith(".sigint.lab.test")}
    assert len(names) == 100 or sum(m["lost"].values()) > 0


def test_append_continues_a_recording(tmp_path: Path) -> None:
    out = tmp_path / "cap"
    senders = []
    for round_ in range(2):
        args = ["--append"] if round_ else []
        proc, lines = _start_cli(out, *args)
        with dns_traffic(count=50, seconds=20, tag=f"r{round_}") as sender:
            pass
        senders.append(sender.pid)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, "".join(lines)
        if round_ == 0:
            first = check_capture(out)
    second = check_capture(out)
    assert {f["name"] for f in first["files"] if f["kind"] == "messages"} < {
        f["name"] for f in second["files"] if f["kind"] == "messages"}
    assert second["counts"]["messages"] > first["counts"]["messages"]
    msgs = event_table(out, "messages")
    assert msgs.num_rows == second["counts"]["messages"]
    assert sorted(msgs.column("seq").to_pylist()) == list(range(msgs.num_rows))
    for round_, pid in enumerate(senders):
        names = _qnames(msgs, pid)
        assert len(names) == 100 and all(n.endswith(f".r{round_}.lab.test") for n in names)
    assert second["started_at"] == first["started_at"]
