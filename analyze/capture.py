"""``load()`` and the ``Capture`` object: the stage tables of one or more captures.

``load`` checks and ingests capture directories (several nodes, or consecutive captures of one
node) and plain pcap/pcapng files (imported to a temporary directory with
``analyze.pcap.import_pcap``) into the work directory (``analyze.ingest``: decoded, typed
Parquet, reused while the evidence's SHA-256s match). Everything after that is lazy: matching
and lookups (``analyze.relate``) run on first use, ``filter`` only narrows the SQL that later
reads the tables, and ``.messages``, ``.transactions``, ``.lookups``, ``.connects`` ...
materialize the filtered rows as pandas on first access. ``sql()`` runs a query over the same
tables in DuckDB. See docs/api.md.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from analyze import stages
from analyze._frames import DICTIONARY_COLUMNS as _DICTIONARY
from analyze._frames import declared_types, to_pandas
from analyze._frames import stage_frame as _pandas
from analyze.attribute import ATTR_COLUMNS
from analyze.cache import WorkDir
from analyze.errors import (
    AnalyzeError,
    BadFilter,
    CaptureDamaged,
    CaptureNotFound,
    CaptureTooNew,
    NotACapture,
)
from analyze.reconstruct import (
    DEFAULT_GAP_S,
    DEFAULT_SKEW_S,
    DEFAULT_TIMEOUT_S,
    DNS_PORTS,
    build_lookups,
)
from capture.selectors import BadSelector, parse_pod
from capture.selectors import glob_regex as _glob_regex

PCAP_SUFFIXES = (".pcap", ".pcapng", ".cap")

#: Tables a Capture has (attributes, and views of ``Capture.sql``).
TABLES = ("messages", "transactions", "lookups", "connects", "execs", "processes", "pods",
          "cgroups")

def _as_paths(path_or_paths: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(path_or_paths, (str, Path)):
        return [Path(path_or_paths)]
    return [Path(p) for p in path_or_paths]


def _looks_like_pcap(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
        return False
    return magic in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1",
                     b"\xa1\xb2\x3c\x4d", b"\x0a\x0d\x0d\x0a")


def load(path_or_paths: str | Path | Iterable[str | Path], *,
         timeout_s: float = DEFAULT_TIMEOUT_S, skew_s: float = DEFAULT_SKEW_S,
         lookup_gap_s: float = DEFAULT_GAP_S, verify: bool = True,
         dns_ports: Sequence[int] = DNS_PORTS, work_dir: str | Path | None = None,
         on_damage: str = "raise", memory_limit: str | None = None,
         threads: int | None = None, scheduler: str | None = None) -> Capture:
    """Check and ingest one or more captures (directories or pcap/pcapng files).

    ``timeout_s``: a query with no response within this is a ``timeout`` transaction.
    ``skew_s``: a response may be stamped this much earlier than its query and still match.
    ``lookup_gap_s``: longest pause inside one resolver call (see ``analyze.reconstruct``).
    ``verify``: check every file's sha256 against the manifest (raises CaptureDamaged).
    ``dns_ports``: ports of DNS servers (for imports, and to tell roles when QR is unknown).
    ``work_dir``: where derived tables are cached (default ``$DNSTRAIL_WORK_DIR``, else
    ``$XDG_CACHE_HOME/dnstrail``). ``on_damage``: ``"raise"`` (CaptureDamaged) or
    ``"skip"`` (a damaged file is named in ``warnings`` and ``skipped_files``, the rest is
    analyzed). ``memory_limit`` (e.g. ``"1GB"``) and ``threads``: the DuckDB engine's.
    ``scheduler`` (``"tcp://HOST:PORT"``): ingest each capture on that Dask distributed
    cluster (``analyze.fleet``). A path may be an ``s3://bucket/prefix`` URL (fsspec/s3fs).
    """
    from analyze import fleet

    if on_damage not in ("raise", "skip"):
        raise ValueError("on_damage: 'raise' or 'skip'")
    given = [path_or_paths] if isinstance(path_or_paths, (str, Path)) else list(path_or_paths)
    if scheduler is not None or any(fleet.is_remote(p) for p in given):
        work = WorkDir.at(work_dir)
        ingested, notes = fleet.ingest_all(given, scheduler=scheduler, work=work,
                                           verify=verify, dns_ports=dns_ports,
                                           on_damage=on_damage)
    else:
        paths = _as_paths(given)
        check_local(paths)
        work = WorkDir.at(work_dir)
        ingested, notes = _ingest_local(paths, work=work, verify=verify,
                                        dns_ports=dns_ports, on_damage=on_damage)
    kept, combined = _combine(ingested, work)
    ctx = _Context(work=work, ingested=kept, timeout_s=timeout_s, skew_s=skew_s,
                   lookup_gap_s=lookup_gap_s, dns_ports=tuple(dns_ports),
                   memory_limit=memory_limit, threads=threads, notes=notes + combined)
    return Capture(ctx)


def _ingest_local(paths: list[Path], *, work: WorkDir, verify: bool, dns_ports: Sequence[int],
                  on_damage: str) -> tuple[list[tuple[Path, Any]], list[str]]:
    """Ingest local capture directories and pcaps (one pcap given twice is read once)."""
    from analyze.ingest import ingest, sha256_file

    ingested: list[tuple[Path, Any]] = []
    notes: list[str] = []
    pcaps: dict[str, Path] = {}
    for p in paths:
        if p.is_dir():
            ingested.append((p, ingest(p, work=work, verify=verify, dns_ports=dns_ports,
                                       on_damage=on_damage)))
            continue
        sha = sha256_file(p)
        if sha in pcaps:
            notes.append(same_pcap_note(str(p), str(pcaps[sha])))
            continue
        pcaps[sha] = p
        ingested.append((p, _ingest_pcap(p, work=work, dns_ports=dns_ports)))
    return ingested, notes


def same_pcap_note(label: str, first: str) -> str:
    """The note on a pcap given again (read once)."""
    return (f"{label}: the same pcap as {first} (identical SHA-256): read once, "
            "not counted twice")


def check_local(paths: list[Path]) -> None:
    """Every local path is a capture directory or a pcap (before anything is written)."""
    if not paths:
        raise CaptureNotFound("no capture given")
    for p in paths:
        if not p.exists():
            raise CaptureNotFound(f"{p}: no such capture directory or pcap file")
        if not p.is_dir() and not (p.suffix.lower() in PCAP_SUFFIXES or _looks_like_pcap(p)):
            raise NotACapture(f"{p}: not a dnstrail capture directory nor a pcap file")


class OverlappingCaptures(AnalyzeError):
    """two captures of one node overlap in time and hold the same messages: every count would double; give one of them, or captures that follow each other"""


#: Two recorder runs in one boot of a node have ``boot_time_ns`` this close (the realtime
#: clock's adjustments between them); two boots of a node are further apart than that.
_SAME_BOOT_NS = 1_000_000_000
#: A message of one capture whose twin (same process, thread, direction, vector index and
#: bytes) is in another capture of the node this close in time was recorded twice.
_TWIN_NS = 1_000_000


def _boot(manifest: dict[str, Any]) -> tuple[str, int] | None:
    """(host, boot_time_ns) of a recorded capture; None for an import (no node, no boot)."""
    host, boot = manifest.get("host"), manifest.get("boot_time_ns")
    if not isinstance(host, str) or not host or not isinstance(boot, int) \
            or isinstance(boot, bool):
        return None
    return host, boot


def _event_files(manifest: dict[str, Any]) -> frozenset[tuple[str, str]]:
    """The finished event files (name, sha256) a manifest lists (snapshots are rewritten at
    every rotation, so they differ between a capture and a later copy of it)."""
    from capture import schema

    return frozenset(
        (f["name"], str(f.get("sha256"))) for f in manifest.get("files") or []
        if isinstance(f, dict) and isinstance(f.get("name"), str)
        and schema.file_kind(f["name"]) in schema.EVENT_KINDS)


def _combine(pairs: list[tuple[Path, Any]], work: WorkDir) -> tuple[list[Any], list[str]]:
    """The ingested captures to read, each once, and a sentence for every input left out.

    * the same capture given twice (the same manifest, so the same evidence id, or the same
      ingest entry) is read once;
    * a capture whose event files all belong to another capture of the same node and boot (a
      copy taken while the recorder was still writing, then the finished capture, or a
      capture continued with ``--append``) is left out for the larger one;
    * two other captures of one node and boot whose messages overlap in time are refused
      (:class:`OverlappingCaptures`) when they share messages: a split or re-recorded capture
      would count those twice. Overlapping captures that share none (two recorders with
      different filters) are read together, and said so.
    """
    from analyze.ingest import sha256_file

    notes: list[str] = []
    kept: list[tuple[Path, Any, str]] = []
    seen: dict[str, Path] = {}
    for p, ing in pairs:
        manifest = p / "manifest.json"
        ident = sha256_file(manifest) if p.is_dir() and manifest.is_file() else ing.key
        twin = seen.get(ident) or seen.get(ing.key)
        if twin is not None:
            notes.append(f"{p}: the same capture as {twin} (evidence id {ident[:16]}...): "
                         "read once, not counted twice")
            continue
        seen[ident] = seen[ing.key] = p
        kept.append((p, ing, ident))
    # a capture contained in another of the same node and boot
    inside: set[int] = set()
    for i, (p, ing, _) in enumerate(kept):
        boot, files = _boot(ing.manifest), _event_files(ing.manifest)
        if boot is None or not files:
            continue
        for j, (q, other, _) in enumerate(kept):
            if i == j or j in inside or not _same_boot(boot, _boot(other.manifest)):
                continue
            theirs = _event_files(other.manifest)
            if files < theirs or (files == theirs and j < i):
                inside.add(i)
                notes.append(f"{p}: every event file of it is also in {q} (a capture of "
                             f"node {boot[0]} in the same boot): read {q} only, not counted "
                             "twice")
                break
    left = [(p, ing) for i, (p, ing, _) in enumerate(kept) if i not in inside]
    notes.extend(_check_overlaps(left, work))
    return [ing for _, ing in left], notes


def _same_boot(a: tuple[str, int] | None, b: tuple[str, int] | None) -> bool:
    return a is not None and b is not None and a[0] == b[0] and abs(a[1] - b[1]) < _SAME_BOOT_NS


def _check_overlaps(pairs: list[tuple[Path, Any]], work: WorkDir) -> list[str]:
    """Refuse captures of one node and boot that overlap and share messages; a sentence for
    those that overlap without sharing any."""
    groups: list[list[tuple[Path, Any]]] = []
    for p, ing in pairs:
        boot = _boot(ing.manifest)
        if boot is None or not ing.messages:
            continue
        for g in groups:
            if _same_boot(boot, _boot(g[0][1].manifest)):
                g.append((p, ing))
                break
        else:
            groups.append([(p, ing)])
    groups = [g for g in groups if len(g) > 1]
    if not groups:
        return []
    from analyze.relate import connect, files_sql, run

    notes: list[str] = []
    con = connect(work)
    try:
        cur = con.cursor()
        for group in groups:
            spans = []
            for p, ing in group:
                ((t0, t1),) = run(cur, "SELECT min(epoch_ns(ts)), max(epoch_ns(ts)) FROM "
                                       f"read_parquet({files_sql(ing.files('messages'))})")
                spans.append((p, ing, t0, t1))
            for a in range(len(spans)):
                for b in range(a + 1, len(spans)):
                    pa_, ia, a0, a1 = spans[a]
                    pb, ib, b0, b1 = spans[b]
                    if None in (a0, a1, b0, b1) or a1 < b0 or b1 < a0:
                        continue
                    lo, hi = max(a0, b0), min(a1, b1)
                    shared = _twins(cur, ia, ib, lo - _TWIN_NS, hi + _TWIN_NS)
                    window = (f"from {_clock(lo)} to {_clock(hi)} UTC")
                    node = ia.manifest.get("host")
                    if shared:
                        raise OverlappingCaptures(
                            f"{pa_} and {pb} are captures of node {node} that overlap {window} "
                            f"and share {shared:,} messages: every count would double; give "
                            "one of them, or captures that follow each other")
                    notes.append(f"{pa_} and {pb}: captures of node {node} that overlap "
                                 f"{window}; they share no message (recorded with different "
                                 "filters?), so both are read")
        cur.close()
    finally:
        con.close()
    return notes


def _twins(cur: Any, a: Any, b: Any, lo: int, hi: int) -> int:
    """Messages of ``b`` between ``lo`` and ``hi`` (ns) that have a twin in ``a``: the same
    process, thread, direction, vector index and bytes, stamped within ``_TWIN_NS``."""
    from analyze.relate import files_sql, run

    def side(ing: Any) -> str:
        return ("SELECT coalesce(tgid, -1) AS tgid, coalesce(tid, -1) AS tid, "
                "coalesce(direction, '') AS direction, coalesce(msg_index, 0) AS msg_index, "
                "hash(payload) AS h, epoch_ns(ts) AS t "
                f"FROM read_parquet({files_sql(ing.files('messages'))}) "
                f"WHERE epoch_ns(ts) BETWEEN {int(lo)} AND {int(hi)}")

    ((n,),) = run(cur, f"SELECT count(*) FROM ({side(b)}) y WHERE EXISTS (SELECT 1 FROM "
                       f"({side(a)}) x WHERE x.h = y.h AND x.tgid = y.tgid AND x.tid = y.tid "
                       "AND x.direction = y.direction AND x.msg_index = y.msg_index "
                       f"AND abs(x.t - y.t) <= {_TWIN_NS})")
    return int(n)


def _clock(ns: int) -> str:
    return pd.Timestamp(int(ns), unit="ns", tz="UTC").strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _ingest_pcap(path: Path, *, work: WorkDir, dns_ports: Sequence[int]) -> Any:
    from analyze.ingest import ingest
    from analyze.pcap import import_pcap

    tmp = Path(tempfile.mkdtemp(prefix="dnstrail-import-", dir=work.temp()))
    try:
        out = tmp / "capture"
        import_pcap(path, out, ports=tuple(dns_ports))
        # the import just wrote the hashes; checking them is cheap and keeps `verified` true
        return ingest(out, work=work, verify=True, dns_ports=dns_ports, label=str(path))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class _Context:
    """What every Capture derived from one ``load`` shares: the ingested captures, the
    matching parameters, the relate entry (once built) and a DuckDB connection."""

    work: WorkDir
    ingested: list[Any]
    timeout_s: float
    skew_s: float
    lookup_gap_s: float
    dns_ports: tuple[int, ...]
    memory_limit: str | None
    threads: int | None
    notes: list[str] = field(default_factory=list)
    _related: Any = None
    _con: Any = None
    _whole: Any = None

    @property
    def related(self) -> Any:
        if self._related is None:
            from analyze.relate import relate

            self._related = relate(self.ingested, work=self.work, timeout_s=self.timeout_s,
                                   skew_s=self.skew_s, lookup_gap_s=self.lookup_gap_s,
                                   dns_ports=self.dns_ports, memory_limit=self.memory_limit,
                                   threads=self.threads)
        return self._related

    def cursor(self) -> Any:
        """A cursor (its own temp views) on this context's DuckDB database."""
        from analyze.relate import connect

        if self._con is None:
            self._con = connect(self.work, memory_limit=self.memory_limit, threads=self.threads)
        return self._con.cursor()

    def rows(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """A (small) query's rows, on a cursor of its own."""
        from analyze.relate import run

        cur = self.cursor()
        try:
            return run(cur, sql, params)
        finally:
            cur.close()

    def arrow(self, sql: str, params: Sequence[Any] | None = None,
              tables: Mapping[str, pa.Table] | None = None) -> pa.Table:
        """A query's result as Arrow, on a cursor of its own (with ``tables`` registered
        on it by name)."""
        from analyze.relate import arrow

        cur = self.cursor()
        try:
            for name, table in (tables or {}).items():
                cur.register(name, table)
            return arrow(cur, sql, params)
        finally:
            cur.close()

    def whole(self) -> Capture:
        """The unfiltered Capture (its overview is computed once, for every filter)."""
        if self._whole is None:
            self._whole = Capture(self)
        return self._whole

    def base_sql(self, table: str, *, with_txn: bool = True) -> str:
        """The unfiltered query of a stage table, across every capture (``with_txn``:
        messages with their ``txn_id``, which needs the relate stage)."""
        from analyze.relate import files_sql, messages_sql, quote

        if table == "messages":
            if not with_txn:
                return messages_sql(self.ingested, self.work)
            rel = self.related
            return (f"SELECT m.*, t.txn_id FROM ({messages_sql(self.ingested, self.work)}) m "
                    f"LEFT JOIN read_parquet({quote(rel.file('message_txn'))}) t "
                    "USING (msg_id)")
        if table in ("transactions", "lookups"):
            return f"SELECT * FROM read_parquet({quote(self.related.file(table))})"
        parts = []
        for ing in self.ingested:
            files = ing.files(table) or [str(self.work.empty(table, stages.STAGES[table]))]
            parts.append(f"SELECT *, {quote(ing.node)} AS node, {quote(ing.evidence)} AS capture "
                         f"FROM read_parquet({files_sql(files)})")
        return " UNION ALL BY NAME ".join(f"({p})" for p in parts)


# --- time parsing for filters -----------------------------------------------------------

_REL = re.compile(r"^([+-])(\d+(?:\.\d*)?)(ms|s|m|h|d)?$")
_BARE = re.compile(r"^\d+(?:\.\d*)?(ms|s|m|h|d)$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_time(value: Any, start: pd.Timestamp | None,
               end: pd.Timestamp | None = None) -> pd.Timestamp:
    """An ISO time, a datetime/Timestamp, ``+10s`` / ``+2m`` / ``+500ms`` after ``start``, or
    ``-30s`` / ``-5m`` before ``end``. A bare duration (``10s``) is refused: it is not clear
    from which end it counts."""
    if isinstance(value, pd.Timestamp):
        ts = value
    elif isinstance(value, datetime):
        ts = pd.Timestamp(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        ts = pd.Timestamp(value, unit="s")
    elif isinstance(value, str):
        m = _REL.match(value.strip())
        if m:
            delta = timedelta(seconds=float(m.group(2)) * _UNIT[m.group(3)])
            if m.group(1) == "+":
                if start is None:
                    raise BadFilter(f"{value!r}: a relative time needs a capture with a start")
                return start + delta
            if end is None:
                raise BadFilter(f"{value!r}: a time before the end needs a capture with messages")
            return end - delta
        if _BARE.match(value.strip()):
            raise BadFilter(f"{value!r}: a duration needs a sign: +{value.strip()} after the "
                            f"capture start, -{value.strip()} before its end")
        try:
            ts = pd.Timestamp(value.strip())
        except ValueError:
            raise BadFilter(f"{value!r}: not an ISO time nor +N[ms|s|m|h|d]") from None
    else:
        raise BadFilter(f"{value!r}: not a time")
    if ts is pd.NaT:
        raise BadFilter(f"{value!r}: not a time")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def glob_regex(pattern: str) -> str:
    """A shell glob (``*``, ``?``, ``[abc]``, ``[!abc]``) as an RE2 pattern that must match
    the whole value (DuckDB's ``regexp_full_match``); ``capture.selectors.glob_regex``, the
    one definition ``record --pod`` uses too."""
    try:
        return _glob_regex(pattern)
    except BadSelector as exc:
        raise BadFilter(str(exc)) from None


#: Tables the filters narrow (the snapshots are kept whole: they describe, they are not events).
_FILTERED = ("messages", "transactions", "connects", "execs")


@dataclass(frozen=True)
class _Where:
    """The SQL conditions of a Capture's filters, per table (with their parameters)."""

    #: (tables, column, sql, params): applied to each of ``tables`` that has ``column``
    clauses: tuple[tuple[tuple[str, ...], str, str, tuple[Any, ...]], ...] = ()

    def add(self, tables: tuple[str, ...], column: str, sql: str, *params: Any) -> _Where:
        return _Where(self.clauses + ((tables, column, sql, params),))

    def uses(self, column: str) -> bool:
        return any(c == column for _, c, _, _ in self.clauses)

    def of(self, table: str) -> tuple[str, list[Any]]:
        parts: list[str] = []
        params: list[Any] = []
        for tables, column, sql, ps in self.clauses:
            if table in tables and column in _COLUMNS_OF[table]:
                parts.append(sql)
                params.extend(ps)
        return (" AND ".join(f"({p})" for p in parts) or "TRUE"), params


_COLUMNS_OF = {name: set(stages.STAGES[name].names) | {"node", "capture"}
               for name in ("connects", "execs", "processes", "pods", "cgroups")}
_COLUMNS_OF["messages"] = set(stages.MESSAGES.names) | {"node", "capture", "txn_id"}
_COLUMNS_OF["transactions"] = set(stages.TRANSACTIONS.names)
_COLUMNS_OF["lookups"] = set(stages.LOOKUPS.names)


class Capture:
    """One or more captures, their stage tables materialized on first use (docs/api.md).

    ``messages``, ``transactions``, ``lookups``, ``connects``, ``execs``, ``processes``,
    ``pods``, ``cgroups``: pandas DataFrames of the (filtered) rows. ``manifests``, ``lost``,
    ``warnings``, ``skipped_files``, ``verified`` and ``filters`` describe the evidence.
    """

    def __init__(self, ctx: _Context, where: _Where | None = None,
                 filters: dict[str, Any] | None = None,
                 tables: dict[str, str] | None = None) -> None:
        self._ctx = ctx
        self._where = where or _Where()
        #: engine tables holding this Capture's rows of some stage tables (``materialized``)
        self._tables: dict[str, str] = dict(tables or {})
        self.filters: dict[str, Any] = dict(filters or {})
        self._frames: dict[str, pd.DataFrame] = {}
        self._stats: dict[str, Any] | None = None
        self._lookups_path: Path | None = None

    # --- what the evidence says ------------------------------------------------------------

    @property
    def manifests(self) -> list[dict[str, Any]]:
        return [dict(i.manifest, path=i.evidence) for i in self._ctx.ingested]

    @property
    def lost(self) -> dict[str, int]:
        lost: dict[str, int] = {}
        for i in self._ctx.ingested:
            for cause, count in (i.manifest.get("lost") or {}).items():
                if isinstance(count, (int, float)):
                    lost[cause] = lost.get(cause, 0) + int(count)
        return lost

    @property
    def warnings(self) -> list[str]:
        """What ingest said about the evidence (files not listed, missing, damaged)."""
        return [w for i in self._ctx.ingested for w in i.warnings]

    @property
    def input_notes(self) -> list[str]:
        """Inputs left out because they repeat another (the same capture given twice, a copy
        contained in a later capture of the node), and captures of one node that overlap in
        time: one sentence each, shown with the completeness of every output."""
        return list(self._ctx.notes)

    @property
    def skipped_files(self) -> list[dict[str, str]]:
        """Damaged evidence files that were named and left out (``on_damage="skip"``)."""
        return [s for i in self._ctx.ingested for s in i.skipped]

    @property
    def verified(self) -> bool:
        """Whether every capture directory's files were checked against their SHA-256."""
        return all(i.verified for i in self._ctx.ingested)

    @property
    def timeout_s(self) -> float:
        return self._ctx.timeout_s

    @property
    def lookup_gap_s(self) -> float:
        return self._ctx.lookup_gap_s

    def __repr__(self) -> str:
        n = self.overview()["messages"]
        return (f"<Capture {len(self._ctx.ingested)} capture(s), {n} messages, "
                f"{self.count('transactions')} transactions, lost={sum(self.lost.values())}"
                + (f", filtered by {', '.join(self.filters)}" if self.filters else "") + ">")

    def query(self, sql: str, params: Sequence[Any] | None = None, *,
              tables: Mapping[str, pa.Table] | None = None) -> pa.Table:
        """Run one engine query (built from ``table_sql``) and return its result as Arrow:
        no views are made, so nothing is materialized but the result. ``tables``: Arrow
        tables the query reads by name (registered for this query only)."""
        return self._ctx.arrow(sql, params, tables)

    def query_rows(self, sql: str,
                   params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """``query`` for a small result, as Python tuples."""
        return self._ctx.rows(sql, params)

    def query_batches(self, sql: str, params: Sequence[Any] | None = None, *,
                      rows: int = 65536) -> Iterator[pa.RecordBatch]:
        """``query`` streamed: Arrow record batches of at most ``rows`` rows, fetched from
        the engine as they are consumed (for exports larger than memory)."""
        cur = self._ctx.cursor()
        try:
            rel = cur.sql(sql, params=list(params)) if params else cur.sql(sql)
            # DuckDB 2 names it to_arrow_reader, DuckDB 1 fetch_arrow_reader
            fetch = getattr(rel, "to_arrow_reader", None) or rel.fetch_arrow_reader
            yield from fetch(rows)
        finally:
            cur.close()

    @contextmanager
    def materialized(self, tables: Sequence[str] = ("transactions", "lookups",
                                                    "connects")) -> Iterator[Capture]:
        """This Capture with its rows of ``tables`` copied once into engine tables, for
        many queries in a row (the findings of one part of a capture): each then reads the
        copy, not the evidence's Parquet. The copies are dropped on leaving the block; the
        engine spills them to the work directory past its memory limit."""
        import uuid

        names: dict[str, str] = {}
        tag = uuid.uuid4().hex[:12]
        try:
            for table in tables:
                sql, params = self.table_sql(table)
                name = f"_part_{tag}_{table}"
                self._ctx.rows(f"CREATE TABLE {name} AS {sql}", params)
                names[table] = name
            yield Capture(self._ctx, self._where, self.filters, names)
        finally:
            for name in names.values():
                self._ctx.rows(f"DROP TABLE IF EXISTS {name}")

    def restricted(self, hashes: Sequence[int]) -> Capture:
        """This Capture narrowed to the transactions, lookups and connects whose identity
        hash (``analyze.findings.partition.identity_sql``) is one of ``hashes``: one part of
        the findings' partition plan. The snapshots and messages are left whole."""
        from analyze.findings.partition import identity_sql

        where = self._where
        for table in ("transactions", "lookups", "connects"):
            where = where.add((table,), "node",
                              f"{identity_sql(table)} IN (SELECT unnest(?::UBIGINT[]))",
                              [int(h) for h in hashes])
        return Capture(self._ctx, where, self.filters)

    # --- SQL --------------------------------------------------------------------------------

    def table_sql(self, table: str, *, with_txn: bool = True) -> tuple[str, list[Any]]:
        """The query (and its parameters) of one table with this Capture's filters."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}: one of {', '.join(TABLES)}")
        if table in self._tables:
            return f"SELECT * FROM {self._tables[table]}", []
        cond, params = self._where.of(table)
        if table == "lookups" and self.filters:
            from analyze.relate import quote

            path = quote(str(self._lookups_file()))
            return f"SELECT * FROM read_parquet({path}) WHERE {cond}", params
        base = self._ctx.base_sql(table, with_txn=with_txn or self._where.uses("txn_id"))
        return f"SELECT * FROM ({base}) WHERE {cond}", params

    def _lookups_file(self) -> Path:
        """The lookups rebuilt from this (filtered) Capture's transactions, as a Parquet
        file in the work directory's spill area (removed with the Capture). More client
        transactions than one in-memory build holds are grouped in the engine, as relate does
        (``analyze.lookups``)."""
        if self._lookups_path is None:
            import os
            import weakref

            import pyarrow.parquet as pq

            from analyze.lookups import lookups_sql

            fd, name = tempfile.mkstemp(prefix="lookups-", suffix=".parquet",
                                        dir=self._ctx.work.temp())
            os.close(fd)
            weakref.finalize(self, Path(name).unlink, missing_ok=True)
            if "lookups" not in self._frames and self._large_lookups():
                sql, params = self.table_sql("transactions")
                cur = self._ctx.cursor()
                try:
                    cur.execute(f"CREATE TEMP TABLE _lk_tx AS {sql}", params).fetchall()
                    lookups_sql(cur, "SELECT * FROM _lk_tx", name, gap_s=self.lookup_gap_s,
                                timeout_s=self.timeout_s)
                    cur.execute("DROP TABLE _lk_tx").fetchall()
                finally:
                    cur.close()
            else:
                table = pa.Table.from_pandas(self.lookups, preserve_index=False)
                table = pa.Table.from_arrays(
                    [c.cast(pa.string()) if pa.types.is_dictionary(c.type) else c
                     for c in table.columns], names=table.column_names)
                pq.write_table(declared_types(table, stages.LOOKUPS), name)
            self._lookups_path = Path(name)
        return self._lookups_path

    def _large_lookups(self) -> bool:
        """More client transactions after the filters than one in-memory lookups build."""
        from analyze import relate
        from analyze.lookups import CLIENT_ROWS

        sql, params = self.table_sql("transactions", with_txn=False)
        ((n,),) = self._ctx.rows(f"SELECT count(*) FROM ({sql}) WHERE {CLIENT_ROWS}", params)
        return int(n) > relate.LOOKUP_PART_ROWS

    def _cursor(self) -> Any:
        """A cursor with one temp view per table (this Capture's filtered rows)."""
        cur = self._ctx.cursor()
        for name in TABLES:
            if name == "lookups" and self.filters and "lookups" in self._frames:
                cur.register("lookups", self._frames["lookups"])
                continue
            sql, params = self.table_sql(name)
            if params:
                # views cannot hold parameters: materialize the (filtered) rows instead
                cur.execute(f"CREATE TEMP TABLE {name} AS {sql}", params).fetchall()
            else:
                cur.execute(f"CREATE TEMP VIEW {name} AS {sql}").fetchall()
        return cur

    def sql(self, query: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """Run ``query`` in DuckDB over this Capture's tables (views named like the
        attributes: ``messages``, ``transactions``, ``lookups``, ``connects``, ``execs``,
        ``processes``, ``pods``, ``cgroups``) and return the result as pandas."""
        from analyze.relate import arrow

        cur = self._cursor()
        try:
            table = arrow(cur, query, params)
        finally:
            cur.close()
        return to_pandas(table)

    def _arrow(self, table: str, columns: Sequence[str] | None = None) -> pa.Table:
        if table in ("transactions", "lookups") and self._where.of(table)[0] == "TRUE":
            # written in id order by relate: read as is, without the engine's buffers
            import pyarrow.parquet as pq

            path = self._ctx.related.file(table)
            names = columns or pq.read_schema(path).names
            return pq.read_table(path, columns=columns,
                                 read_dictionary=[c for c in names if c in _DICTIONARY])

        sql, params = self.table_sql(table)
        cols = "*" if columns is None else ", ".join(f'"{c}"' for c in columns)
        order = {"messages": "msg_id", "transactions": "txn_id", "lookups": "lookup_id"}.get(
            table)
        query = f"SELECT {cols} FROM ({sql})" + (f" ORDER BY {order}" if order else "")
        return declared_types(self._ctx.arrow(query, params), stages.STAGES[table])

    def _frame(self, table: str) -> pd.DataFrame:
        if table not in self._frames:
            if table in self._tables:
                order = {"transactions": " ORDER BY txn_id",
                         "lookups": " ORDER BY lookup_id"}.get(table, "")
                df = _pandas(declared_types(
                    self._ctx.arrow(f"SELECT * FROM {self._tables[table]}{order}"),
                    stages.STAGES[table]), table)
            elif table == "lookups" and self.filters and (
                    self._lookups_path is not None or self._large_lookups()):
                import pyarrow.parquet as pq

                df = _pandas(declared_types(pq.read_table(self._lookups_file()),
                                            stages.LOOKUPS), "lookups")
            elif table == "lookups" and self.filters:
                df = build_lookups(self.transactions, gap_s=self.lookup_gap_s,
                                   timeout_s=self.timeout_s)
            else:
                df = _pandas(self._arrow(table), table)
            self._frames[table] = df
        return self._frames[table]

    @property
    def messages(self) -> pd.DataFrame:
        """One row per DNS message (TCP reassembled), decoded and attributed."""
        return self._frame("messages")

    @property
    def transactions(self) -> pd.DataFrame:
        """One row per query/response exchange (``analyze.reconstruct``)."""
        return self._frame("transactions")

    @property
    def lookups(self) -> pd.DataFrame:
        """One row per resolver call."""
        return self._frame("lookups")

    @property
    def connects(self) -> pd.DataFrame:
        return self._frame("connects")

    @property
    def execs(self) -> pd.DataFrame:
        return self._frame("execs")

    @property
    def processes(self) -> pd.DataFrame:
        return self._frame("processes")

    @property
    def pods(self) -> pd.DataFrame:
        return self._frame("pods")

    @property
    def cgroups(self) -> pd.DataFrame:
        return self._frame("cgroups")

    def count(self, table: str) -> int:
        """Rows of a table (after the filters) without materializing it."""
        if table in self._frames:
            return len(self._frames[table])
        if table == "lookups" and self.filters and self._lookups_path is None:
            return len(self.lookups)
        sql, params = self.table_sql(table, with_txn=False)
        ((n,),) = self._ctx.rows(f"SELECT count(*) FROM ({sql})", params)
        return int(n)

    def overview(self) -> dict[str, Any]:
        """Messages, decode errors, truncated payloads, first and last message time and the
        nodes, computed in the engine (the messages are not materialized)."""
        if self._stats is None:
            sql, params = self.table_sql("messages", with_txn=False)
            ((n, err, trunc, t0, t1, nodes),) = self._ctx.rows(
                "SELECT count(*), count(error), count(*) FILTER (WHERE truncated), "
                "min(ts), max(ts), list(DISTINCT node ORDER BY node) "
                f"FROM ({sql})", params)
            self._stats = {
                "messages": int(n), "decode_errors": int(err), "truncated": int(trunc),
                "start": pd.Timestamp(t0).tz_convert("UTC") if t0 is not None else None,
                "end": pd.Timestamp(t1).tz_convert("UTC") if t1 is not None else None,
                "nodes": [x for x in (nodes or []) if x is not None]}
        return self._stats

    def transaction_counts(self) -> dict[str, int]:
        """Transactions, answered, timeouts, unsolicited, NXDOMAIN and SERVFAIL, counted in
        the engine (the transactions are not materialized)."""
        sql, params = self.table_sql("transactions")
        ((n, ans, to, uns, nx, sf),) = self._ctx.rows(
            "SELECT count(*), count(*) FILTER (WHERE status = 'answered'), "
            "count(*) FILTER (WHERE status = 'timeout'), "
            "count(*) FILTER (WHERE status = 'unsolicited'), "
            "count(*) FILTER (WHERE rcode_name = 'NXDOMAIN'), "
            "count(*) FILTER (WHERE rcode_name = 'SERVFAIL') "
            f"FROM ({sql})", params)
        return {"transactions": int(n), "answered": int(ans), "timeouts": int(to),
                "unsolicited": int(uns), "nxdomain": int(nx), "servfail": int(sf)}

    @property
    def errors(self) -> int:
        """Number of messages whose payload did not decode."""
        return int(self.overview()["decode_errors"])

    @property
    def start(self) -> pd.Timestamp | None:
        """Start of the capture: the earliest manifest start or message, whichever is first."""
        cands = []
        for m in self.manifests:
            if m.get("started_at"):
                try:
                    cands.append(parse_time(m["started_at"], None))
                except BadFilter:
                    pass
        first = self._ctx.whole().overview()["start"]
        if first is not None:
            cands.append(first)
        cands = [c for c in cands if c is not pd.NaT and pd.notna(c)]
        return min(cands) if cands else None

    # --- filters --------------------------------------------------------------------------

    def filter(self, *, pod: str | Sequence[str] | None = None,
               namespace: str | Sequence[str] | None = None,
               container: str | Sequence[str] | None = None,
               comm: str | Sequence[str] | None = None,
               pid: int | Sequence[int] | None = None,
               name: str | Sequence[str] | None = None,
               rcode: str | int | Sequence[str | int] | None = None,
               since: Any = None, until: Any = None,
               node: str | Sequence[str] | None = None,
               qname: str | Sequence[str] | None = None) -> Capture:
        """A new Capture holding only what matches every given filter (nothing is read yet).

        ``pod``, ``namespace``, ``container``, ``comm``, ``node`` and ``name`` (or ``qname``:
        the query name) are shell globs (or lists of them); ``comm`` matches the thread's name
        or its process's (``process``); ``pod`` also takes ``namespace/name`` and a pod UID
        (``capture.selectors``, as ``record --pod``); ``pid`` is a tgid; ``rcode`` a
        name (``NXDOMAIN``) or number, or ``TIMEOUT`` for unanswered transactions; ``since``
        and ``until`` ISO times or ``+10s`` / ``+2m`` / ``+1h`` / ``+1d`` from the capture
        start. Transactions are kept by their own columns; messages are kept with their
        transaction (so a filter on rcode keeps the query of an NXDOMAIN answer).
        """
        if name is not None and qname is not None:
            raise BadFilter("give name or qname, not both")
        name = qname if qname is not None else name
        where = self._where
        filters = dict(self.filters)
        start = self.start if any(isinstance(v, str) and v.strip().startswith("+")
                                  for v in (since, until)) else None
        end = self._ctx.whole().overview()["end"] if any(
            isinstance(v, str) and v.strip().startswith("-") for v in (since, until)) else None
        bounds: dict[str, pd.Timestamp] = {}
        if pod is not None:
            filters["pod"] = pod
            cond, params = _pod_sql(pod)
            where = where.add(_FILTERED, "pod", cond, *params)
        for col, pat in (("namespace", namespace), ("container", container),
                         ("node", node)):
            if pat is None:
                continue
            filters[col] = pat
            cond, params = _glob_sql(col, pat, lower=False)
            where = where.add(_FILTERED, col, cond, *params)
        if comm is not None:
            # the thread's name or its process's (dig's queries come from isc-net-0000)
            filters["comm"] = comm
            a, pa_ = _glob_sql("comm", comm, lower=False)
            b, pb = _glob_sql(stages.PROCESS_COLUMN, comm, lower=False)
            where = where.add(_FILTERED, "comm", f"({a} OR {b})", *pa_, *pb)
        if name is not None:
            filters["name"] = name
            cond, params = _glob_sql("qname", name, lower=True)
            where = where.add(("messages", "transactions"), "qname", cond, *params)
        if pid is not None:
            pids = [pid] if isinstance(pid, (int, np.integer, str)) else list(pid)
            try:
                values = [int(p) for p in pids]
            except (TypeError, ValueError):
                raise BadFilter(f"{pid!r}: a pid is a number") from None
            filters["pid"] = values
            where = where.add(_FILTERED, "tgid",
                              "coalesce(list_contains(?::BIGINT[], tgid::BIGINT), false)", values)
        for label, value in (("since", since), ("until", until)):
            if value is None:
                continue
            ts = parse_time(value, start, end)
            bounds[label] = ts
            if "since" in bounds and "until" in bounds and bounds["since"] > bounds["until"]:
                raise BadFilter(f"since {bounds['since'].isoformat()} is after until "
                                f"{bounds['until'].isoformat()}: nothing can match")
            filters[label] = ts
            op = ">=" if label == "since" else "<="
            # in nanoseconds: the stage tables keep the capture's nanosecond times
            where = where.add(_FILTERED, "ts", f"coalesce(epoch_ns(ts) {op} ?, false)",
                              int(ts.value))
        if rcode is not None:
            filters["rcode"] = rcode
            cond, params = _rcode_sql(rcode)
            where = where.add(("transactions",), "rcode", cond, *params)
            where = where.add(("messages",), "txn_id", "txn_id IN (SELECT txn_id FROM "
                              f"read_parquet(?) WHERE {cond})",
                              self._ctx.related.file("transactions"), *params)
        return Capture(self._ctx, where, filters)

    def by_pod(self) -> pd.DataFrame:
        """Per pod (or host process, by its name: ``process``, else the thread's ``comm``):
        transactions, NXDOMAIN, timeouts, names, latency."""
        cols = ["node", "namespace", "pod", "comm", "transactions", "nxdomain", "timeouts",
                "distinct_names", "median_latency_s"]
        sql, params = self.table_sql("transactions")
        query = (
            "SELECT coalesce(node, '') AS node, coalesce(namespace, '') AS namespace, "
            "coalesce(pod, '') AS pod, "
            "CASE WHEN coalesce(pod, '') = '' THEN coalesce(process, comm, '') ELSE '' END "
            "AS comm, "
            "count(*) AS transactions, "
            "count(*) FILTER (WHERE rcode_name = 'NXDOMAIN') AS nxdomain, "
            "count(*) FILTER (WHERE status = 'timeout') AS timeouts, "
            "count(DISTINCT qname) AS distinct_names, "
            "quantile_cont(latency_s, 0.5) AS median_latency_s "
            f"FROM ({sql}) GROUP BY ALL ORDER BY transactions DESC, node, namespace, pod, comm")
        out = self._ctx.arrow(query, params).to_pandas()
        return out[cols] if len(out) else pd.DataFrame(columns=cols)

    # --- findings and reports (other packages, imported on use) ---------------------------

    def findings(self, *, cache: bool = True, **kw: Any) -> list[Any]:
        """Findings of ``analyze.findings.find`` on this capture (keyword arguments are
        find's). They are kept in the work directory, keyed by the relate entry (so by the
        evidence's SHA-256s), the filters, the arguments (a baseline by its own key, an allow
        file by its SHA-256) and the detectors' source code: a second call with the same
        inputs reads them back. ``cache=False`` computes them afresh and stores nothing."""
        import json

        from analyze.cache import digest
        from analyze.findings import find
        from analyze.findings._common import Finding

        key = self._findings_key(kw) if cache else None
        if key is not None:
            info = self._ctx.work.lookup("findings", key)
            if info is not None:
                try:
                    docs = json.loads((self._ctx.work.entry("findings", key)
                                       / "findings.json").read_text())
                    return [Finding.from_dict(d) for d in docs]
                except (OSError, ValueError, TypeError):
                    pass  # a damaged entry is rebuilt
        found = find(self, **kw)
        # the findings as they are stored: a first and a second report render the same text
        docs = [f.to_dict() for f in found]
        if key is not None:
            try:
                tmp = self._ctx.work.building("findings", key)
                (tmp / "findings.json").write_text(json.dumps(docs, allow_nan=False))
                self._ctx.work.publish(tmp, "findings", key,
                                       {"findings": len(docs), "digest": digest(docs)})
            except (OSError, ValueError) as exc:
                if isinstance(exc, OSError):
                    raise self._ctx.work.error(exc) from None
                raise
        return [Finding.from_dict(d) for d in docs]

    def findings_frame(self, findings: Sequence[Any] | None = None, **kw: Any) -> pd.DataFrame:
        """The findings as a DataFrame, one row per finding, most severe first (then in the
        order ``findings`` gives them): ``kind``, ``severity``, ``subject`` (who:
        ``Finding.workload``), ``namespace``, ``pod``, ``container``, ``comm``, ``pid``,
        ``client``, ``domain`` (the name, else the registered domain), ``count`` and
        ``count_of`` (the first of the metrics ``FINDING_COUNT_METRICS`` the finding has, and
        its name; else its evidence rows and ``"evidence"``), ``summary`` (the explanation),
        ``metrics`` (a dict) and ``evidence`` (a list of dicts). ``findings``: the findings to
        show (by default ``self.findings(**kw)``)."""
        from analyze.findings._common import severity_rank

        found = list(self.findings(**kw) if findings is None else findings)
        rows = []
        for f in found:
            count_of = next((k for k in FINDING_COUNT_METRICS
                             if isinstance(f.metrics.get(k), (int, float))
                             and not isinstance(f.metrics.get(k), bool)), None)
            rows.append({
                "kind": f.kind, "severity": f.severity, "subject": f.workload,
                "namespace": f.namespace, "pod": f.pod, "container": f.container,
                "comm": f.comm, "pid": f.pid, "client": f.client,
                "domain": f.domain or f.registered_domain,
                "count": int(f.metrics[count_of]) if count_of else len(f.evidence),
                "count_of": count_of or "evidence",
                "summary": f.explanation, "metrics": f.metrics, "evidence": f.evidence,
                "_rank": -severity_rank(f.severity),
            })
        out = pd.DataFrame(rows, columns=[*_FINDING_COLUMNS, "_rank"])
        out = out.sort_values("_rank", kind="stable").drop(columns="_rank")
        out["pid"] = out["pid"].astype("Int64")
        out["count"] = out["count"].astype("int64")
        return out.reset_index(drop=True)

    def lookups_with_connects(self, within: float = 10.0, *,
                              unmatched: bool = False) -> pd.DataFrame:
        """Each lookup joined to the connects that followed it: a connect of the same
        process (else client address) to one of the lookup's answer addresses, at most
        ``within`` seconds after the answer, one row per (lookup, connect). The join is the
        one the dns_to_connect and new_domain_connect findings judge
        (``analyze.findings.connects.joined_connects``): a connect belongs to the latest
        earlier answer holding its address; connects to loopback, link-local, the capture's
        nameservers and port 53 are left out.

        Columns: the lookup's ``lookup_id``, ``ts``, ``node``, ``tgid``, ``comm``,
        ``process``, ``namespace``, ``pod``, ``container``, ``first_name``, ``final_name``,
        ``rcode_name``, ``answer_ips``; then ``answer`` (the address connected to, as the
        answer gave it), ``connect_ts``, ``connect_addr``, ``connect_port``, ``delay_ms``
        (answer to connect) and ``connect_result`` (``ok``, ``EINPROGRESS``,
        ``ECONNREFUSED`` ...: ``analyze.findings.connects.connect_result``). In time order
        of the connects. ``unmatched=True`` also keeps the lookups no connect followed (the
        connect columns null), in lookup order after them."""
        from analyze.findings.connects import connect_result, joined_connects

        if within < 0:
            raise BadFilter(f"within={within}: a window is zero seconds or more")
        lk = self.lookups[list(_LOOKUP_COLUMNS)]
        joined = joined_connects(self)
        pairs = pd.DataFrame(columns=["lookup_id", *_CONNECT_COLUMNS])
        if joined is not None and len(joined):
            hit = joined[joined["answer_ts"].notna()]
            delay = (hit["ts"] - hit["answer_ts"]).dt.total_seconds()
            hit = hit[delay <= within]
            ids = self.lookups[["lookup_id", "txn_ids"]].explode("txn_ids").dropna()
            ids = ids.rename(columns={"txn_ids": "txn_id"}).astype({"txn_id": "int64"})
            hit = hit.astype({"txn_id": "int64"}).merge(ids, on="txn_id", how="inner")
            pairs = pd.DataFrame({
                "lookup_id": hit["lookup_id"],
                "answer": hit["ip"].astype(str),
                "connect_ts": hit["ts"],
                "connect_addr": hit["dst_addr"].astype(str),
                "connect_port": hit["dst_port"].astype("Int64"),
                "delay_ms": ((hit["ts"] - hit["answer_ts"]).dt.total_seconds() * 1000)
                .round(3),
                "connect_result": [connect_result(None if pd.isna(v) else v)
                                   for v in hit["result"]],
            }).sort_values(["connect_ts", "lookup_id"], kind="stable")
        out = lk.merge(pairs, on="lookup_id", how="left" if unmatched else "inner")
        if unmatched:
            out = out.assign(_none=out["connect_ts"].isna()).sort_values(
                ["_none", "connect_ts", "lookup_id"], kind="stable").drop(columns="_none")
        out["connect_port"] = out["connect_port"].astype("Int64")
        out["delay_ms"] = out["delay_ms"].astype("float64")
        return out.reset_index(drop=True)

    def _findings_key(self, kw: dict[str, Any]) -> str | None:
        """The cache key of ``findings(**kw)``, or None when an argument cannot be keyed."""
        from analyze.cache import digest, source_digest
        from analyze.ingest import sha256_file

        args: dict[str, Any] = {}
        for name, value in sorted(kw.items()):
            if name == "progress":
                continue
            if name == "baseline" and value is not None:
                if not isinstance(value, Capture):
                    return None
                args[name] = [value._ctx.related.key, _keyable(value.filters)]
            elif name == "allow" and value is not None:
                try:
                    args[name] = sha256_file(Path(value))
                except OSError:
                    return None
            elif name == "kinds" and value is not None:
                args[name] = sorted(value)
            elif name == "settings" and value is not None:
                from analyze.findings.settings import Settings

                if not isinstance(value, Settings):
                    return None
                args[name] = {"values": {k: dict(v) for k, v in sorted(value.values.items())},
                              "allow": sorted(value.allow)}
            elif isinstance(value, (str, int, float, bool, type(None))):
                args[name] = value
            else:
                return None
        return digest({"stage": "findings", "relate": self._ctx.related.key,
                       "filters": _keyable(self.filters), "args": args,
                       "code": source_digest("analyze.findings", "analyze.reconstruct",
                                             "analyze.names")})

    def report(self, path: str | Path | None = None, format: str | None = None,
               **kw: Any) -> Any:
        """Render the findings with ``analyze.report.render`` (to ``path``, or returned)."""
        from analyze.report import render

        findings = kw.pop("findings", None)
        if findings is None:
            findings = self.findings()
        return render(self, findings, format, path, **kw)


#: The metrics ``Capture.findings_frame`` counts a finding by, the first one it has.
FINDING_COUNT_METRICS = ("queries", "lookups", "connects_after_answer", "connects")

_FINDING_COLUMNS = ("kind", "severity", "subject", "namespace", "pod", "container", "comm",
                    "pid", "client", "domain", "count", "count_of", "summary", "metrics",
                    "evidence")

#: The lookup columns of ``Capture.lookups_with_connects``, then the connect's.
_LOOKUP_COLUMNS = ("lookup_id", "ts", "node", "tgid", "comm", stages.PROCESS_COLUMN,
                   "namespace", "pod", "container", "first_name", "final_name", "rcode_name",
                   "answer_ips")
_CONNECT_COLUMNS = ("answer", "connect_ts", "connect_addr", "connect_port", "delay_ms",
                    "connect_result")


def _keyable(filters: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, pd.Timestamp) else v)
            for k, v in sorted(filters.items())}


def _pod_sql(pattern: str | Sequence[str]) -> tuple[str, list[Any]]:
    """``--pod``: a pod UID, a name glob or ``namespace/name`` (globs both), parsed as
    ``record --pod`` parses it (``capture.selectors.parse_pod``)."""
    pats = [pattern] if isinstance(pattern, str) else list(pattern)
    if not pats:
        raise BadFilter("pod: an empty list of patterns")
    parts: list[str] = []
    params: list[Any] = []
    for p in pats:
        try:
            sel = parse_pod(p)
        except BadSelector as exc:
            raise BadFilter(str(exc)) from None
        if sel.uid is not None:
            parts.append("lower(replace(pod_uid, '_', '-')) = ?")
            params.append(sel.uid)
            continue
        assert sel.name is not None
        c, pc_ = _glob_sql("pod", sel.name, lower=False)
        if sel.namespace is not None:
            a, pa_ = _glob_sql("namespace", sel.namespace, lower=False)
            c, pc_ = f"({a} AND {c})", pa_ + pc_
        parts.append(c)
        params.extend(pc_)
    return "coalesce(" + " OR ".join(parts) + ", false)", params


def _glob_sql(col: str, pattern: str | Sequence[str], *, lower: bool) -> tuple[str, list[Any]]:
    pats = [pattern] if isinstance(pattern, str) else list(pattern)
    if not pats:
        raise BadFilter(f"{col}: an empty list of patterns")
    regex = "|".join(f"(?:{glob_regex(p.lower() if lower else p)})" for p in pats)
    value = f"lower({col})" if lower else col
    return f"coalesce(regexp_full_match({value}, ?), false)", [regex]


def _rcode_sql(rcode: Any) -> tuple[str, list[Any]]:
    wanted = [rcode] if isinstance(rcode, (str, int)) else list(rcode)
    parts: list[str] = []
    params: list[Any] = []
    for w in wanted:
        if isinstance(w, str) and w.strip().lstrip("-").isdigit():
            w = int(w)
        if isinstance(w, (int, np.integer)) and not isinstance(w, bool):
            parts.append("rcode = ?")
            params.append(int(w))
        elif isinstance(w, str) and w.strip().upper() == "TIMEOUT":
            parts.append("status = 'timeout'")
        elif isinstance(w, str) and w.strip():
            from analyze.decode import RCODE_NAMES

            name = w.strip().upper()
            if name not in RCODE_NAMES.values() and not re.fullmatch(r"RCODE\d+", name):
                raise BadFilter(f"{w!r}: not an rcode: one of TIMEOUT, "
                                f"{', '.join(RCODE_NAMES.values())}, or a number")
            parts.append("rcode_name = ?")
            params.append(name)
        else:
            raise BadFilter(f"{w!r}: an rcode is a name (NXDOMAIN), a number or TIMEOUT")
    return "coalesce(" + " OR ".join(parts) + ", false)", params


__all__ = [
    "ATTR_COLUMNS",
    "TABLES",
    "BadFilter",
    "Capture",
    "CaptureDamaged",
    "CaptureNotFound",
    "CaptureTooNew",
    "NotACapture",
    "OverlappingCaptures",
    "glob_regex",
    "load",
    "parse_time",
]
