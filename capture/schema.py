"""The capture format: Arrow schemas and directory layout shared by capture and analyze.

This module is the single definition of what a capture directory holds. ``docs/format.md``
documents every column declared here (a test checks that), the recorder writes these schemas,
``dnstrail import`` writes them from pcaps, and the analyzer reads them. It imports nothing but
pyarrow so that the analyzer can use it on a machine without BCC.

Each field carries its documentation in the Arrow field metadata under ``b"doc"``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from dnstrail.errors import DnstrailError

#: Major version of the capture format. Readers refuse a capture whose major version is newer
#: than theirs, read older majors they know, and ignore unknown extra columns.
SCHEMA_VERSION = 1

MANIFEST_NAME = "manifest.json"
#: Event files: ``<kind>-<seq:06d>.parquet`` with kind in EVENT_KINDS.
EVENT_KINDS = ("messages", "connects", "execs")
#: Snapshot tables, one file each, written at the end of a capture (and at each rotation).
SNAPSHOT_KINDS = ("processes", "cgroups", "pods")
#: Spool segments: message records the recorder has not turned into Parquet yet
#: (``spool-<seq:06d>.spool``, capture.spool); they hold messages rows.
SPOOL_KIND = "spool"
SPOOL_SUFFIX = ".spool"
#: Prefix of files still being written; readers ignore them, a crash leaves them behind.
TMP_PREFIX = ".tmp-"

TS = pa.timestamp("ns", tz="UTC")


def _f(name: str, typ: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, typ, nullable=nullable, metadata={b"doc": doc.encode()})


def _common_event_fields() -> list[pa.Field]:
    return [
        _f("ts", TS, "Wall-clock time of the event: mono_ns + manifest boot_time_ns.", False),
        _f("mono_ns", pa.int64(), "Kernel monotonic clock (bpf_ktime_get_ns) at the event; "
           "null for imported pcaps."),
        _f("seq", pa.uint64(), "Per-capture sequence number in the order the recorder "
           "received events (per kind; gaps are not losses, see manifest lost counters).", False),
        _f("tgid", pa.int32(), "Process id (thread-group id) in the root PID namespace."),
        _f("tid", pa.int32(), "Thread id in the root PID namespace."),
        _f("uid", pa.uint32(), "Real user id of the task."),
        _f("comm", pa.string(), "Task command name (16 bytes max, as the kernel keeps it)."),
        _f("cgroup_id", pa.uint64(), "cgroup v2 id (inode of the cgroup directory); join "
           "cgroups.parquet for the path."),
        _f("netns", pa.uint32(), "Inode number of the task's network namespace."),
    ]


MESSAGES_SCHEMA = pa.schema(
    _common_event_fields()
    + [
        _f("syscall", pa.dictionary(pa.int8(), pa.string()), "Syscall that moved the "
           "payload: sendto, sendmsg, sendmmsg, write, writev, recvfrom, recvmsg, recvmmsg, "
           "read, readv; 'pcap' for imported packets."),
        _f("direction", pa.dictionary(pa.int8(), pa.string()), "'send' or 'recv' from "
           "the process's point of view; null for imported pcaps (seen on the wire)."),
        _f("fd", pa.int32(), "File descriptor of the socket in the process."),
        _f("sock_id", pa.uint64(), "Opaque identity of the kernel socket (stable while the "
           "socket lives; may be reused after close). Null when unknown."),
        _f("msg_index", pa.uint16(), "Index of the message in a sendmmsg/recvmmsg vector; "
           "0 otherwise.", False),
        _f("protocol", pa.dictionary(pa.int8(), pa.string()), "'udp' or 'tcp'."),
        _f("family", pa.dictionary(pa.int8(), pa.string()), "'inet' or 'inet6'."),
        _f("src_addr", pa.string(), "Source IP address of the message (the local address "
           "for a send, the peer for a recv). Null when unknown."),
        _f("src_port", pa.uint16(), "Source port. Null when unknown."),
        _f("dst_addr", pa.string(), "Destination IP address of the message. Null when unknown."),
        _f("dst_port", pa.uint16(), "Destination port. Null when unknown."),
        _f("payload", pa.binary(), "Captured bytes: one UDP datagram, or one chunk of a "
           "TCP stream as the syscall moved it (DNS over TCP keeps its 2-byte length "
           "prefix; messages may span or share chunks).", False),
        _f("orig_len", pa.uint32(), "Length of the data the syscall moved, before the "
           "snaplen cut.", False),
        _f("truncated", pa.bool_(), "True when payload is shorter than orig_len (snaplen, "
           "or the kernel refused part of the read).", False),
    ]
)

CONNECTS_SCHEMA = pa.schema(
    _common_event_fields()
    + [
        _f("fd", pa.int32(), "File descriptor passed to connect()."),
        _f("family", pa.dictionary(pa.int8(), pa.string()), "'inet' or 'inet6'."),
        _f("protocol", pa.dictionary(pa.int8(), pa.string()), "'tcp', 'udp' or null when "
           "the socket type was not known at connect time."),
        _f("dst_addr", pa.string(), "Address passed to connect()."),
        _f("dst_port", pa.uint16(), "Port passed to connect()."),
        _f("result", pa.int32(), "connect() return value: 0, or a negative errno "
           "(-115 EINPROGRESS for a non-blocking connect). Null if the exit was not seen."),
        _f("latency_ns", pa.int64(), "Time spent inside connect(). Null if the exit was "
           "not seen."),
    ]
)

EXECS_SCHEMA = pa.schema(
    _common_event_fields()
    + [
        _f("ppid", pa.int32(), "Parent process id at exec time."),
        _f("filename", pa.string(), "Path of the executed binary as passed to exec."),
    ]
)

PROCESSES_SCHEMA = pa.schema(
    [
        _f("tgid", pa.int32(), "Process id in the root PID namespace.", False),
        _f("ppid", pa.int32(), "Parent process id."),
        _f("uid", pa.uint32(), "Real user id."),
        _f("comm", pa.string(), "Command name."),
        _f("exe", pa.string(), "Resolved /proc/PID/exe target; null when unreadable "
           "(kernel threads, exited processes known only from exec events)."),
        _f("cmdline", pa.string(), "Command line, NUL separators replaced by spaces, "
           "capped at 4096 bytes."),
        _f("cgroup_id", pa.uint64(), "cgroup v2 id."),
        _f("cgroup_path", pa.string(), "cgroup v2 path relative to the cgroup2 mount."),
        _f("netns", pa.uint32(), "Network namespace inode."),
        _f("start_time", TS, "Process start time (wall clock), or the exec time for "
           "source=exec."),
        _f("source", pa.dictionary(pa.int8(), pa.string()), "'scan' (from /proc at "
           "capture start or end) or 'exec' (from an exec event).", False),
    ]
)

CGROUPS_SCHEMA = pa.schema(
    [
        _f("cgroup_id", pa.uint64(), "cgroup v2 id (directory inode).", False),
        _f("path", pa.string(), "Path relative to the cgroup2 mount, starting with '/'.", False),
        _f("resolved_at", TS, "When the recorder resolved the id to the path (the "
           "cgroup existed then)."),
    ]
)

PODS_SCHEMA = pa.schema(
    [
        _f("pod_uid", pa.string(), "Pod UID (with dashes).", False),
        _f("namespace", pa.string(), "Kubernetes namespace."),
        _f("pod", pa.string(), "Pod name."),
        _f("container", pa.string(), "Container name; null for a pod-level row."),
        _f("container_id", pa.string(), "Container runtime id (hex, no runtime prefix); "
           "null when the source does not know it."),
        _f("source", pa.dictionary(pa.int8(), pa.string()), "'var-log-pods' (node "
           "directory layout) or 'kubectl' (a `kubectl get pods -A -o json` file).", False),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "messages": MESSAGES_SCHEMA,
    "connects": CONNECTS_SCHEMA,
    "execs": EXECS_SCHEMA,
    "processes": PROCESSES_SCHEMA,
    "cgroups": CGROUPS_SCHEMA,
    "pods": PODS_SCHEMA,
}

#: Keys of manifest.json and their meaning (documented in docs/format.md, checked by a test).
MANIFEST_KEYS: dict[str, str] = {
    "format": "Always 'dnstrail-capture'.",
    "schema_version": "Integer major version of this format (SCHEMA_VERSION).",
    "dnstrail_version": "Version of the dnstrail that wrote the capture.",
    "source": "'ebpf' for `dnstrail record`, 'pcap' for `dnstrail import`.",
    "host": "Node hostname.",
    "kernel": "uname -r of the node (null for pcaps).",
    "boot_time_ns": "Wall-clock ns at monotonic zero: ts = mono_ns + boot_time_ns.",
    "started_at": "Wall-clock start of the capture (ISO 8601, UTC).",
    "stopped_at": "Wall-clock end (ISO 8601, UTC); null while running or after a crash.",
    "status": "'running', 'complete', or 'failed' (with 'error').",
    "error": "One-line reason when status is 'failed'; null otherwise.",
    "command_line": "argv of the recorder or importer.",
    "filters": "Object of the filters in force (pids, comms, cgroups, pods, ports, snaplen).",
    "lost": "Object: lost-event counter by cause (e.g. ringbuf_full, payload_unreadable); "
    "every cause the recorder knows is present, zero when nothing was lost.",
    "counts": "Object: events written by kind.",
    "files": "List of finished files: {name, kind, rows, bytes, sha256}.",
    "spool_open": "The spool segment (spool-NNNNNN.spool) the recorder was appending to when "
    "this manifest was written, or null. Closed segments not yet turned into Parquet are in "
    "'files' with kind 'spool'; a complete capture has none. A recorder that died leaves this "
    "segment readable up to its last whole record, without a hash (docs/format.md, Spool).",
    "priority_log": "With --priority auto, each change of the recorder's level: {at (ISO 8601, "
    "UTC), level ('low': the node's CPUs are saturated: while spooling, Parquet conversion is "
    "deferred; without the spool, nice 19 and CPU capped; 'normal'), lost (the lost counters "
    "at that moment)}; the lost counters' growth between entries says when events were lost. "
    "Empty when the level never changed.",
}


class FormatError(DnstrailError):
    """The capture directory is not one this version of dnstrail can read."""


@dataclass(frozen=True)
class FileEntry:
    name: str
    kind: str
    rows: int
    bytes: int
    sha256: str


def event_file_name(kind: str, index: int) -> str:
    """Name of the index-th finished event file of a kind (``messages-000001.parquet``)."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    return f"{kind}-{index:06d}.parquet"


