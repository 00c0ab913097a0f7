"""The analyzer's stage contracts: the Arrow schema of every table a stage hands to the next.

The analyzer is a pipeline of stages, each with one job and one declared output (docs/api.md,
"Stages"):

* evidence: the capture directory (``capture/schema.py``), never modified;
* ingest (``analyze.ingest``): TCP reassembly, decoding, roles and pod attribution, per
  capture, written as typed Parquet into the cache: ``messages``, ``connects``, ``execs`` and
  the snapshot tables;
* relate (``analyze.relate``): matching queries and responses (``transactions``) and grouping
  resolver calls (``lookups``) over every capture of a load, in DuckDB;
* judge (``analyze.findings``) and render (``analyze.report``).

Each schema is declared here once, derived from the capture schema where a stage passes capture
columns through, and checked at the boundary with :func:`check`: a missing column is a
:class:`ContractError` there, never a silent all-null column downstream. Dictionary-encoded
capture columns become plain strings (Parquet dictionary-encodes them on disk anyway).
"""

from __future__ import annotations

import pyarrow as pa

from analyze.decode import DECODED_ARROW_TYPES, DECODED_COLUMNS
from analyze.errors import AnalyzeError
from capture import schema

#: Bump when an ingest output changes: cached ingests of another version are rebuilt.
INGEST_VERSION = 2
#: Bump when a relate output changes.
RELATE_VERSION = 6

#: Message roles, the values of ``messages.role`` (docs/api.md).
ROLES = ("client_query", "client_response", "server_query", "server_response", "query",
         "response")
#: Attribution columns every attributed table carries, after ``cgroup_path``.
ATTR_COLUMNS = ("pod_uid", "namespace", "pod", "container", "container_id", "qos")
#: The process name (the thread-group leader's comm; ``comm`` is the thread's), derived by
#: ingest from the processes snapshot (``analyze.attribute.process_names``).
PROCESS_COLUMN = "process"
#: Columns the relate stage adds to every per-capture table: which capture, which node.
ORIGIN_COLUMNS = ("node", "capture")


class ContractError(AnalyzeError):
    """a stage produced a table that does not match its declared schema (a bug in dnstrail: please report it)"""


