"""Shared pieces of the detectors: the Finding type, severities, client identity, evidence rows."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from analyze.decode import record_text

#: Severities in increasing order.
SEVERITIES: tuple[str, ...] = ("info", "low", "medium", "high")

#: Most evidence rows one finding carries (the metrics hold the full counts).
MAX_EVIDENCE = 8


def severity_rank(severity: str) -> int:
    """0 for info .. 3 for high; ValueError for anything else."""
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        raise ValueError(f"unknown severity {severity!r} (one of {', '.join(SEVERITIES)})") from None


@dataclass
class Finding:
    """One thing worth a responder's attention, with the numbers and sample rows behind it."""

    kind: str
    severity: str
    explanation: str
    namespace: str | None = None
    pod: str | None = None
    container: str | None = None
    comm: str | None = None
    pid: int | None = None
    client: str | None = None
    domain: str | None = None
    registered_domain: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        severity_rank(self.severity)

    @property
    def rank(self) -> int:
        return severity_rank(self.severity)

    @property
    def workload(self) -> str:
        """A short human label of who did it: namespace/pod (container) comm[pid] or client."""
        parts = []
        if self.pod:
            pod = f"{self.namespace}/{self.pod}" if self.namespace else self.pod
            parts.append(pod + (f" ({self.container})" if self.container else ""))
        if self.comm and self.pid is not None:
            parts.append(f"{self.comm}[{self.pid}]")
        elif self.comm or self.pid is not None:
            parts.append(self.comm or f"pid {self.pid}")
        if self.client and not parts:
            parts.append(self.client)
        return " ".join(parts) or "-"

    def to_dict(self) -> dict[str, Any]:
        """The finding as plain JSON-safe Python values (see docs/report.md)."""
        return json_safe(asdict(self))  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Finding:
        """The finding ``to_dict`` gave (unknown keys are refused: TypeError)."""
        return cls(**doc)


def json_safe(value: Any) -> Any:
    """Convert numpy/pandas scalars, timestamps and bytes to JSON-safe values, recursively."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return escape_bytes(bytes(value))
    if isinstance(value, pd.Timestamp):
        return None if pd.isna(value) else value.isoformat()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, pd.Timedelta):
        return None if pd.isna(value) else value.total_seconds()
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy scalar
        try:
            return json_safe(value.item())
        except (ValueError, TypeError):
            pass
    if hasattr(value, "tolist"):  # numpy array
        return json_safe(value.tolist())
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def escape_bytes(data: bytes) -> str:
    """Bytes as text: printable ASCII kept, everything else as \\xNN."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in data)


def present(value: Any) -> bool:
    """True when a table cell holds a value (not None/NaN/NA/NaT)."""
    if value is None:
        return False
    if isinstance(value, (list, tuple, dict)):
        return True
    try:
        return not bool(pd.isna(value))
    except (TypeError, ValueError):
        return True


def clean(value: Any) -> Any:
    """A cell as a plain Python value or None."""
    if not present(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict, str, bytes)):
        try:
            return value.item()
        except (ValueError, TypeError):
            return value
    return value


def table(capture: Any, name: str) -> pd.DataFrame:
    """A table of the capture, or an empty DataFrame when the capture has none."""
    df = getattr(capture, name, None)
    if df is None or not isinstance(df, pd.DataFrame):
        return pd.DataFrame()
    return df


def col(df: pd.DataFrame, name: str) -> pd.Series:
    """A column, or an all-null column when the table lacks it (older or pcap captures)."""
    if name in df.columns:
        return df[name]
    return pd.Series([None] * len(df), index=df.index, dtype=object)


def identity(row: Any) -> dict[str, Any]:
    """The Finding identity fields taken from a table row (Series or dict)."""
    get = row.get if hasattr(row, "get") else (lambda k, d=None: d)
    pid = clean(get("tgid"))
    return {
        "namespace": clean(get("namespace")),
        "pod": clean(get("pod")),
        "container": clean(get("container")),
        "comm": clean(get("comm")),
        "pid": int(pid) if pid is not None else None,
        "client": clean(get("client_addr")) or clean(get("src_addr")),
    }


def answer_text(row: Any) -> str:
    """The outcome of a transaction in one line: rcode and the answer records' data."""
    status = clean(row.get("status"))
    if status == "timeout":
        return "TIMEOUT (no response)"
    rcode = clean(row.get("rcode_name")) or "?"
    answers = row.get("answers")
    parts: list[str] = []
    if isinstance(answers, Iterable) and not isinstance(answers, (str, bytes)):
        parts = [record_text(a) for a in list(answers)[:6]]
    return rcode + (": " + ", ".join(parts) if parts else "")


def txn_evidence(rows: pd.DataFrame, limit: int = MAX_EVIDENCE) -> list[dict[str, Any]]:
    """Sample transactions as evidence rows: ts, query, answer, server, latency."""
    out: list[dict[str, Any]] = []
    for _, r in rows.head(limit).iterrows():
        ev: dict[str, Any] = {
            "ts": clean(r.get("ts")),
            "query": f"{clean(r.get('qname'))} {clean(r.get('qtype')) or ''}".strip(),
            "answer": answer_text(r),
        }
        server = clean(r.get("server_addr"))
        if server is not None:
            ev["server"] = str(server)
        lat = clean(r.get("latency_s"))
        if lat is not None:
            ev["latency_ms"] = round(float(lat) * 1000, 3)
        out.append(ev)
    return out


def spread(rows: pd.DataFrame, limit: int = MAX_EVIDENCE) -> pd.DataFrame:
    """Up to `limit` rows spread evenly over the table (first, last and between)."""
    if len(rows) <= limit:
        return rows
    step = (len(rows) - 1) / (limit - 1)
    return rows.iloc[sorted({round(i * step) for i in range(limit)})]


def shannon(text: str) -> float:
    """Shannon entropy in bits per character of a string (0 for the empty string)."""
    if not text:
        return 0.0
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def seconds(delta: Any) -> float:
    if isinstance(delta, pd.Timedelta):
        return float(delta.total_seconds())
    return float(delta)


def quantile(values: Iterable[float], q: float) -> float | None:
    s = pd.Series(list(values), dtype=float).dropna()
    if s.empty:
        return None
    return float(s.quantile(q))


def group_identity(g: pd.DataFrame) -> dict[str, Any]:
    """Identity fields shared by every row of a group (a field differing between rows is None)."""
    ident: dict[str, Any] = {}
    for name in ("namespace", "pod", "container", "comm"):
        vals = col(g, name).dropna().unique()
        ident[name] = str(vals[0]) if len(vals) == 1 else None
    pids = col(g, "tgid").dropna().unique()
    ident["pid"] = int(pids[0]) if len(pids) == 1 else None
    clients = col(g, "client_addr").dropna().unique()
    if not len(clients):
        clients = col(g, "src_addr").dropna().unique()
    ident["client"] = str(clients[0]) if len(clients) == 1 else None
    return ident
