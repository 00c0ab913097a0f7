"""Fleets: a real Dask scheduler and two worker processes, and a moto S3 server, on loopback.

The bundled sample capture is uploaded to a bucket; a second node (the sample under another
host name) stays local, so its files travel to the workers with the task. The fleet report's
findings must equal the local run's on the same captures.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

pytest.importorskip("distributed")
s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto")

from analyze.capture import load
from analyze.fleet import NoWorkers, SchedulerUnreachable
from dnstrail.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "incident"
BIN = Path(sys.executable).parent
FLEET_MANIFEST = ROOT / "deploy" / "k8s" / "fleet.yaml"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} in {timeout} s")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    for p in reversed(procs):
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, proc, "moto server")
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop([proc])
        log.close()


@pytest.fixture(scope="module")
def scheduler(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `dask scheduler` and two `dask worker` processes (one thread each), loopback only."""
    logs = tmp_path_factory.mktemp("dask")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, **S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint}
    procs: list[subprocess.Popen[bytes]] = []
    files = []
    try:
        f = open(logs / "scheduler.log", "wb")  # noqa: SIM115
        files.append(f)
        procs.append(subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1",
                                       "--port", str(port), "--no-dashboard"], env=env,
                                      stdout=f, stderr=subprocess.STDOUT))
        _wait_port(port, procs[0], "dask scheduler")
        for i in range(2):
            f = open(logs / f"worker-{i}.log", "wb")  # noqa: SIM115
            files.append(f)
            procs.append(subprocess.Popen(
                [str(BIN / "dask"), "worker", address, "--host", "127.0.0.1", "--nthreads",
                 "1", "--no-dashboard", "--name", f"w{i}", "--local-directory",
                 str(logs / f"w{i}")], env=env, stdout=f, stderr=subprocess.STDOUT))
        from distributed import Client

        with Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        _stop(procs)
        for f in files:
            f.close()


