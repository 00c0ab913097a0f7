"""Ingest: one capture directory (the evidence) -> typed derived Parquet in the work directory.

The evidence is only read. Every file is checked against the SHA-256 in the manifest (unless
``verify=False``); the digests, the stage version and the DNS ports make the entry's key, so a
cached ingest is reused exactly while the evidence is unchanged and rebuilt when it is not.

What ingest writes (the ``messages``, ``connects``, ``execs``, ``processes``, ``cgroups`` and
``pods`` stage tables of ``analyze.stages``):

* TCP: the TCP rows of every messages file are gathered (they are few: a stream may cross a
  file rotation) and reassembled into one row per DNS message (``analyze.tcp``);
* UDP: each messages file is cut into chunks of row groups and each chunk is decoded, given
  its roles and attributed on its own, in worker processes (both cores) when the capture is
  large enough to pay for them, so memory is bounded by a chunk, not by the capture;
* ``msg_id`` is the message's position in the capture: the files in order, each TCP chunk
  replaced by the messages it completed (``analyze.tcp`` keeps that order too);
* ``process``, the process name beside the thread's ``comm``, comes from the rows of the
  thread-group leader, the processes snapshot and every exec event
  (``analyze.attribute.process_names``).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from analyze import stages
from analyze._frames import to_pandas
from analyze.cache import WorkDir, WorkDirError, digest, is_disk_full
from analyze.errors import CaptureDamaged, CaptureTooNew, NotACapture
from capture import schema
from capture.errors import CaptureError
from capture.spool import convert_segment
from capture.writer import sha256_file

#: Rows per decoding chunk (a chunk is whole row groups, so it may be somewhat larger).
CHUNK_ROWS = 500_000
#: Captures with fewer messages than this are decoded in this process (starting workers costs
#: about a second).
POOL_MIN_ROWS = 2_000_000
#: Rows per row group of the derived files (the unit DuckDB skips by statistics).
ROW_GROUP = 131_072

_SNAPSHOTS = schema.SNAPSHOT_KINDS


@dataclass(frozen=True)
class Ingested:
    """One capture, ingested: where its stage tables are and what was said about it."""

    evidence: str
    key: str
    entry: Path
    manifest: dict[str, Any]
    node: str
    messages: int
    verified: bool
    warnings: tuple[str, ...] = ()
    skipped: tuple[dict[str, str], ...] = ()
    parts: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def files(self, kind: str) -> list[str]:
        """Paths of the derived Parquet files of a stage table (may be empty)."""
        return [str(self.entry / name) for name in self.parts.get(kind, ())]


@dataclass
class _Evidence:
    directory: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    files: list[str]           # finished capture files that will be read, sorted
    fingerprint: list[Any]
    warnings: list[str]
    skipped: list[dict[str, str]]


def _scan(directory: Path, *, verify: bool, on_damage: str) -> _Evidence:
    try:
        manifest = schema.read_manifest(directory)
    except schema.FormatError as exc:
        msg = str(exc)
        if "newer than" in msg:
            raise CaptureTooNew(msg) from None
        raise NotACapture(msg) from None
    manifest_sha = sha256_file(directory / schema.MANIFEST_NAME)
    listed = {f.get("name"): f for f in manifest.get("files") or [] if isinstance(f, dict)}
    warnings: list[str] = []
    skipped: list[dict[str, str]] = []
    names = sorted(p.name for p in directory.iterdir() if schema.file_kind(p.name) is not None)
    for name in names:
        if name not in listed and schema.file_kind(name) == schema.SPOOL_KIND:
            which = ("the segment the recorder was writing" if name == manifest.get("spool_open")
                     else "a segment that waited for CPU to spare")
            warnings.append(f"{directory}: {name} is a spool segment not yet hashed when the "
                            f"recorder stopped ({which}): read up to its last whole record; "
                            "no hash vouches for it")
        elif name not in listed:
            warnings.append(f"{directory}: {name} is not listed in the manifest (read anyway)")
    for listed_name in listed:
        if isinstance(listed_name, str) and not (directory / listed_name).exists():
            warnings.append(f"{directory}: {listed_name} is listed in the manifest but missing")
    crashed = manifest.get("status") == "running"

    def damaged(name: str, reason: str) -> None:
        if on_damage == "raise":
            raise CaptureDamaged(f"{directory / name}: {reason}")
        skipped.append({"path": str(directory / name), "reason": reason})
        warnings.append(f"{directory / name}: {reason}; skipped")

    fingerprint: list[Any] = []
    keep: list[str] = []
    if verify:
        with ThreadPoolExecutor(max_workers=2) as pool:
            digests = dict(zip(names, pool.map(lambda n: sha256_file(directory / n), names),
                               strict=True))
    for name in names:
        if verify:
            want = listed.get(name, {}).get("sha256")
            got = digests[name]
            if want and got != want:
                if crashed and schema.file_kind(name) in _SNAPSHOTS:
                    # a snapshot is rewritten at each rotation just before the manifest: a
                    # crash between the two renames leaves a newer, complete snapshot
                    warnings.append(f"{directory / name}: snapshot newer than its manifest "
                                    "entry (the capture did not finish); read anyway")
                else:
                    damaged(name, "sha256 differs from the manifest: the file was modified "
                                  "or damaged (--no-verify reads it anyway)")
                    continue
            fingerprint.append([name, got])
        else:
            st = (directory / name).stat()
            fingerprint.append([name, st.st_size, st.st_mtime_ns])
        keep.append(name)
    return _Evidence(directory, manifest, manifest_sha, keep, fingerprint, warnings, skipped)


def ingest(directory: str | Path, *, work: WorkDir, verify: bool = True,
           dns_ports: Sequence[int] = (53,), on_damage: str = "raise",
           workers: int | None = None, label: str | None = None) -> Ingested:
    """Ingest one capture directory into ``work`` (or reuse the entry that is there).

    ``on_damage``: ``"raise"`` (CaptureDamaged on the first damaged file) or ``"skip"`` (the
    file is named in ``warnings``/``skipped`` and the rest is ingested).
    """
    directory = Path(directory)
    ev = _scan(directory, verify=verify, on_damage=on_damage)
    node = str(ev.manifest.get("host") or directory.name)
    key = digest({"stage": "ingest", "version": stages.INGEST_VERSION,
                  "ports": sorted(int(p) for p in dns_ports), "manifest": ev.manifest_sha256,
                  "files": ev.fingerprint, "node": node})
    info = work.lookup("ingest", key)
    if info is None:
        info = _build(ev, work=work, key=key, node=node, dns_ports=tuple(dns_ports),
                      on_damage=on_damage, workers=workers)
    warnings = tuple(ev.warnings) + tuple(info.get("warnings", ()))
    skipped = tuple(ev.skipped) + tuple(info.get("skipped", ()))
    return Ingested(evidence=label or str(directory), key=key, entry=work.entry("ingest", key),
                    manifest=ev.manifest, node=node, messages=int(info["messages"]),
                    verified=verify, warnings=warnings, skipped=skipped,
                    parts={k: tuple(v) for k, v in info["parts"].items()})


# --- building an entry ----------------------------------------------------------------------

def _write(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression="zstd", compression_level=1,
                   row_group_size=ROW_GROUP)


def _read(path: Path, kind: str, **kw: Any) -> pa.Table:
    return schema.conform(pq.read_table(path, **kw), kind)


@dataclass(frozen=True)
class _Task:
    """One unit of ingest work (picklable for worker processes)."""

    kind: str                       # messages / connects / execs
    source: str                     # evidence file
    row_groups: tuple[int, ...]     # of the source; () = all
    first_row: int                  # global position of the chunk's first row
    out: str                        # derived file to write
    node: str
    snapshots: str                  # directory holding processes/cgroups/pods.parquet
    dns_ports: tuple[int, ...]
    tcp_pos: str | None = None      # .npy files: sorted global positions of TCP chunks and of
    emit_pos: str | None = None     # the reassembled TCP messages


def _build(ev: _Evidence, *, work: WorkDir, key: str, node: str, dns_ports: tuple[int, ...],
           on_damage: str, workers: int | None) -> dict[str, Any]:
    tmp = work.building("ingest", key)
    try:
        return _build_in(tmp, ev, work=work, key=key, node=node, dns_ports=dns_ports,
                         on_damage=on_damage, workers=workers)
    except OSError as exc:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):
            raise work.error(exc) from None
        raise
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _build_in(tmp: Path, ev: _Evidence, *, work: WorkDir, key: str, node: str,
              dns_ports: tuple[int, ...], on_damage: str, workers: int | None
              ) -> dict[str, Any]:
    warnings: list[str] = []
    skipped: list[dict[str, str]] = []
    parts: dict[str, list[str]] = {k: [] for k in stages.STAGES}

    def unreadable(name: str, exc: BaseException) -> None:
        what = ("spool segment" if schema.file_kind(name) == schema.SPOOL_KIND
                else "Parquet file")
        reason = f"unreadable {what}: {exc}"
        if on_damage == "raise":
            raise CaptureDamaged(f"{ev.directory / name}: {reason}") from None
        skipped.append({"path": str(ev.directory / name), "reason": reason})
        warnings.append(f"{ev.directory / name}: {reason}; skipped")

    by_kind: dict[str, list[str]] = {}
    for name in ev.files:
        by_kind.setdefault(schema.file_kind(name) or "", []).append(name)
    for kind in _SNAPSHOTS:
        tables = []
        for name in by_kind.get(kind, []):
            try:
                tables.append(_read(ev.directory / name, kind))
            except (OSError, pa.ArrowException, schema.FormatError) as exc:
                if isinstance(exc, OSError) and is_disk_full(exc):
                    raise
                unreadable(name, exc)
        table = (pa.concat_tables(tables) if tables
                 else schema.SCHEMAS[kind].empty_table())
        _write(stages.check(table, kind), tmp / f"{kind}.parquet")
        parts[kind].append(f"{kind}.parquet")

    _write_exec_names(ev, by_kind.get("execs", []), tmp / _EXEC_NAMES)

    tasks: list[_Task] = []
    # messages: positions, TCP rows. Spool segments (a recorder that did not finish) are
    # read as messages files, turned into Parquet in the work directory first.
    sources = {name: ev.directory / name for name in by_kind.get("messages", [])}
    for name in by_kind.get(schema.SPOOL_KIND, []):
        out_path = tmp / f"_{name}.parquet"
        try:
            convert_segment(ev.directory / name, out_path)  # the recorder's own conversion
        except (OSError, CaptureError) as exc:
            if isinstance(exc, OSError) and is_disk_full(exc):
                raise
            unreadable(name, exc)
            continue
        sources[name] = out_path
    files: list[tuple[str, pq.ParquetFile]] = []
    for name, source in sources.items():
        try:
            files.append((name, pq.ParquetFile(source)))
        except (OSError, pa.ArrowException) as exc:
            if isinstance(exc, OSError) and is_disk_full(exc):
                raise
            unreadable(name, exc)
    offsets = np.cumsum([0] + [f.metadata.num_rows for _, f in files])
    tcp_pos_parts: list[np.ndarray] = []
    tcp_tables: list[pa.Table] = []
    readable: list[tuple[str, pq.ParquetFile, int]] = []
    for (name, f), first in zip(files, offsets[:-1].tolist(), strict=True):
        try:
            proto = f.read(columns=["protocol"]).column("protocol") \
                if "protocol" in f.schema_arrow.names else None
            is_tcp = (np.zeros(f.metadata.num_rows, dtype=bool) if proto is None else
                      np.asarray(pc.fill_null(pc.equal(proto.cast(pa.string()), "tcp"),
                                              False).to_numpy(zero_copy_only=False), bool))
            if is_tcp.any():
                rows = np.flatnonzero(is_tcp)
                t = _read(sources[name], "messages").take(pa.array(rows))
                tcp_tables.append(t.append_column("_pos", pa.array(rows + first, pa.int64())))
                tcp_pos_parts.append(rows + first)
        except (OSError, pa.ArrowException, schema.FormatError) as exc:
            if isinstance(exc, OSError) and is_disk_full(exc):
                raise
            unreadable(name, exc)
            continue
        readable.append((name, f, first))
    tcp_pos = np.concatenate(tcp_pos_parts) if tcp_pos_parts else np.zeros(0, np.int64)
    emit_pos = np.zeros(0, np.int64)
    snapdir = str(tmp)
    if len(tcp_pos):
        from analyze.tcp import reassemble_table

        out = reassemble_table(pa.concat_tables(tcp_tables))
        emit_pos = out.column("_pos").to_numpy().astype(np.int64)
        msg_id = (emit_pos - np.searchsorted(tcp_pos, emit_pos, "left")
                  + np.arange(len(emit_pos), dtype=np.int64))
        part = _messages_part(out.drop_columns(["_pos"]), msg_id, _snapshots(snapdir), node,
                              dns_ports)
        _write(part, tmp / "messages-tcp.parquet")
        parts["messages"].append("messages-tcp.parquet")
    tcp_file = emit_file = None
    if len(tcp_pos):
        tcp_file, emit_file = str(tmp / "_tcp_pos.npy"), str(tmp / "_emit_pos.npy")
        np.save(tcp_file, tcp_pos)
        np.save(emit_file, emit_pos)
    n_chunk = 0
    for name, f, first in readable:
        groups = list(range(f.metadata.num_row_groups))
        chunk: list[int] = []
        n_rows = 0
        start = first
        for g in groups:
            chunk.append(g)
            n_rows += f.metadata.row_group(g).num_rows
            if n_rows >= CHUNK_ROWS or g == groups[-1]:
                n_chunk += 1
                out_name = f"messages-{n_chunk:06d}.parquet"
                tasks.append(_Task("messages", str(sources[name]), tuple(chunk), start,
                                   str(tmp / out_name), node, snapdir, dns_ports, tcp_file,
                                   emit_file))
                parts["messages"].append(out_name)
                start += n_rows
                chunk, n_rows = [], 0
    for kind in ("connects", "execs"):
        for i, name in enumerate(by_kind.get(kind, []), 1):
            out_name = f"{kind}-{i:06d}.parquet"
            tasks.append(_Task(kind, str(ev.directory / name), (), 0, str(tmp / out_name),
                               node, snapdir, dns_ports))
            parts[kind].append(out_name)
    total = int(offsets[-1]) if len(offsets) else 0
    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    results = _run(tasks, n_workers if total >= POOL_MIN_ROWS else 1)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, BaseException):
            if isinstance(result, OSError) and is_disk_full(result):
                raise result
            if isinstance(result, (pa.ArrowException, schema.FormatError, OSError)):
                unreadable(Path(task.source).name, result)
                name = Path(task.out).name
                kind_parts = parts[task.kind]
                if name in kind_parts:
                    kind_parts.remove(name)
                continue
            raise result
    messages = 0
    for name in parts["messages"]:
        messages += pq.ParquetFile(tmp / name).metadata.num_rows
    for extra in (tcp_file, emit_file, str(tmp / _EXEC_NAMES)):
        if extra:
            os.unlink(extra)
    info = {"messages": messages, "parts": parts, "warnings": warnings, "skipped": skipped,
            "evidence": str(ev.directory), "node": node}
    work.publish(tmp, "ingest", key, info)
    return info


def spawn_safe() -> bool:
    """Whether worker processes can be started: a started worker imports the main module
    again, so a script that calls ``load`` at its top level, without an
    ``if __name__ == "__main__":`` guard, would run again in every worker. The REPL,
    Jupyter, ``python -c``, ``-m`` and the ``dnstrail`` command are safe; so is a script with
    the guard. Otherwise the decoding runs in this process (slower, same result)."""
    import sys

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main, "__spec__", None) is not None:
        return True
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return False
    return "__name__" in text and "__main__" in text


def _run(tasks: list[_Task], workers: int) -> list[Any]:
    """Run the tasks (in worker processes when workers > 1); each result or its exception."""
    if workers <= 1 or len(tasks) <= 1 or not spawn_safe():
        out: list[Any] = []
        for t in tasks:
            try:
                out.append(_work(t))
            except (OSError, pa.ArrowException, schema.FormatError) as exc:
                out.append(exc)
        return out
    ctx = multiprocessing.get_context("spawn")
    pool: Executor
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx) as pool:
        futures = [pool.submit(_work, t) for t in tasks]
        results: list[Any] = []
        for fut in futures:
            try:
                results.append(fut.result())
            except (OSError, pa.ArrowException, schema.FormatError) as exc:
                results.append(exc)
        return results


#: Every exec event's (tgid, comm, ts) during an ingest: the names processes took, for the
#: ``process`` column (the processes snapshot keeps at most 100,000 exec rows).
_EXEC_NAMES = "_exec_names.parquet"


def _write_exec_names(ev: _Evidence, names: list[str], path: Path) -> None:
    tables = []
    for name in names:
        try:
            t = pq.read_table(ev.directory / name, columns=["tgid", "comm", "ts"])
        except (OSError, pa.ArrowException) as exc:
            if isinstance(exc, OSError) and is_disk_full(exc):
                raise
            continue  # the execs task reads the file again and reports it (or skips it)
        tables.append(t.rename_columns(["tgid", "comm", "start_time"]))
    schema_ = pa.schema([pa.field("tgid", pa.int32()), pa.field("comm", pa.string()),
                         pa.field("start_time", schema.TS)])
    table = (pa.concat_tables([t.cast(schema_) for t in tables]) if tables
             else schema_.empty_table())
    _write(table, path)


@functools.lru_cache(maxsize=4)
def _snapshots(directory: str) -> dict[str, pd.DataFrame]:
    out = {}
    for kind in _SNAPSHOTS:
        out[kind] = to_pandas(pq.read_table(Path(directory) / f"{kind}.parquet"))
    # the names of processes: the snapshot's rows first (at equal times they win), then
    # every exec event
    names = Path(directory) / _EXEC_NAMES
    execs = to_pandas(pq.read_table(names)) if names.exists() else None
    procs = out["processes"][["tgid", "comm", "start_time"]]
    out["process_names"] = procs if execs is None or execs.empty else pd.concat(
        [procs, execs], ignore_index=True)
    return out


@functools.lru_cache(maxsize=4)
def _positions(path: str | None) -> np.ndarray:
    return np.load(path) if path else np.zeros(0, np.int64)


def _work(task: _Task) -> int:
    """Worker entry point: ingest one chunk, write its derived file, return its row count."""
    snaps = _snapshots(task.snapshots)
    parts = (_message_parts(task, snaps) if task.kind == "messages"
             else _event_parts(task, snaps))
    return _write_parts(parts, Path(task.out), task.kind)


def _write_parts(parts: Iterator[pa.Table], out: Path, kind: str) -> int:
    """Stream ``parts`` into one derived file (the stage's empty table when there are none);
    the rows written."""
    rows = 0
    writer: pq.ParquetWriter | None = None
    try:
        for part in parts:
            if writer is None:
                writer = pq.ParquetWriter(out, part.schema, compression="zstd",
                                          compression_level=1)
            writer.write_table(part, row_group_size=ROW_GROUP)
            rows += part.num_rows
            del part
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # no rows at all
        _write(stages.STAGES[kind].empty_table(), out)
    return rows


def _message_parts(task: _Task, snaps: dict[str, pd.DataFrame]) -> Iterator[pa.Table]:
    """A messages chunk decoded and attributed in batches of at most CHUNK_ROWS, however big
    the source's row groups are."""
    f = pq.ParquetFile(task.source)
    tcp_pos, emit_pos = _positions(task.tcp_pos), _positions(task.emit_pos)
    first = task.first_row
    for batch in f.iter_batches(batch_size=CHUNK_ROWS, row_groups=list(task.row_groups)):
        table = schema.conform(pa.Table.from_batches([batch]), "messages")
        pos = first + np.arange(table.num_rows, dtype=np.int64)
        first += table.num_rows
        if len(tcp_pos):
            udp = ~np.isin(pos, tcp_pos)
            table = table.filter(pa.array(udp))
            pos = pos[udp]
        msg_id = (pos - np.searchsorted(tcp_pos, pos, "left")
                  + np.searchsorted(emit_pos, pos, "left"))
        table = table.append_column("stream_error", pa.nulls(table.num_rows, pa.string()))
        yield _messages_part(table, msg_id, snaps, task.node, task.dns_ports)


def _event_parts(task: _Task, snaps: dict[str, pd.DataFrame]) -> Iterator[pa.Table]:
    """A connects or execs file attributed in batches of at most CHUNK_ROWS (a 50M-message
    node's 4.5M connects in one file took 3 GB at once)."""
    f = pq.ParquetFile(task.source)
    for batch in f.iter_batches(batch_size=CHUNK_ROWS):
        table = schema.conform(pa.Table.from_batches([batch]), task.kind)
        yield stages.check(_attribute(table, snaps, task.node), task.kind)


def _messages_part(table: pa.Table, msg_id: np.ndarray, snaps: dict[str, pd.DataFrame],
                   node: str, dns_ports: Sequence[int]) -> pa.Table:
    """Decode, give roles to and attribute capture message rows (TCP already reassembled)."""
    from analyze.decode import decode_table
    from analyze.reconstruct import role_codes

    decoded = decode_table(table.column("payload"))
    cols: dict[str, Any] = {"msg_id": pa.array(msg_id, pa.int64())}
    for name in table.column_names:
        cols[name] = table.column(name)
    for name in decoded.column_names:
        cols[name] = decoded.column(name)
    stream_error = table.column("stream_error")
    if stream_error.null_count < len(stream_error):
        # a damaged TCP stream is a message error too (counted in `errors` and the report)
        cols["error"] = pc.coalesce(decoded.column("error"), stream_error)
    small = pd.DataFrame({
        "qr": decoded.column("qr").to_pandas(types_mapper={pa.bool_(): pd.BooleanDtype()}.get),
        "src_port": table.column("src_port").to_pandas(),
        "dst_port": table.column("dst_port").to_pandas(),
        "direction": table.column("direction").cast(pa.string()).to_pandas(),
    })
    codes = role_codes(small, dns_ports)
    roles = np.array(stages.ROLES + (None,), dtype=object)[np.where(codes < 0, 6, codes)]
    cols["role"] = pa.array(roles, pa.string())
    out = pa.table(cols)
    out = _attribute(out, snaps, node)
    return stages.check(out, "messages")


def _attribute(table: pa.Table, snaps: dict[str, pd.DataFrame], node: str) -> pa.Table:
    from analyze.attribute import attribution_columns, process_names

    ints = {pa.int32(): pd.Int64Dtype()}.get
    frame = pd.DataFrame({
        "node": node,
        "cgroup_id": table.column("cgroup_id").to_pandas(
            types_mapper={pa.uint64(): pd.UInt64Dtype()}.get),
        "tgid": table.column("tgid").to_pandas(types_mapper=ints),
        "tid": table.column("tid").to_pandas(types_mapper=ints),
        "comm": table.column("comm").to_pandas(),
        "ts": table.column("ts").cast(pa.int64()).to_pandas(),
    }) if table.num_rows else pd.DataFrame({"node": [], "cgroup_id": [], "tgid": []})
    snap = {k: v.assign(node=node) for k, v in snaps.items()}
    attr = attribution_columns(frame, snap["cgroups"], snap["processes"], snap["pods"])
    attr[stages.PROCESS_COLUMN] = process_names(frame, snap["process_names"])
    for name in ("cgroup_path",) + stages.ATTR_COLUMNS + (stages.PROCESS_COLUMN,):
        arr = pa.array(attr[name], from_pandas=True) if len(attr) else pa.array([], pa.string())
        if pa.types.is_dictionary(arr.type) or arr.type != pa.string():
            arr = arr.cast(pa.string())
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, arr)
        else:
            table = table.append_column(name, arr)
    return table


__all__ = ["CHUNK_ROWS", "Ingested", "WorkDirError", "ingest", "sha256_file"]
