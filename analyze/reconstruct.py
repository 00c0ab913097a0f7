"""Roles, query/response matching and lookup grouping, vectorized over whole tables.

Matching follows what Zeek does for DNS, expressed as array operations instead of per-packet
state: messages are keyed by who talked to whom on which socket with which transaction id and
question, sorted by time inside each key, and cut into *segments*. A segment is a run of queries
ended by at most one response:

* queries then a response -> ``answered`` (every query but the first is a retransmission);
* queries and no response within ``timeout_s`` -> ``timeout`` (never dropped);
* a response with no query before it (or a second response) -> ``unsolicited``.

``ts`` of a transaction is the first transmission; ``latency_s`` is measured from the *last*
transmission sent before the response (as a resolver would: the earlier copies were lost or
slow), clipped at zero. Responses may carry a timestamp up to ``skew_s`` earlier than their
query (events from different CPUs, or a local server answering before the sender's syscall
returned): they are sorted as if ``skew_s`` later, so they still close the query's segment.
A query re-sent more than ``timeout_s`` after the previous copy starts a new transaction.
In packet captures, a byte-identical copy of the previous message of the same conversation
within 5 ms is the same packet seen on a second interface and is ignored (it keeps the
transaction's ``txn_id``).
Retransmissions are counted only when the copy has the same transaction id (and question) on
the same socket or 5-tuple; a resolver that retries with a fresh id (Go) makes a ``timeout``
transaction followed by a new one, and the lookup (below) counts both.

Lookups group the client transactions of one resolver call. Transactions of one process
(node + tgid; the client address for pcaps) are keyed by *base name*, the query name without
its longest search suffix, so a walk interleaved with other lookups of the same process (threads,
goroutines) stays together. Search suffixes come from the data: Kubernetes ones
(``<ns>.svc.<domain>`` for the pods' namespaces, ``svc.<domain>``, ``<domain>`` for every
cluster domain seen in a ``*.svc.*`` name, always ``cluster.local``) plus any ``s`` for which a
process asked ``x.s`` right next to ``x``. Inside a key a new lookup starts after ``gap_s`` of
idleness (a timed-out query stays active until ``timeout_s`` after its last copy), when another
name follows a name that answered with data (resolvers stop there), or when a name and type
that already had a final answer are asked again (the application asked again).
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from analyze.stages import ROLES

DNS_PORTS: tuple[int, ...] = (53,)
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_SKEW_S = 0.001
DEFAULT_GAP_S = 1.0
#: Identical wire copies closer than this are one packet seen on two interfaces.
DEFAULT_DUP_S = 0.005

_SIDE_OF_ROLE = {"client_query": "client", "client_response": "client",
                 "server_query": "server", "server_response": "server",
                 "query": "wire", "response": "wire"}

_NS = 1_000_000_000

#: Columns of ``transactions`` in order (docs/api.md).
TRANSACTION_COLUMNS = (
    "txn_id", "side", "status", "ts", "response_ts", "last_query_ts", "latency_s",
    "retransmissions", "query_msg_id", "response_msg_id", "client_addr", "client_port",
    "server_addr", "server_port", "protocol", "dns_id", "qname", "qtype", "registered_domain",
    "rcode", "rcode_name", "tc", "ancount", "answers", "answer_ips", "min_ttl", "node",
    "capture",
    "tgid", "tid", "comm", "process", "uid", "netns", "cgroup_id", "cgroup_path", "pod_uid",
    "namespace", "pod", "container", "container_id", "qos",
)
_FROM_QUERY = ("protocol", "dns_id", "qname", "qtype", "registered_domain", "node", "capture",
               "tgid", "tid", "comm", "process", "uid", "netns", "cgroup_id", "cgroup_path",
               "pod_uid", "namespace", "pod", "container", "container_id", "qos")
_FROM_RESPONSE = ("rcode", "rcode_name", "tc", "ancount", "answers", "answer_ips",
                  "min_ttl")

LOOKUP_COLUMNS = (
    "lookup_id", "ts", "end_ts", "node", "tgid", "comm", "process", "netns", "cgroup_id",
    "client_addr",
    "pod_uid", "namespace", "pod", "container", "container_id", "qos", "server_addr",
    "first_name", "final_name", "base_name", "names", "qtypes", "n_queries", "n_nxdomain",
    "n_timeouts", "n_retransmissions", "rcode_name", "answer_ips", "txn_ids",
)


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    if name in df.columns:
        return df[name]
    return pd.Series([None] * len(df), index=df.index, dtype=object)


def _in_ports(port: pd.Series, ports: Sequence[int]) -> np.ndarray:
    values = pd.to_numeric(port, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    return np.isin(values, np.asarray(ports, dtype="float64"))


def role_codes(messages: pd.DataFrame, dns_ports: Sequence[int] = DNS_PORTS) -> np.ndarray:
    """Index into ROLES of every message's role, -1 when it cannot be told."""
    qr = _col(messages, "qr")
    known = qr.notna().to_numpy()
    qr_val = qr.fillna(False).to_numpy(dtype=bool)
    to_dns = _in_ports(_col(messages, "dst_port"), dns_ports)
    from_dns = _in_ports(_col(messages, "src_port"), dns_ports)
    is_resp = np.where(known, qr_val, from_dns & ~to_dns)
    is_query = np.where(known, ~qr_val, to_dns & ~from_dns)
    direction = _col(messages, "direction")
    send = (direction == "send").fillna(False).to_numpy(dtype=bool)
    recv = (direction == "recv").fillna(False).to_numpy(dtype=bool)
    wire = ~(send | recv)
    return np.select(
        [send & is_query, recv & is_resp, recv & is_query, send & is_resp,
         wire & is_query, wire & is_resp],
        list(range(6)), default=-1).astype(np.int64)