@pytest.fixture(scope="module")
def captures(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The sample on S3 (node vm) and, local, the same evidence as node "node-b"."""
    node_b = tmp_path_factory.mktemp("node-b") / "node-b"
    shutil.copytree(SAMPLE, node_b)
    manifest = json.loads((node_b / "manifest.json").read_text())
    manifest["host"] = "node-b"
    (node_b / "manifest.json").write_text(json.dumps(manifest))
    fs = s3fs.S3FileSystem(key="testing", secret="testing",
                           client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("dnstrail")
    for f in SAMPLE.iterdir():
        fs.put_file(str(f), f"dnstrail/incident/{f.name}")
    return {"s3": "s3://dnstrail/incident", "node_b": str(node_b), "fs": fs}


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(k, v)


def _summary(findings: list[Any]) -> list[tuple[Any, ...]]:
    return sorted((f.kind, f.severity, f.workload, f.domain, f.registered_domain,
                   json.dumps(f.metrics, sort_keys=True, default=str)) for f in findings)


@pytest.mark.timeout(900)
def test_fleet_findings_equal_the_local_run(scheduler: str, captures: dict[str, Any],
                                            s3_env: None, tmp_path: Path) -> None:
    local = load([str(SAMPLE), captures["node_b"]], work_dir=tmp_path / "local")
    fleet = load([captures["s3"], captures["node_b"]], scheduler=scheduler,
                 work_dir=tmp_path / "fleet")
    want, got = local.findings(), fleet.findings()
    assert want, "the sample has findings"
    assert _summary(got) == _summary(want)
    assert len(fleet.messages) == len(local.messages) > 0
    assert sorted(fleet.messages["node"].unique()) == ["node-b", "vm"]
    assert all(i.verified for i in fleet._ctx.ingested)


@pytest.mark.timeout(900)
def test_report_cli_with_scheduler_and_s3(scheduler: str, captures: dict[str, Any],
                                          s3_env: None, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["report", "--format", "json", "--work-dir"]
    local = runner.invoke(cli, [*args, str(tmp_path / "a"), str(SAMPLE)])
    fleet = runner.invoke(cli, [*args, str(tmp_path / "b"), "--scheduler", scheduler,
                                captures["s3"]])
    assert local.exit_code == 0, local.output
    assert fleet.exit_code == 0, fleet.output

    def kinds(out: str) -> list[tuple[Any, ...]]:
        data = json.loads(out)
        return sorted((f["kind"], f.get("domain"), json.dumps(f.get("metrics"), sort_keys=True))
                      for f in data["findings"])
    assert kinds(fleet.stdout) == kinds(local.stdout)


def test_s3_capture_without_scheduler_is_verified(captures: dict[str, Any], s3_env: None,
                                                  tmp_path: Path) -> None:
    fs = captures["fs"]
    for f in SAMPLE.iterdir():
        fs.put_file(str(f), f"dnstrail/damaged/{f.name}")
    name = next(f.name for f in SAMPLE.iterdir() if f.name.startswith("messages-"))
    blob = bytearray((SAMPLE / name).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    fs.pipe_file(f"dnstrail/damaged/{name}", bytes(blob))
    result = CliRunner().invoke(cli, ["report", "--work-dir", str(tmp_path),
                                      "s3://dnstrail/damaged"])
    assert result.exit_code == 1
    assert "sha256 differs from the manifest" in result.output
    assert "s3://dnstrail/damaged" in result.output
    cap = load("s3://dnstrail/incident", work_dir=tmp_path)
    assert len(cap.messages) > 0


def test_unreachable_scheduler_is_a_one_line_error(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    result = CliRunner().invoke(cli, ["report", "--work-dir", str(tmp_path), "--scheduler",
                                      address, str(SAMPLE)])
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and address in lines[0], \
        result.output
    with pytest.raises(SchedulerUnreachable):
        load(str(SAMPLE), scheduler=address, work_dir=tmp_path)


@pytest.mark.timeout(300)
def test_a_scheduler_without_workers_is_named(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import analyze.fleet

    monkeypatch.setattr(analyze.fleet, "WORKER_TIMEOUT_S", 5.0)
    port = _free_port()
    proc = subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                             str(port), "--no-dashboard"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc, "dask scheduler")
        with pytest.raises(NoWorkers, match=f"127.0.0.1:{port}"):
            load(str(SAMPLE), scheduler=f"tcp://127.0.0.1:{port}", work_dir=tmp_path)
    finally:
        _stop([proc])


@pytest.mark.parametrize("version", ("1.27", "1.33"))
def test_fleet_manifests_validate(version: str) -> None:
    import kubernetes_validate as kv

    docs = [d for d in yaml.safe_load_all(FLEET_MANIFEST.read_text()) if d]
    assert {d["kind"] for d in docs} == {"Deployment", "Service"}
    for doc in docs:
        kv.validate(doc, version, strict=True)
    (svc,) = [d for d in docs if d["kind"] == "Service"]
    assert 8786 in {p["port"] for p in svc["spec"]["ports"]}


@pytest.mark.timeout(300)
def test_a_worker_that_dies_is_named(tmp_path: Path) -> None:
    """A worker process that exits while it runs an ingest task (the scheduler gives up at
    the first death): a one-line error naming that worker, exit status 1."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                               str(port), "--no-dashboard"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        _wait_port(port, procs[0], "dask scheduler")
        procs.append(subprocess.Popen(
            [str(BIN / "dask"), "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
             "--no-dashboard", "--no-nanny", "--local-directory", str(tmp_path / "w"),
             "--preload", str(ROOT / "tests" / "data" / "dask_die_on_ingest.py")], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        result = CliRunner().invoke(cli, ["report", "--work-dir", str(tmp_path / "work"),
                                          "--scheduler", address, str(SAMPLE)])
        assert result.exit_code == 1, result.output
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1, result.output
        assert lines[0].startswith("Error: tcp://127.0.0.1:"), lines[0]
        assert "worker died while ingesting" in lines[0] and str(SAMPLE) in lines[0]
    finally:
        _stop(procs)


@pytest.mark.corpus
@pytest.mark.timeout(900)
def test_fleet_pcaps_on_s3_and_local_equal_the_local_run(scheduler: str,
                                                         captures: dict[str, Any],
                                                         s3_env: None, tmp_path: Path) -> None:
    """Real pcaps (a tunnel and TCP DNS): one from the bucket, one sent from here, plus the
    sample capture; each imported on a worker. Same findings, same messages."""
    from tests.corpus import corpus

    iodine, tcp = corpus("tunnels/iodine.pcap"), corpus("benign/dns_tcp.pcapng")
    captures["fs"].put_file(str(iodine), "dnstrail/pcaps/iodine.pcap")
    local = load([str(iodine), str(tcp), str(SAMPLE)], work_dir=tmp_path / "local")
    fleet = load(["s3://dnstrail/pcaps/iodine.pcap", str(tcp), captures["s3"]],
                 scheduler=scheduler, work_dir=tmp_path / "fleet")
    assert _summary(fleet.findings()) == _summary(local.findings())
    assert any(f.kind == "tunneling" for f in fleet.findings())
    assert len(fleet.messages) == len(local.messages)
    assert len(fleet.transactions) == len(local.transactions)
