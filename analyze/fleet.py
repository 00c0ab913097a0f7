"""Fleets: ingest captures on a Dask distributed cluster, and captures on object storage.

``load(..., scheduler="tcp://HOST:PORT")`` (``dnstrail report --scheduler``) sends one task per
capture (a node's directory, or a pcap) to the cluster. A worker fetches the evidence (an
``s3://bucket/prefix`` URL through fsspec/s3fs, or the bytes the client sent for a local
capture: workers need no shared filesystem), checks every file's SHA-256 against the manifest
and runs the same ``analyze.ingest`` as a local run, in a private work directory. What comes
back is the ingest entry itself (its typed Parquet files and description); the client writes
it into its own work directory under the same key a local ingest would use, so everything
after ingest (matching, lookups, the findings that span nodes) is the local code on the same
tables: the findings equal the local run's.

``s3://`` captures are read the same way without a scheduler (in this process). The endpoint
and credentials come from the standard environment: ``AWS_ENDPOINT_URL`` (an S3-compatible
store such as MinIO or moto), ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, or fsspec's
own configuration (``FSSPEC_S3_ENDPOINT_URL``, ``~/.config/fsspec/``). Workers read their
own environment: give them the same variables.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analyze.cache import DONE, WorkDir
from analyze.errors import AnalyzeError, CaptureNotFound, NotACapture

#: Seconds to wait for the scheduler to answer, and for a first worker to join it.
CONNECT_TIMEOUT_S = 20.0
WORKER_TIMEOUT_S = 60.0
PCAP_SUFFIXES = (".pcap", ".pcapng", ".cap")


class FleetError(AnalyzeError):
    """the captures could not be analyzed on the Dask cluster"""


class SchedulerUnreachable(FleetError):
    """the Dask scheduler cannot be reached: check the --scheduler address and that it runs"""


class NoWorkers(FleetError):
    """the Dask scheduler has no workers: start `dask worker SCHEDULER` processes"""


class WorkerDied(FleetError):
    """a Dask worker died while ingesting a capture: see that worker's log (memory limit?)"""


class RemoteCaptureError(FleetError):
    """a capture on object storage cannot be read: check the URL, AWS_ENDPOINT_URL and the credentials"""


def is_remote(path: str | Path) -> bool:
    """Whether a capture path is a URL (``s3://...``) rather than a local path."""
    return isinstance(path, str) and "://" in path


@dataclass(frozen=True)
class Source:
    """One capture to ingest, as a task receives it: a URL, or the files of a local one."""

    label: str                                   # what the user gave (named in messages)
    url: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    is_pcap: bool = False


@dataclass(frozen=True)
class Result:
    """A task's answer: the ingest entry (key, description, files) and what ingest said."""

    label: str
    key: str
    info: dict[str, Any]
    files: dict[str, bytes]
    manifest: dict[str, Any]
    node: str
    verified: bool
    warnings: tuple[str, ...]
    skipped: tuple[dict[str, str], ...]
    pcap_sha256: str | None = None


def _sources(paths: Sequence[str | Path], *, ship: bool) -> list[Source]:
    """What each path is; with ``ship``, a local capture's files go with its task."""
    out = []
    for raw in paths:
        if is_remote(raw):
            url = str(raw).rstrip("/")
            out.append(Source(label=url, url=url,
                              is_pcap=url.lower().endswith(PCAP_SUFFIXES)))
            continue
        from analyze.capture import check_local

        p = Path(raw)
        check_local([p])
        if p.is_dir():
            files = ({f.name: f.read_bytes() for f in sorted(p.iterdir()) if f.is_file()}
                     if ship else {})
            out.append(Source(label=str(p), files=files, url=None if ship else str(p)))
        else:
            out.append(Source(label=str(p), files={p.name: p.read_bytes()} if ship else {},
                              url=None if ship else str(p), is_pcap=True))
    return out


def _fetch(source: Source, into: Path) -> Path:
    """Put the evidence of ``source`` under ``into``: the capture directory or pcap file."""
    if source.files:
        if source.is_pcap:
            ((name, blob),) = source.files.items()
            (into / name).write_bytes(blob)
            return into / name
        cap = into / "capture"
        cap.mkdir()
        for name, blob in source.files.items():
            (cap / Path(name).name).write_bytes(blob)
        return cap
    assert source.url is not None
    if not is_remote(source.url):  # a local path, read in this process
        return Path(source.url)
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(source.url)
        if source.is_pcap:
            local = into / Path(root).name
            fs.get_file(root, str(local))
            return local
        cap = into / "capture"
        cap.mkdir()
        names = [e for e in fs.ls(root, detail=True) if e.get("type") == "file"]
        if not names:
            raise NotACapture(f"{source.url}: no such capture (no files under it)")
        for entry in names:
            name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
            fs.get_file(entry["name"], str(cap / name))
        return cap
    except AnalyzeError:
        raise
    except FileNotFoundError:
        raise CaptureNotFound(f"{source.url}: no such capture on object storage") from None
    except Exception as exc:  # noqa: BLE001 (botocore/aiohttp errors share no base)
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise RemoteCaptureError(f"{source.url}: cannot read the capture: {reason}") from None