def _plain(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _capture_fields(kind: str) -> list[pa.Field]:
    return [pa.field(f.name, _plain(f.type), nullable=True) for f in schema.SCHEMAS[kind]]


def _attribution() -> list[pa.Field]:
    return [pa.field("cgroup_path", pa.string())] + [
        pa.field(name, pa.string()) for name in ATTR_COLUMNS]


def _messages() -> pa.Schema:
    decoded = [pa.field(name, DECODED_ARROW_TYPES[name]) for name in DECODED_COLUMNS]
    return pa.schema(
        [pa.field("msg_id", pa.int64(), nullable=False)]
        + _capture_fields("messages")
        + [pa.field("stream_error", pa.string())]
        + decoded
        + [pa.field("role", pa.string())]
        + _attribution()
        + [pa.field(PROCESS_COLUMN, pa.string())])


def _events(kind: str) -> pa.Schema:
    return pa.schema(_capture_fields(kind) + _attribution()
                     + [pa.field(PROCESS_COLUMN, pa.string())])


#: Output of ingest, per capture: one row per DNS message (TCP reassembled), ``msg_id`` the
#: message's position in the capture.
MESSAGES = _messages()
CONNECTS = _events("connects")
EXECS = _events("execs")
PROCESSES = pa.schema(_capture_fields("processes"))
CGROUPS = pa.schema(_capture_fields("cgroups"))
PODS = pa.schema(_capture_fields("pods"))

_TS = schema.TS
_REC = DECODED_ARROW_TYPES["answers"]

#: Output of relate: one row per transaction (docs/api.md, ``transactions``).
TRANSACTIONS = pa.schema([
    pa.field("txn_id", pa.int64(), nullable=False),
    pa.field("side", pa.string()), pa.field("status", pa.string()),
    pa.field("ts", _TS), pa.field("response_ts", _TS), pa.field("last_query_ts", _TS),
    pa.field("latency_s", pa.float64()), pa.field("retransmissions", pa.int64()),
    pa.field("query_msg_id", pa.int64()), pa.field("response_msg_id", pa.int64()),
    pa.field("client_addr", pa.string()), pa.field("client_port", pa.int64()),
    pa.field("server_addr", pa.string()), pa.field("server_port", pa.int64()),
    pa.field("protocol", pa.string()), pa.field("dns_id", pa.int64()),
    pa.field("qname", pa.string()), pa.field("qtype", pa.string()),
    pa.field("registered_domain", pa.string()), pa.field("rcode", pa.int64()),
    pa.field("rcode_name", pa.string()), pa.field("tc", pa.bool_()),
    pa.field("ancount", pa.int64()), pa.field("answers", _REC),
    pa.field("answer_ips", pa.list_(pa.string())), pa.field("min_ttl", pa.int64()),
    pa.field("node", pa.string()), pa.field("capture", pa.string()),
    pa.field("tgid", pa.int32()), pa.field("tid", pa.int32()), pa.field("comm", pa.string()),
    pa.field(PROCESS_COLUMN, pa.string()), pa.field("uid", pa.uint32()), pa.field("netns", pa.uint32()),
    pa.field("cgroup_id", pa.uint64()),
] + _attribution())

#: Output of relate, per message: the transaction it belongs to (null: none).
MESSAGE_TXN = pa.schema([pa.field("msg_id", pa.int64(), nullable=False),
                         pa.field("txn_id", pa.int64())])

#: Output of relate: one row per resolver call (docs/api.md, ``lookups``).
LOOKUPS = pa.schema([
    pa.field("lookup_id", pa.int64(), nullable=False), pa.field("ts", _TS),
    pa.field("end_ts", _TS), pa.field("node", pa.string()), pa.field("tgid", pa.int32()),
    pa.field("comm", pa.string()), pa.field(PROCESS_COLUMN, pa.string()),
    pa.field("netns", pa.uint32()),
    pa.field("cgroup_id", pa.uint64()), pa.field("client_addr", pa.string()),
    *[pa.field(name, pa.string()) for name in ATTR_COLUMNS],
    pa.field("server_addr", pa.string()), pa.field("first_name", pa.string()),
    pa.field("final_name", pa.string()), pa.field("base_name", pa.string()),
    pa.field("names", pa.list_(pa.string())), pa.field("qtypes", pa.list_(pa.string())),
    pa.field("n_queries", pa.int64()), pa.field("n_nxdomain", pa.int64()),
    pa.field("n_timeouts", pa.int64()), pa.field("n_retransmissions", pa.int64()),
    pa.field("rcode_name", pa.string()), pa.field("answer_ips", pa.list_(pa.string())),
    pa.field("txn_ids", pa.list_(pa.int64())),
])

#: Every stage table by name.
STAGES: dict[str, pa.Schema] = {
    "messages": MESSAGES, "connects": CONNECTS, "execs": EXECS, "processes": PROCESSES,
    "cgroups": CGROUPS, "pods": PODS, "transactions": TRANSACTIONS,
    "message_txn": MESSAGE_TXN, "lookups": LOOKUPS,
}


def check(table: pa.Table, stage: str, *, extra: tuple[str, ...] = ()) -> pa.Table:
    """``table`` in the declared column order and types of ``stage`` (plus ``extra`` columns).

    Raises ContractError naming the stage and the columns when one is missing or cannot be
    cast: a stage's output is checked where it is handed on, not where it is first used.
    """
    declared = STAGES[stage]
    missing = [f.name for f in declared if f.name not in table.column_names]
    if missing:
        raise ContractError(f"stage {stage!r}: missing column(s) {', '.join(missing)}")
    arrays, fields = [], []
    for f in declared:
        col = table.column(f.name)
        if col.type != f.type:
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ContractError(f"stage {stage!r}: column {f.name!r} is {col.type}, "
                                    f"declared {f.type}: {exc}") from None
        if not f.nullable and col.null_count:
            raise ContractError(f"stage {stage!r}: column {f.name!r} has nulls")
        arrays.append(col)
        fields.append(f)
    for name in extra:
        arrays.append(table.column(name))
        fields.append(table.schema.field(name))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


__all__ = [
    "ATTR_COLUMNS",
    "CGROUPS",
    "CONNECTS",
    "EXECS",
    "INGEST_VERSION",
    "LOOKUPS",
    "MESSAGES",
    "MESSAGE_TXN",
    "ORIGIN_COLUMNS",
    "PODS",
    "PROCESSES",
    "PROCESS_COLUMN",
    "RELATE_VERSION",
    "ROLES",
    "STAGES",
    "TRANSACTIONS",
    "ContractError",
    "check",
]