def snapshot_file_name(kind: str) -> str:
    if kind not in SNAPSHOT_KINDS:
        raise ValueError(f"unknown snapshot kind {kind!r}")
    return f"{kind}.parquet"


def spool_file_name(index: int) -> str:
    """Name of the index-th spool segment (``spool-000001.spool``, see capture.spool)."""
    return f"{SPOOL_KIND}-{index:06d}{SPOOL_SUFFIX}"


def file_kind(name: str) -> str | None:
    """The kind of a finished capture file from its name, or None for anything else."""
    if name.startswith(SPOOL_KIND + "-") and name.endswith(SPOOL_SUFFIX):
        idx = name[len(SPOOL_KIND) + 1: -len(SPOOL_SUFFIX)]
        return SPOOL_KIND if idx.isdigit() else None
    if name.startswith(TMP_PREFIX) or not name.endswith(".parquet"):
        return None
    stem = name[: -len(".parquet")]
    if stem in SNAPSHOT_KINDS:
        return stem
    kind, _, idx = stem.rpartition("-")
    if kind in EVENT_KINDS and idx.isdigit():
        return kind
    return None


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Read and check manifest.json; raise FormatError with a one-line reason."""
    path = Path(directory) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FormatError(f"{directory}: no {MANIFEST_NAME}: not a dnstrail capture") from None
    except (OSError, ValueError) as exc:
        raise FormatError(f"{path}: unreadable manifest: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "dnstrail-capture":
        raise FormatError(f"{path}: not a dnstrail capture manifest")
    version = manifest.get("schema_version")
    if not isinstance(version, int):
        raise FormatError(f"{path}: schema_version missing or not an integer")
    if version > SCHEMA_VERSION:
        raise FormatError(
            f"{directory}: capture format version {version} is newer than this dnstrail "
            f"reads ({SCHEMA_VERSION}); upgrade dnstrail"
        )
    return manifest


def conform(table: pa.Table, kind: str) -> pa.Table:
    """Bring a table read from disk to the current schema of its kind.

    Unknown extra columns are dropped, missing nullable columns are added as nulls, types are
    cast. Readers of older minor layouts rely on this.
    """
    schema = SCHEMAS[kind]
    columns = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            if col.type != field.type:
                col = col.cast(field.type)
            columns.append(col)
        elif field.nullable:
            columns.append(pa.nulls(table.num_rows, field.type))
        else:
            raise FormatError(f"{kind}: required column {field.name!r} is missing")
    return pa.Table.from_arrays(columns, schema=schema)
