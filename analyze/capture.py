"""``load()`` and the ``Capture`` object: every table of one or more captures, analyzed.

``load`` reads capture directories (several nodes, or consecutive captures of one node) and
plain pcap/pcapng files (imported to a temporary directory with ``analyze.pcap.import_pcap``),
reassembles DNS over TCP, decodes every message, attributes it to a pod and matches queries with
responses. ``Capture.lookups`` (resolver calls) is computed on first use. See docs/api.md.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from analyze._frames import to_pandas
from analyze.attribute import ATTR_COLUMNS, attribute
from analyze.errors import AnalyzeError
from analyze.reconstruct import (
    DEFAULT_GAP_S,
    DEFAULT_SKEW_S,
    DEFAULT_TIMEOUT_S,
    DNS_PORTS,
    assign_roles,
    build_lookups,
    match_transactions,
    no_gc,
)
from capture import schema

PCAP_SUFFIXES = (".pcap", ".pcapng", ".cap")


class CaptureNotFound(AnalyzeError):
    """no such capture directory or pcap file"""


class NotACapture(AnalyzeError):
    """not a dnstrail capture directory (no manifest.json) nor a pcap file"""


class CaptureTooNew(AnalyzeError):
    """the capture was written by a newer dnstrail: upgrade dnstrail to read it"""


class CaptureDamaged(AnalyzeError):
    """a capture file does not match the sha256 in its manifest: the capture was modified or damaged (load(..., verify=False) reads it anyway)"""


class BadFilter(AnalyzeError):
    """a filter value could not be understood"""


_EVENT_TABLES = ("messages", "connects", "execs")
_SNAPSHOT_TABLES = ("processes", "cgroups", "pods")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class _Raw:
    """One capture directory, read but not analyzed."""

    path: str
    manifest: dict[str, Any]
    tables: dict[str, pa.Table]
    warnings: list[str]


def _read_dir(directory: Path, *, verify: bool, label: str | None = None) -> _Raw:
    try:
        manifest = schema.read_manifest(directory)
    except schema.FormatError as exc:
        msg = str(exc)
        if "newer than" in msg:
            raise CaptureTooNew(msg) from None
        raise NotACapture(msg) from None
    listed = {f.get("name"): f for f in manifest.get("files") or [] if isinstance(f, dict)}
    warnings: list[str] = []
    parts: dict[str, list[pa.Table]] = {k: [] for k in schema.SCHEMAS}
    names = [n for n in sorted(p.name for p in directory.iterdir())
             if schema.file_kind(n) is not None]
    for name in names:
        if name not in listed:
            warnings.append(f"{directory}: {name} is not listed in the manifest (read anyway)")
    # hash in worker threads while Parquet decodes (both release the GIL)
    with ThreadPoolExecutor(max_workers=2) as pool:
        digests = {name: pool.submit(_sha256, directory / name) for name in names
                   if verify and listed.get(name, {}).get("sha256")}
        for name in names:
            kind = schema.file_kind(name)
            assert kind is not None
            path = directory / name
            try:
                table = pq.read_table(path)
            except (OSError, pa.ArrowException) as exc:
                if name in digests and digests[name].result() != listed[name]["sha256"]:
                    raise CaptureDamaged(f"{path}: sha256 differs from the manifest: the file "
                                         "was modified or damaged") from None
                raise CaptureDamaged(f"{path}: unreadable Parquet file: {exc}") from None
            try:
                parts[kind].append(schema.conform(table, kind))
            except (schema.FormatError, pa.ArrowException) as exc:
                raise CaptureDamaged(f"{path}: {exc}") from None
        crashed = manifest.get("status") == "running"
        for name, digest in digests.items():
            if digest.result() != listed[name]["sha256"]:
                if crashed and schema.file_kind(name) in schema.SNAPSHOT_KINDS:
                    # a snapshot is rewritten at each rotation just before the manifest: a
                    # crash between the two renames leaves a newer, complete snapshot
                    warnings.append(f"{directory / name}: snapshot newer than its manifest "
                                    "entry (the capture did not finish); read anyway")
                    continue
                raise CaptureDamaged(f"{directory / name}: sha256 differs from the manifest: "
                                     "the file was modified or damaged (load(..., "
                                     "verify=False) reads it anyway)")
    for listed_name in listed:
        if isinstance(listed_name, str) and not (directory / listed_name).exists():
            warnings.append(f"{directory}: {listed_name} is listed in the manifest but missing")
    tables = {}
    for kind, tlist in parts.items():
        tables[kind] = (pa.concat_tables(tlist) if tlist
                        else schema.SCHEMAS[kind].empty_table())
    return _Raw(label or str(directory), manifest, tables, warnings)


def _read_pcap(path: Path, *, ports: Sequence[int]) -> _Raw:
    from analyze.pcap import import_pcap

    tmp = Path(tempfile.mkdtemp(prefix="dnstrail-import-"))
    try:
        out = tmp / "capture"
        import_pcap(path, out, ports=tuple(ports))
        return _read_dir(out, verify=False, label=str(path))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _as_paths(path_or_paths: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(path_or_paths, (str, Path)):
        return [Path(path_or_paths)]
    return [Path(p) for p in path_or_paths]


def _messages_table(raw: _Raw) -> pa.Table:
    """Reassembled messages of one capture (Arrow)."""
    from analyze.tcp import reassemble_table

    return reassemble_table(raw.tables["messages"])


def _repeat_categorical(labels: list[str], counts: list[int]) -> pd.Categorical:
    codes, uniques = pd.factorize(pd.Series(labels, dtype=object))
    return pd.Categorical.from_codes(np.repeat(codes, counts),
                                     categories=pd.Index(uniques, dtype=object))


def _decoded_messages(table: pa.Table) -> pd.DataFrame:
    from analyze.decode import decode_messages

    decoded = decode_messages(table.column("payload"))
    frame = to_pandas(table)
    decoded.index = frame.index
    out = pd.concat([frame, decoded[[c for c in decoded.columns
                                     if c not in frame.columns]]], axis=1)
    if "stream_error" in out.columns and out["stream_error"].notna().any():
        # a damaged TCP stream is a message error too (counted in `errors` and the report)
        out["error"] = out["error"].where(out["error"].notna(), out["stream_error"])
    return out


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f.columns)]
    if not frames:
        return pd.DataFrame()
    if len(frames) == 1:
        return frames[0].reset_index(drop=True)
    nonempty = [f for f in frames if len(f)] or frames[:1]
    return pd.concat(nonempty, ignore_index=True)


def load(path_or_paths: str | Path | Iterable[str | Path], *,
         timeout_s: float = DEFAULT_TIMEOUT_S, skew_s: float = DEFAULT_SKEW_S,
         lookup_gap_s: float = DEFAULT_GAP_S, verify: bool = True,
         dns_ports: Sequence[int] = DNS_PORTS) -> Capture:
    """Read and analyze one or more captures (directories or pcap/pcapng files).

    ``timeout_s``: a query with no response within this is a ``timeout`` transaction.
    ``skew_s``: a response may be stamped this much earlier than its query and still match.
    ``lookup_gap_s``: longest pause inside one resolver call (see ``analyze.reconstruct``).
    ``verify``: check every file's sha256 against the manifest (raises CaptureDamaged).
    ``dns_ports``: ports of DNS servers (for imports, and to tell roles when QR is unknown).
    """
    with no_gc(), _system_allocator():
        return _load(path_or_paths, timeout_s=timeout_s, skew_s=skew_s,
                     lookup_gap_s=lookup_gap_s, verify=verify, dns_ports=dns_ports)


@contextlib.contextmanager
def _system_allocator() -> Iterator[None]:
    """Allocate Arrow buffers with malloc while loading, then restore the caller's pool.

    The default pool (mimalloc) keeps freed pages of the many short-lived intermediates
    (Parquet pages, casts, takes): with malloc the 1M-message benchmark peaks ~80 MiB lower
    at the same speed. Buffers remember their pool, so switching back is safe.
    """
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def _load(path_or_paths: str | Path | Iterable[str | Path], *, timeout_s: float,
          skew_s: float, lookup_gap_s: float, verify: bool,
          dns_ports: Sequence[int]) -> Capture:
    paths = _as_paths(path_or_paths)
    if not paths:
        raise CaptureNotFound("no capture given")
    raws: list[_Raw] = []
    for p in paths:
        if not p.exists():
            raise CaptureNotFound(f"{p}: no such capture directory or pcap file")
        if p.is_dir():
            raws.append(_read_dir(p, verify=verify))
        elif p.suffix.lower() in PCAP_SUFFIXES or _looks_like_pcap(p):
            raws.append(_read_pcap(p, ports=dns_ports))
        else:
            raise NotACapture(f"{p}: not a dnstrail capture directory nor a pcap file")
    return _analyze(raws, timeout_s=timeout_s, skew_s=skew_s, lookup_gap_s=lookup_gap_s,
                    dns_ports=dns_ports)


def _looks_like_pcap(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
        return False
    return magic in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1",
                     b"\xa1\xb2\x3c\x4d", b"\x0a\x0d\x0d\x0a")


def _analyze(raws: list[_Raw], *, timeout_s: float, skew_s: float, lookup_gap_s: float,
             dns_ports: Sequence[int]) -> Capture:
    nodes = [str(r.manifest.get("host") or Path(r.path).name) for r in raws]
    frames: dict[str, list[pd.DataFrame]] = {k: [] for k in schema.SCHEMAS}
    msg_tables = []
    for raw, node in zip(raws, nodes):
        msg_tables.append(_messages_table(raw))
        for kind in schema.SCHEMAS:
            if kind == "messages":
                continue
            df = to_pandas(raw.tables[kind])
            df["node"] = node
            df["capture"] = raw.path
            frames[kind].append(df)
        raw.tables = {}                   # the Arrow copies are not needed any more
    tables = {k: _concat(v) for k, v in frames.items() if k != "messages"}
    counts = [t.num_rows for t in msg_tables]
    combined = pa.concat_tables(msg_tables, promote_options="permissive")
    del msg_tables
    messages = _decoded_messages(combined)
    del combined
    pa.default_memory_pool().release_unused()
    messages.insert(0, "msg_id", np.arange(len(messages), dtype=np.int64))
    # a handful of values over every row: categoricals
    messages["node"] = _repeat_categorical(nodes, counts)
    messages["capture"] = _repeat_categorical([r.path for r in raws], counts)
    messages["role"] = assign_roles(messages, dns_ports)
    cgroups, processes, pods = tables["cgroups"], tables["processes"], tables["pods"]
    messages = attribute(messages, cgroups, processes, pods, inplace=True)
    connects = attribute(tables["connects"], cgroups, processes, pods)
    execs = attribute(tables["execs"], cgroups, processes, pods)
    transactions, txn_of_msg = match_transactions(messages, timeout_s=timeout_s,
                                                  skew_s=skew_s, dns_ports=dns_ports)
    messages["txn_id"] = pd.arrays.IntegerArray(np.maximum(txn_of_msg, 0), txn_of_msg < 0)
    lost: dict[str, int] = {}
    for r in raws:
        for cause, count in (r.manifest.get("lost") or {}).items():
            if isinstance(count, (int, float)):
                lost[cause] = lost.get(cause, 0) + int(count)
    return Capture(
        messages=messages, transactions=transactions, connects=connects, execs=execs,
        processes=processes, pods=pods, cgroups=cgroups,
        manifests=[dict(r.manifest, path=r.path) for r in raws], lost=lost,
        warnings=[w for r in raws for w in r.warnings],
        timeout_s=timeout_s, lookup_gap_s=lookup_gap_s,
    )


# --- time parsing for filters -----------------------------------------------------------

_REL = re.compile(r"^\+(\d+(?:\.\d*)?)(ms|s|m|h)?$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_time(value: Any, start: pd.Timestamp | None) -> pd.Timestamp:
    """An ISO time, a datetime/Timestamp, or ``+10s`` / ``+2m`` / ``+500ms`` after ``start``."""
    if isinstance(value, pd.Timestamp):
        ts = value
    elif isinstance(value, datetime):
        ts = pd.Timestamp(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        ts = pd.Timestamp(value, unit="s")
    elif isinstance(value, str):
        m = _REL.match(value.strip())
        if m:
            if start is None:
                raise BadFilter(f"{value!r}: a relative time needs a capture with a start")
            return start + timedelta(seconds=float(m.group(1)) * _UNIT[m.group(2)])
        try:
            ts = pd.Timestamp(value.strip())
        except ValueError:
            raise BadFilter(f"{value!r}: not an ISO time nor +N[ms|s|m|h]") from None
    else:
        raise BadFilter(f"{value!r}: not a time")
    if ts is pd.NaT:
        raise BadFilter(f"{value!r}: not a time")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _glob_mask(series: pd.Series, pattern: str | Sequence[str]) -> pd.Series:
    """Rows whose value matches one of the shell globs (tested once per distinct value)."""
    pats = [pattern] if isinstance(pattern, str) else list(pattern)
    lower = series.name == "qname"
    regex = re.compile("|".join(f"(?:{fnmatch.translate(p.lower() if lower else p)})"
                                for p in pats))
    codes, uniques = series.factorize(use_na_sentinel=True)
    hits = np.array([regex.match(str(u)) is not None for u in uniques] + [False], dtype=bool)
    return pd.Series(hits[np.asarray(codes)], index=series.index)


def _values_mask(series: pd.Series, value: Any) -> pd.Series:
    vals = [value] if isinstance(value, (str, int)) else list(value)
    return series.isin(vals).fillna(False).astype(bool)


@dataclass
class Capture:
    """Everything ``load`` read, as pandas DataFrames (docs/api.md)."""

    messages: pd.DataFrame
    transactions: pd.DataFrame
    connects: pd.DataFrame
    execs: pd.DataFrame
    processes: pd.DataFrame
    pods: pd.DataFrame
    cgroups: pd.DataFrame
    manifests: list[dict[str, Any]]
    lost: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    timeout_s: float = DEFAULT_TIMEOUT_S
    lookup_gap_s: float = DEFAULT_GAP_S
    _lookups: pd.DataFrame | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return (f"<Capture {len(self.manifests)} capture(s), {len(self.messages)} messages, "
                f"{len(self.transactions)} transactions, lost={sum(self.lost.values())}>")

    @property
    def lookups(self) -> pd.DataFrame:
        """One row per resolver call (computed on first use)."""
        if self._lookups is None:
            self._lookups = build_lookups(self.transactions, gap_s=self.lookup_gap_s,
                                          timeout_s=self.timeout_s)
        return self._lookups

    @property
    def errors(self) -> int:
        """Number of messages whose payload did not decode."""
        if "error" not in self.messages:
            return 0
        return int(self.messages["error"].notna().sum())

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
        if len(self.messages):
            cands.append(self.messages["ts"].min())
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
               node: str | Sequence[str] | None = None) -> Capture:
        """A new Capture holding only what matches every given filter.

        ``pod``, ``namespace``, ``container``, ``comm``, ``node`` and ``name`` (the query name)
        are shell globs (or lists of them); ``pid`` is a tgid; ``rcode`` a name
        (``NXDOMAIN``) or number, or ``TIMEOUT`` for unanswered transactions; ``since`` and
        ``until`` ISO times or ``+10s`` from the capture start. Transactions are kept by
        their own columns; messages are kept with their transaction (so a filter on rcode
        keeps the query of an NXDOMAIN answer).
        """
        start = self.start
        t0 = parse_time(since, start) if since is not None else None
        t1 = parse_time(until, start) if until is not None else None
        globs = {"pod": pod, "namespace": namespace, "container": container, "comm": comm,
                 "node": node}

        def mask(df: pd.DataFrame, *, with_name: bool, with_rcode: bool) -> pd.Series:
            keep = pd.Series(True, index=df.index)
            if df.empty:
                return keep
            for col, pat in globs.items():
                if pat is not None and col in df:
                    keep &= _glob_mask(df[col], pat)
            if pid is not None and "tgid" in df:
                pids = [pid] if isinstance(pid, (int, np.integer, str)) else pid
                keep &= _values_mask(df["tgid"], [int(p) for p in pids])
            if with_name and name is not None and "qname" in df:
                keep &= _glob_mask(df["qname"], name)
            if with_rcode and rcode is not None:
                keep &= self._rcode_mask(df, rcode)
            if t0 is not None and "ts" in df:
                keep &= (df["ts"] >= t0).fillna(False)
            if t1 is not None and "ts" in df:
                keep &= (df["ts"] <= t1).fillna(False)
            return keep

        txns = self.transactions[mask(self.transactions, with_name=True, with_rcode=True)]
        msg_keep = mask(self.messages, with_name=True, with_rcode=False)
        if rcode is not None:
            msg_keep &= self.messages["txn_id"].isin(txns["txn_id"]).fillna(False).astype(bool)
        messages = self.messages[msg_keep]
        connects = self.connects[mask(self.connects, with_name=False, with_rcode=False)]
        execs = self.execs[mask(self.execs, with_name=False, with_rcode=False)]
        return replace(self, messages=messages, transactions=txns, connects=connects,
                       execs=execs, _lookups=None)

    @staticmethod
    def _rcode_mask(df: pd.DataFrame, rcode: Any) -> pd.Series:
        wanted = [rcode] if isinstance(rcode, (str, int)) else list(rcode)
        keep = pd.Series(False, index=df.index)
        for w in wanted:
            if isinstance(w, str) and w.strip().lstrip("-").isdigit():
                w = int(w)
            if isinstance(w, int):
                keep |= (df["rcode"] == w).fillna(False).astype(bool)
            elif w.upper() == "TIMEOUT" and "status" in df:
                keep |= df["status"] == "timeout"
            else:
                keep |= (df["rcode_name"] == w.upper()).fillna(False).astype(bool)
        return keep

    def by_pod(self) -> pd.DataFrame:
        """Per pod (or host process comm): transactions, NXDOMAIN, timeouts, names, latency."""
        tx = self.transactions
        if tx.empty:
            return pd.DataFrame(columns=["node", "namespace", "pod", "comm", "transactions",
                                         "nxdomain", "timeouts", "distinct_names",
                                         "median_latency_s"])
        def text(col: str) -> pd.Series:
            return tx[col].astype(object).where(tx[col].notna(), "")

        t = tx.assign(namespace=text("namespace"), pod=text("pod"), comm=text("comm"),
                      node=text("node"),
                      _nx=(tx["rcode_name"] == "NXDOMAIN").fillna(False),
                      _to=tx["status"] == "timeout")
        keys = ["node", "namespace", "pod"]
        t["comm"] = np.where(t["pod"] == "", t["comm"], "")
        g = t.groupby(keys + ["comm"], sort=True)
        out = pd.DataFrame({
            "transactions": g.size(), "nxdomain": g["_nx"].sum(), "timeouts": g["_to"].sum(),
            "distinct_names": g["qname"].nunique(), "median_latency_s": g["latency_s"].median(),
        }).reset_index()
        return out.sort_values("transactions", ascending=False).reset_index(drop=True)

    # --- findings and reports (other packages, imported on use) ---------------------------

    def findings(self, **kw: Any) -> list[Any]:
        """Findings of ``analyze.findings.find`` on this capture."""
        from analyze.findings import find

        return find(self, **kw)

    def report(self, path: str | Path | None = None, format: str | None = None,
               **kw: Any) -> Any:
        """Render the findings with ``analyze.report.render`` (to ``path``, or returned)."""
        from analyze.report import render

        findings = kw.pop("findings", None)
        if findings is None:
            findings = self.findings()
        return render(self, findings, format, path, **kw)


__all__ = [
    "ATTR_COLUMNS",
    "BadFilter",
    "Capture",
    "CaptureDamaged",
    "CaptureNotFound",
    "CaptureTooNew",
    "NotACapture",
    "load",
    "parse_time",
]