def assign_roles(messages: pd.DataFrame, dns_ports: Sequence[int] = DNS_PORTS) -> pd.Series:
    """The role of every message (see docs/api.md), or null when it cannot be told.

    The QR bit says query or response; when the payload did not decode, the ports decide (the
    message went to a DNS port: query; came from one: response). ``direction`` says whose
    point of view: a process that sends a query is a client, one that receives it a server;
    rows without a direction (pcaps) are ``query``/``response`` seen on the wire.
    """
    codes = role_codes(messages, dns_ports)
    return pd.Series(pd.Categorical.from_codes(codes, categories=list(ROLES)),
                     index=messages.index, name="role")


def _codes(values: pd.Series | np.ndarray) -> tuple[np.ndarray, int]:
    if isinstance(values, pd.Series):
        codes, uniques = values.factorize(use_na_sentinel=True)
    else:
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64) + 1, len(uniques) + 1


class _Small:
    """Non-negative integers (NaN or negatives -1/-2 allowed as markers): combined with the
    other key parts by arithmetic, without a hash table."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = np.nan_to_num(np.asarray(values, dtype="float64"), nan=-3.0)

    def codes(self) -> tuple[np.ndarray, int]:
        top = int(self.values.max(initial=0)) if len(self.values) else 0
        return self.values.astype(np.int64) + 3, top + 4

    @staticmethod
    def fits(values: np.ndarray, limit: int = 2**31) -> bool:
        v = np.asarray(values, dtype="float64")
        return bool(np.nanmax(v, initial=0) < limit) and bool(np.nanmin(v, initial=0) >= -3)


def _combine_key(parts: Iterable[pd.Series | np.ndarray | _Small]) -> np.ndarray:
    key: np.ndarray | None = None
    size = 1
    for part in parts:
        codes, n = part.codes() if isinstance(part, _Small) else _codes(part)
        if key is None:
            key, size = codes, n
            continue
        if size * n >= 2**62:
            key, size = _codes(key)
        key = key * n + codes
        size *= n
    assert key is not None
    return key


def _ns(ts: pd.Series) -> np.ndarray:
    """Nanoseconds since the epoch as int64 (NaT -> min int64)."""
    return ts.to_numpy(dtype="datetime64[ns]").view("int64")


def _num(series: pd.Series) -> np.ndarray:
    return series.astype("Float64").to_numpy(dtype="float64", na_value=np.nan)


def _take(series: pd.Series, pos: np.ndarray, present: np.ndarray | None = None) -> pd.Series:
    """series values at positions ``pos`` (null where ``present`` is False)."""
    out = series.iloc[pos].reset_index(drop=True)
    if present is not None and not present.all():
        out = out.where(pd.Series(present))
    return out


def _wire_duplicates(order: np.ndarray, key: np.ndarray, ts: np.ndarray, is_resp: np.ndarray,
                     is_wire: np.ndarray, payload: pd.Series, window_ns: int) -> np.ndarray:
    """Mask (in ``order``) of wire messages that repeat the previous one byte for byte."""
    n = len(order)
    dup = np.zeros(n, dtype=bool)
    if n < 2 or not is_wire.any():
        return dup
    k, t, r, w = key[order], ts[order], is_resp[order], is_wire[order]
    cand = np.flatnonzero(w[1:] & (k[1:] == k[:-1]) & (r[1:] == r[:-1])
                          & ((t[1:] - t[:-1]) <= window_ns)) + 1
    if len(cand):
        here = payload.iloc[order[cand]].to_numpy(dtype=object)
        before = payload.iloc[order[cand - 1]].to_numpy(dtype=object)
        dup[cand[here == before]] = True
    return dup


def match_transactions(messages: pd.DataFrame, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                       skew_s: float = DEFAULT_SKEW_S, dup_s: float = DEFAULT_DUP_S,
                       dns_ports: Sequence[int] = DNS_PORTS) -> tuple[pd.DataFrame, np.ndarray]:
    """Match queries and responses of ``messages`` (with ``msg_id``).

    Returns the transactions table and, for every message row (in ``messages`` order), the
    ``txn_id`` it belongs to (-1 for messages with no role or no transaction id).
    """
    n_all = len(messages)
    txn_of_msg = np.full(n_all, -1, dtype=np.int64)
    if "role" in messages:
        role = messages["role"]
        if not (isinstance(role.dtype, pd.CategoricalDtype)
                and list(role.cat.categories) == list(ROLES)):
            role = pd.Series(pd.Categorical(role, categories=list(ROLES)))
        role_all = role.cat.codes.to_numpy().astype(np.int64)
    else:
        role_all = role_codes(messages, dns_ports)
    dns_id_all = _col(messages, "dns_id")
    eligible = np.flatnonzero((role_all >= 0) & dns_id_all.notna().to_numpy())
    if len(eligible) == 0:
        return _empty_transactions(), txn_of_msg

    everything = len(eligible) == n_all

    def col(name: str) -> pd.Series:
        if everything:
            return _col(messages, name).reset_index(drop=True)
        return _col(messages, name).iloc[eligible].reset_index(drop=True)

    role = role_all[eligible]
    is_resp = (role == 1) | (role == 3) | (role == 5)
    is_q = ~is_resp
    side_code = role // 2                       # 0 client, 1 server, 2 wire
    is_wire = side_code == 2
    is_server = side_code == 1
    src_addr, dst_addr = col("src_addr"), col("dst_addr")
    addr_codes, addr_uniques = pd.concat([src_addr, dst_addr], ignore_index=True).factorize()
    n = len(eligible)
    src_c, dst_c = addr_codes[:n], addr_codes[n:]
    client_c = np.where(is_q, src_c, dst_c)
    server_c = np.where(is_q, dst_c, src_c)
    src_port, dst_port = _num(col("src_port")), _num(col("dst_port"))
    client_port = np.where(is_q, src_port, dst_port)
    server_port = np.where(is_q, dst_port, src_port)

    # Identity of the conversation. Client side: the process's socket (sock_id, else fd),
    # whatever addresses the syscall showed. Server side: its socket and the client's
    # address, since one server socket talks to everyone. Wire: the 5-tuple.
    sock_id = col("sock_id")
    known = sock_id.notna().to_numpy()
    sock_codes, _ = _codes(sock_id)
    fd = _num(col("fd"))
    peer = is_wire | is_server
    tgid = _num(col("tgid"))

    def small(values: np.ndarray) -> _Small | np.ndarray:
        return _Small(values) if _Small.fits(values) else values

    key = _combine_key([
        col("node"), _Small(side_code),
        small(np.where(is_wire, -1, tgid)),
        _Small(np.where(is_wire | ~known, 0, sock_codes)),
        small(np.where(is_wire | known, -1, fd)),
        _Small(np.where(peer, client_c, -2)), _Small(np.where(peer, client_port, -1)),
        _Small(np.where(is_wire, server_c, -2)), _Small(np.where(is_wire, server_port, -1)),
        col("protocol"), _Small(_num(col("dns_id"))), col("qname"), col("qtype"),
    ])

    ts = _ns(col("ts"))
    skew = int(skew_s * _NS)
    order_all = np.lexsort((is_resp, np.where(is_resp, ts + skew, ts), key))
    # A packet capture taken on several interfaces (tcpdump -i any: the pod's veth and the
    # bridge) holds each packet twice: an identical copy of the previous message of the same
    # conversation within dup_s is a duplicate, not a retransmission or a second response.
    dup = _wire_duplicates(order_all, key, ts, is_resp, is_wire, col("payload"),
                           int(dup_s * _NS))
    order = order_all[~dup] if dup.any() else order_all
    n = len(order)
    k = key[order]
    t = ts[order]
    r = is_resp[order]
    timeout = int(timeout_s * _NS)
    new = np.ones(n, dtype=bool)
    if n > 1:
        same = k[1:] == k[:-1]
        gap = t[1:] - t[:-1]
        prev_r = r[:-1]
        new[1:] = (~same) | prev_r | (gap > timeout)
    seg = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], n) - 1
    has_r = r[ends]
    nq = ends - starts + 1 - has_r.astype(np.int64)
    first_q = order[starts]                 # positions among eligible rows
    last_q = order[np.where(has_r & (nq > 0), ends - 1, ends)]
    resp = order[ends]
    base = first_q  # the first query, or the response itself for an unsolicited one
    # number transactions in time order
    by_time = np.lexsort((first_q, ts[base]))
    rank = np.empty(len(starts), dtype=np.int64)
    rank[by_time] = np.arange(len(starts))
    if dup.any():
        seg_all = np.zeros(len(order_all), dtype=np.int64)
        seg_all[~dup] = seg
        last_kept = np.maximum.accumulate(np.where(~dup, np.arange(len(order_all)), 0))
        txn_of_msg[eligible[order_all]] = rank[seg_all[last_kept]]
    else:
        txn_of_msg[eligible[order]] = rank[seg]
    first_q, last_q, resp, base = first_q[by_time], last_q[by_time], resp[by_time], base[by_time]
    has_r, nq = has_r[by_time], nq[by_time]
    n_txn = len(starts)
    answered = (nq > 0) & has_r

    out: dict[str, Any] = {"txn_id": np.arange(n_txn, dtype=np.int64)}
    out["side"] = pd.Categorical.from_codes(side_code[base], ["client", "server", "wire"])
    out["status"] = pd.Categorical.from_codes(
        np.where(answered, 0, np.where(nq > 0, 1, 2)), ["answered", "timeout", "unsolicited"])
    ts_ser = col("ts")
    out["ts"] = _take(ts_ser, base)
    out["response_ts"] = _take(ts_ser, resp, has_r)
    out["last_query_ts"] = _take(ts_ser, last_q, nq > 0)
    lat = (ts[resp] - ts[last_q]) / _NS
    out["latency_s"] = np.where(answered, np.maximum(lat, 0.0), np.nan)
    out["retransmissions"] = np.maximum(nq - 1, 0)
    msg_id = col("msg_id").to_numpy()
    out["query_msg_id"] = pd.array(msg_id[base], dtype="Int64")
    out["query_msg_id"][nq == 0] = pd.NA
    out["response_msg_id"] = pd.array(msg_id[resp], dtype="Int64")
    out["response_msg_id"][~has_r] = pd.NA
    uniq = pd.Series(addr_uniques)
    cb, sb = client_c[base], server_c[base]
    out["client_addr"] = uniq.take(np.maximum(cb, 0)).reset_index(drop=True).where(
        pd.Series(cb >= 0))
    out["client_port"] = pd.array(client_port[base], dtype="Int64")
    out["server_addr"] = uniq.take(np.maximum(sb, 0)).reset_index(drop=True).where(
        pd.Series(sb >= 0))
    out["server_port"] = pd.array(server_port[base], dtype="Int64")
    for name in _FROM_QUERY:
        out[name] = _take(col(name), base)
    for name in _FROM_RESPONSE:
        out[name] = _take(col(name), resp, has_r)
    txns = pd.DataFrame(out)
    return txns[list(TRANSACTION_COLUMNS)], txn_of_msg


def _empty_transactions() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in TRANSACTION_COLUMNS})


# --- lookups -------------------------------------------------------------------------------

def _infer_suffixes(names: pd.Series, proc: np.ndarray, namespaces: set[str]
                    ) -> tuple[set[str], set[str]]:
    """Search suffixes: host ones seen right after their base name, and Kubernetes ones
    (``<ns>.svc.<domain>`` for known namespaces, ``svc.<domain>``, ``<domain>``).

    ``namespaces`` (in: the pods' namespaces) grows with every label ``L`` for which a
    process asked ``x.L.svc.<domain>`` and also ``x.svc.<domain>``, ``x.<domain>`` or ``x``.
    """
    uniq = pd.unique(names.dropna().to_numpy(dtype=object)).tolist()
    suffixes, domains = kubernetes_suffixes(uniq, set(uniq), namespaces)
    arr = names.to_numpy(dtype=object, na_value=None)
    if len(arr) > 1:
        a, b = arr[1:], arr[:-1]
        same = proc[1:] == proc[:-1]
        idx = np.flatnonzero(same & (a != b))
        for i in idx[:200_000]:          # bounded: inference needs only a sample
            x, y = a[i], b[i]
            if not isinstance(x, str) or not isinstance(y, str):
                continue
            if len(x) > len(y) and x.startswith(y + "."):
                suffixes.add(x[len(y) + 1:])
            elif len(y) > len(x) and y.startswith(x + "."):
                suffixes.add(y[len(x) + 1:])
            if len(suffixes) >= 256:
                break
    return suffixes, domains


def kubernetes_suffixes(names: Iterable[str], present: Container[str], namespaces: set[str]
                        ) -> tuple[set[str], set[str]]:
    """The Kubernetes search suffixes and cluster domains of ``_infer_suffixes`` from the
    distinct ``names`` (in first-seen order; only ``.svc.`` ones matter), ``present``
    answering whether a name was asked at all; ``namespaces`` grows as there."""
    suffixes: set[str] = set()
    domains: set[str] = {"cluster.local"}
    svc = [u for u in names if ".svc." in u]
    for name in svc[:100_000]:
        head, dom = name.rsplit(".svc.", 1)
        if dom and len(domains) < 16:
            domains.add(dom)
        if "." in head and dom:
            x, label = head.rsplit(".", 1)
            if (f"{x}.svc.{dom}" in present or f"{x}.{dom}" in present or x in present):
                namespaces.add(label)
    for dom in domains:
        for ns in namespaces:
            suffixes.add(f"{ns}.svc.{dom}")
        suffixes.add(f"svc.{dom}")
        suffixes.add(dom)
    return suffixes, domains


def _suffix_regex(suffixes: set[str]) -> str:
    alts: list[str] = []
    alts.extend(rf"\.{re.escape(s)}$" for s in sorted(suffixes, key=len, reverse=True))
    return "|".join(f"(?:{a})" for a in alts)


_NS_SVC = re.compile(r"^(?P<x>.+)\.(?P<ns>[^.]+)\.svc\.(?P<dom>.+)$")


def base_names(names: pd.Series, suffixes: set[str]) -> pd.Series:
    """``names`` with the longest search suffix removed (``x.ns.svc.cluster.local`` -> ``x``).

    A name that is nothing but a suffix stays as it is. ``x.ns.svc.<domain>`` is ambiguous
    when ``ns`` is a namespace: the base ``x`` with the suffix ``ns.svc.<domain>``, or the
    base ``x.ns`` with ``svc.<domain>`` (an application in another namespace asking for
    ``x.ns``). The second reading wins when ``x.ns`` with another search suffix was also
    asked (the walk ``x.ns.<mine>.svc.<domain>``, ``x.ns.svc.<domain>``).
    """
    if not suffixes:
        return names.copy()
    pattern = _suffix_regex(suffixes)
    codes, uniq = names.factorize(use_na_sentinel=True)
    if len(uniq) == 0:
        return names.copy()
    arr = pa.array(np.asarray(uniq, dtype=object), type=pa.string())
    stripped = pc.replace_substring_regex(arr, pattern=pattern, replacement="", max_replacements=1)
    stripped = pc.if_else(pc.equal(pc.utf8_length(stripped), 0), arr, stripped)
    values = stripped.to_pylist()
    # x -> how many names x.<ns>.svc.<domain> (ns a known namespace) were asked
    walked: dict[str, int] = {}
    matches: list[tuple[int, re.Match[str]]] = []
    for i, name in enumerate(arr.to_pylist()):
        if ".svc." not in name:
            continue
        m = _NS_SVC.match(name)
        if m and f"{m['ns']}.svc.{m['dom']}" in suffixes:
            matches.append((i, m))
            walked[m["x"]] = walked.get(m["x"], 0) + 1
    for i, m in matches:
        longer = f"{m['x']}.{m['ns']}"
        if walked.get(longer):
            values[i] = longer
    small = pd.array(values, dtype="str")
    return pd.Series(small.take(np.asarray(codes), allow_fill=True), index=names.index)


def build_lookups(transactions: pd.DataFrame, *, gap_s: float = DEFAULT_GAP_S,
                  timeout_s: float = DEFAULT_TIMEOUT_S,
                  suffixes: set[str] | None = None) -> pd.DataFrame:
    """Group client-side (and wire) transactions into resolver calls; see the module doc.
    ``suffixes``: the search suffixes to strip; by default inferred from ``transactions``.
    (``analyze.lookups`` applies the same rules in the engine, for any size.)
    (The garbage collector is left alone: the library changes no process-wide state.)"""
    return _build_lookups(transactions, gap_s=gap_s, timeout_s=timeout_s, suffixes=suffixes)


def _lookup_rows(transactions: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The client and wire transactions lookups are made of, their process code and their
    time (ns)."""
    keep = ((transactions["side"] != "server")
            & (transactions["status"] != "unsolicited")).to_numpy(dtype=bool)
    tx = transactions.loc[keep, [c for c in _LOOKUP_INPUT if c in transactions.columns]]
    tx = tx.reset_index(drop=True)
    wire = (tx["side"] == "wire").to_numpy()
    client_codes, _ = _codes(tx["client_addr"])
    proc = _combine_key([
        tx["node"], np.where(wire, -1, _num(tx["tgid"])), np.where(wire, client_codes, -1),
    ])
    return tx, proc, _ns(tx["ts"])


_LOOKUP_FIRST = ("ts", "node", "tgid", "comm", "process", "netns", "cgroup_id", "client_addr",
                 "pod_uid", "namespace", "pod", "container", "container_id", "qos",
                 "server_addr")
_LOOKUP_SORTED = ("qname", "qtype", "txn_id", "rcode_name", "status", "answer_ips",
                  "retransmissions")
_LOOKUP_INPUT = tuple(dict.fromkeys(
    _LOOKUP_FIRST + _LOOKUP_SORTED + ("side", "response_ts", "last_query_ts", "ancount", "tc")))


def _build_lookups(transactions: pd.DataFrame, *, gap_s: float,
                   timeout_s: float, suffixes: set[str] | None = None) -> pd.DataFrame:
    """Group client-side (and wire) transactions into resolver calls; see the module doc.

    Vectorized: transactions are keyed by process and base name (search suffix removed),
    sorted by time, and cut where the process was idle longer than ``gap_s`` (a timed-out
    query stays active until ``timeout_s`` after its last copy), where a *different* name
    follows a name that already answered with data (a resolver stops there), or where a
    name and type are asked again after a final answer (NOERROR/NXDOMAIN, not truncated):
    the application asked again.
    """
    tx, proc, ts = _lookup_rows(transactions)
    if tx.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in LOOKUP_COLUMNS})
    if suffixes is None:
        order0 = np.lexsort((tx["txn_id"].to_numpy(), ts, proc))
        namespaces = set(tx["namespace"].dropna().unique())
        suffixes, _ = _infer_suffixes(tx["qname"].iloc[order0], proc[order0], namespaces)
    base = base_names(tx["qname"], suffixes)
    base_codes, _ = _codes(base)
    name_codes, _ = _codes(tx["qname"])
    qtype_codes, _ = _codes(tx["qtype"])
    answered = (tx["status"] == "answered").to_numpy(dtype=bool)
    resp_ts = _ns(tx["response_ts"])
    end = np.where(answered, resp_ts, _ns(tx["last_query_ts"]) + int(timeout_s * _NS))
    has_data = (tx["ancount"].fillna(0).to_numpy(dtype="int64") > 0) & answered
    final = (answered & tx["rcode_name"].isin(("NOERROR", "NXDOMAIN")).to_numpy(dtype=bool)
             & ~tx["tc"].fillna(False).to_numpy(dtype=bool))

    # re-asked: the same name and type was finally answered before this query was sent
    n = len(tx)
    o2 = np.lexsort((ts, qtype_codes, name_codes, proc))
    reask = np.zeros(n, dtype=bool)
    if n > 1:
        same2 = ((proc[o2][1:] == proc[o2][:-1]) & (name_codes[o2][1:] == name_codes[o2][:-1])
                 & (qtype_codes[o2][1:] == qtype_codes[o2][:-1]))
        prev_final = np.where(final[o2][:-1], resp_ts[o2][:-1], np.iinfo(np.int64).max)
        reask[o2[1:]] = same2 & (prev_final < ts[o2][1:])

    key = proc * (int(base_codes.max()) + 1) + base_codes
    order = np.lexsort((tx["txn_id"].to_numpy(), ts, key))
    k, t = key[order], ts[order]
    nm, qt = name_codes[order], qtype_codes[order]
    new = np.ones(n, dtype=bool)
    if n > 1:
        same = k[1:] == k[:-1]
        end_o = end[order]
        ra = reask[order]
        big = np.iinfo(np.int64).max
        # a re-asked A and AAAA pair starts one lookup, not two
        prev_open = np.where(answered[order], resp_ts[order], big)[:-1] > t[1:]
        first_reask = ra[1:] & ~(ra[:-1] & (nm[1:] == nm[:-1]) & (qt[1:] != qt[:-1])
                                 & prev_open)
        new[1:] = ~same | first_reask
        # idle gaps (per lookup so far) and "another name after a data answer": the run of
        # the previous name got data before this query was sent
        lk = np.cumsum(new) - 1
        run_end = pd.Series(end_o).groupby(lk).cummax().to_numpy()
        idle = (t[1:] - run_end[:-1]) > int(gap_s * _NS)
        data_o = has_data[order]
        name_change = nm[1:] != nm[:-1]
        name_run = np.cumsum(np.concatenate(([True], ~same | name_change)))
        run_data = pd.Series(np.where(data_o, resp_ts[order], big)).groupby(
            name_run).cummin().to_numpy()
        stopped = name_change & (run_data[:-1] < t[1:])
        new[1:] |= idle | stopped
    starts = np.flatnonzero(new)
    bounds = np.append(starts, n)
    sx = tx[list(_LOOKUP_SORTED)].iloc[order].reset_index(drop=True)
    first = tx.iloc[order[starts]].reset_index(drop=True)

    out = pd.DataFrame({"lookup_id": np.arange(len(starts), dtype=np.int64)})
    out["ts"] = first["ts"]
    end_o = end[order]
    out["end_ts"] = pd.to_datetime(np.maximum.reduceat(end_o, starts), utc=True)
    for c in ("node", "tgid", "comm", "process", "netns", "cgroup_id", "client_addr",
              "pod_uid", "namespace", "pod", "container", "container_id", "qos",
              "server_addr"):
        out[c] = first[c]
    out["first_name"] = first["qname"]
    retr = sx["retransmissions"].to_numpy(dtype=np.int64)
    out["n_queries"] = np.add.reduceat(retr + 1, starts)
    out["n_nxdomain"] = np.add.reduceat(
        (sx["rcode_name"] == "NXDOMAIN").fillna(False).to_numpy(dtype=np.int64), starts)
    out["n_timeouts"] = np.add.reduceat(
        (sx["status"] == "timeout").to_numpy(dtype=np.int64), starts)
    out["n_retransmissions"] = np.add.reduceat(retr, starts)

    qn = sx["qname"].to_numpy(dtype=object, na_value=None).tolist()
    qtl = sx["qtype"].to_numpy(dtype=object, na_value=None).tolist()
    bl = base.iloc[order].to_numpy(dtype=object, na_value=None).tolist()
    tid = sx["txn_id"].to_numpy().tolist()
    ips = sx["answer_ips"].to_numpy(dtype=object)
    data = has_data[order]
    n_lk = len(starts)
    sizes = np.diff(bounds)
    lk_of_row = np.repeat(np.arange(n_lk), sizes)
    # the first transaction that answered with data ends the walk: its name is final
    first_data = np.minimum.reduceat(np.where(data, np.arange(n), n), starts)
    has_final = first_data < bounds[1:]
    pick = np.where(has_final, first_data, bounds[1:] - 1)
    rc_o = sx["rcode_name"].astype(object)
    st_o = (sx["status"] == "timeout").to_numpy(dtype=bool)
    rcode_l = np.where(st_o[pick] & ~has_final, "TIMEOUT",
                       rc_o.to_numpy(dtype=object)[pick]).tolist()
    final_code = np.where(has_final, nm[np.minimum(pick, n - 1)], -1)
    final_l = [qn[p] if h else None for p, h in zip(pick.tolist(), has_final.tolist())]
    # addresses of the final name (A and AAAA answers), in order, without repeats
    ips_l: list[list[str]] = [[] for _ in range(n_lk)]
    rows = np.flatnonzero(data & (nm == final_code[lk_of_row]))
    for i, j in zip(rows.tolist(), lk_of_row[rows].tolist()):
        v = ips[i]
        if isinstance(v, (list, tuple, np.ndarray)) and len(v):
            ips_l[j] = list(dict.fromkeys([*ips_l[j], *v])) if ips_l[j] else list(v)
    names_l: list[list[Any]] = []
    qtypes_l: list[list[Any]] = []
    txn_l: list[list[int]] = []
    base_l: list[Any] = []
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        if b - a == 1:
            names_l.append([qn[a]])
            qtypes_l.append([qtl[a]])
            txn_l.append([tid[a]])
            base_l.append(qn[a])
            continue
        names = list(dict.fromkeys(qn[a:b]))
        names_l.append(names)
        qtypes_l.append(list(dict.fromkeys(qtl[a:b])))
        txn_l.append(tid[a:b])
        base_l.append(bl[a] if len(names) > 1 else names[0])
    out["final_name"] = pd.array(final_l, dtype="str")
    out["base_name"] = pd.array(base_l, dtype="str")
    out["names"] = names_l
    out["qtypes"] = qtypes_l
    out["rcode_name"] = pd.array(rcode_l, dtype="str")
    out["answer_ips"] = ips_l
    out["txn_ids"] = txn_l
    out = out.sort_values(["ts", "lookup_id"], kind="stable").reset_index(drop=True)
    out["lookup_id"] = np.arange(len(out), dtype=np.int64)
    return out[list(LOOKUP_COLUMNS)]