def ingest_task(source: Source, *, verify: bool, dns_ports: tuple[int, ...],
                on_damage: str) -> Result:
    """One task (on a worker, or in this process): fetch, verify and ingest one capture into a
    private work directory, and return the entry."""
    tmp = Path(tempfile.mkdtemp(prefix="dnstrail-fleet-"))
    try:
        local = _fetch(source, tmp)
        try:
            return _ingest_local(source, local, tmp, verify=verify, dns_ports=dns_ports,
                                 on_damage=on_damage)
        except AnalyzeError as exc:  # name what the user gave, not the worker's copy
            raise type(exc)(str(exc).replace(str(local), source.label)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _ingest_local(source: Source, local: Path, tmp: Path, *, verify: bool,
                  dns_ports: tuple[int, ...], on_damage: str) -> Result:
    from analyze.ingest import ingest, sha256_file

    work = WorkDir.at(tmp / "work")
    pcap_sha = None
    if source.is_pcap:
        from analyze.pcap import import_pcap

        pcap_sha = sha256_file(local)
        out = tmp / "imported"
        import_pcap(local, out, ports=tuple(dns_ports))
        local, verify = out, True
    ing = ingest(local, work=work, verify=verify, dns_ports=dns_ports, on_damage=on_damage,
                 workers=1, label=source.label)
    files = {f.name: f.read_bytes() for f in ing.entry.iterdir()
             if f.is_file() and f.name != DONE}
    info = work.lookup("ingest", ing.key) or {}
    here = str(local)

    def named(text: str) -> str:  # the worker's temporary path -> what the user gave
        return text.replace(here, source.label)

    return Result(label=source.label, key=ing.key, info=info, files=files,
                  manifest=ing.manifest, node=ing.node, verified=ing.verified,
                  warnings=tuple(named(w) for w in ing.warnings),
                  skipped=tuple({k: named(v) for k, v in s.items()} for s in ing.skipped),
                  pcap_sha256=pcap_sha)


def _store(result: Result, work: WorkDir) -> Any:
    """Write a task's entry into the client's work directory; the Ingested that reads it."""
    from analyze.ingest import Ingested

    if work.lookup("ingest", result.key) is None:
        tmp = work.building("ingest", result.key)
        try:
            for name, blob in result.files.items():
                (tmp / Path(name).name).write_bytes(blob)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise work.error(exc) from None
        work.publish(tmp, "ingest", result.key, result.info)
    parts = result.info.get("parts") or {}
    return Ingested(evidence=result.label, key=result.key,
                    entry=work.entry("ingest", result.key), manifest=result.manifest,
                    node=result.node, messages=int(result.info.get("messages", 0)),
                    verified=result.verified, warnings=result.warnings,
                    skipped=result.skipped, parts={k: tuple(v) for k, v in parts.items()})


def _reason(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0] or type(exc).__name__


def _run_on(scheduler: str, sources: list[Source], **kw: Any) -> list[Result]:
    try:
        from distributed import Client, KilledWorker
    except ImportError:
        raise FleetError("--scheduler needs Dask distributed: pip install 'dnstrail[fleet]'") \
            from None
    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise SchedulerUnreachable(f"{scheduler}: cannot reach the Dask scheduler: "
                                   f"{_reason(exc)}") from None
    try:
        try:
            client.wait_for_workers(1, timeout=WORKER_TIMEOUT_S)
        except (TimeoutError, OSError):
            raise NoWorkers(f"{scheduler}: the Dask scheduler has no workers after "
                            f"{WORKER_TIMEOUT_S:g} s: start `dask worker {scheduler}`") \
                from None
        run = uuid.uuid4().hex[:8]
        futures = [client.submit(ingest_task, s, key=f"dnstrail-ingest-{run}-{i}", pure=False,
                                 **kw) for i, s in enumerate(sources)]
        results = []
        for source, fut in zip(sources, futures, strict=True):
            try:
                results.append(fut.result())
            except KilledWorker as exc:
                who = getattr(getattr(exc, "last_worker", None), "address", None) or "a worker"
                raise WorkerDied(f"{who}: the Dask worker died while ingesting "
                                 f"{source.label} (see its log)") from None
            except AnalyzeError:
                raise
            except (OSError, TimeoutError) as exc:
                raise SchedulerUnreachable(f"{scheduler}: lost the Dask scheduler while "
                                           f"ingesting {source.label}: {_reason(exc)}") \
                    from None
        return results
    finally:
        try:
            client.close(timeout=10)
        except (OSError, TimeoutError):
            pass  # closing a connection to a scheduler that went away


def ingest_all(paths: Iterable[str | Path], *, scheduler: str | None, work: WorkDir,
               verify: bool, dns_ports: Sequence[int], on_damage: str
               ) -> tuple[list[tuple[Path, Any]], list[str]]:
    """Ingest every capture (on the cluster when ``scheduler`` is given) into ``work``:
    ``(path, Ingested)`` pairs for ``analyze.capture._combine`` and notes on inputs read once."""
    given = list(paths)
    if not given:
        raise CaptureNotFound("no capture given")
    from analyze.capture import same_pcap_note

    sources = _sources(given, ship=scheduler is not None)
    kw = {"verify": verify, "dns_ports": tuple(int(p) for p in dns_ports),
          "on_damage": on_damage}
    if scheduler is None:
        results = [ingest_task(s, **kw) for s in sources]  # type: ignore[arg-type]
    else:
        results = _run_on(scheduler, sources, **kw)
    pairs: list[tuple[Path, Any]] = []
    notes: list[str] = []
    pcaps: dict[str, str] = {}
    for raw, result in zip(given, results, strict=True):
        if result.pcap_sha256 is not None:
            if result.pcap_sha256 in pcaps:
                notes.append(same_pcap_note(result.label, pcaps[result.pcap_sha256]))
                continue
            pcaps[result.pcap_sha256] = result.label
        pairs.append((Path(raw), _store(result, work)))
    return pairs, notes


__all__ = ["FleetError", "NoWorkers", "RemoteCaptureError", "SchedulerUnreachable",
           "Source", "WorkerDied", "ingest_all", "ingest_task", "is_remote"]
