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
Retransmissions are counted only when the copy has the same transaction id (and question) on
the same socket or 5-tuple; a resolver that retries with a fresh id (Go) makes a ``timeout``
transaction followed by a new one, and the lookup (below) counts both.

Lookups group the client transactions of one resolver call: the same process (node + tgid;
the client address for pcaps), started less than ``gap_s`` after the previous transaction of
that process ended (a timed-out query ends ``timeout_s`` after its last copy), and asking for a
name related to the previous one: equal (A and AAAA in parallel, retries), or the same base
name with another search suffix. Search suffixes are inferred from the data: Kubernetes ones
(``<ns>.svc.<domain>``, ``svc.<domain>``, ``<domain>`` for every cluster domain seen in a
``*.svc.*`` name, and ``cluster.local``) plus any suffix ``s`` for which a process asked
``x.s`` right next to ``x``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

DNS_PORTS: tuple[int, ...] = (53,)
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_SKEW_S = 0.001
DEFAULT_GAP_S = 1.0

ROLES = ("client_query", "client_response", "server_query", "server_response", "query",
         "response")
_SIDE_OF_ROLE = {"client_query": "client", "client_response": "client",
                 "server_query": "server", "server_response": "server",
                 "query": "wire", "response": "wire"}

_NS = 1_000_000_000

#: Columns of ``transactions`` in order (docs/api.md).
TRANSACTION_COLUMNS = (
    "txn_id", "side", "status", "ts", "response_ts", "last_query_ts", "latency_s",
    "retransmissions", "query_msg_id", "response_msg_id", "client_addr", "client_port",
    "server_addr", "server_port", "protocol", "dns_id", "qname", "qtype", "registered_domain",
    "rcode", "rcode_name", "tc", "answers", "answer_ips", "min_ttl", "node", "capture",
    "tgid", "tid", "comm", "uid", "netns", "cgroup_id", "cgroup_path", "pod_uid",
    "namespace", "pod", "container", "container_id", "qos",
)
_FROM_QUERY = ("protocol", "dns_id", "qname", "qtype", "registered_domain", "node", "capture",
               "tgid", "tid", "comm", "uid", "netns", "cgroup_id", "cgroup_path", "pod_uid",
               "namespace", "pod", "container", "container_id", "qos")
_FROM_RESPONSE = ("rcode", "rcode_name", "tc", "answers", "answer_ips", "min_ttl")

LOOKUP_COLUMNS = (
    "lookup_id", "ts", "end_ts", "node", "tgid", "comm", "netns", "cgroup_id", "client_addr",
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


def assign_roles(messages: pd.DataFrame, dns_ports: Sequence[int] = DNS_PORTS) -> pd.Series:
    """The role of every message (see docs/api.md), or None when it cannot be told.

    The QR bit says query or response; when the payload did not decode, the ports decide (the
    message went to a DNS port: query; came from one: response). ``direction`` says whose
    point of view: a process that sends a query is a client, one that receives it a server;
    rows without a direction (pcaps) are ``query``/``response`` seen on the wire.
    """
    n = len(messages)
    qr = _col(messages, "qr")
    known = qr.notna().to_numpy()
    qr_val = qr.fillna(False).to_numpy(dtype=bool)
    to_dns = _in_ports(_col(messages, "dst_port"), dns_ports)
    from_dns = _in_ports(_col(messages, "src_port"), dns_ports)
    is_resp = np.where(known, qr_val, from_dns & ~to_dns)
    is_query = np.where(known, ~qr_val, to_dns & ~from_dns)
    direction = _col(messages, "direction").astype(object).to_numpy()
    send = direction == "send"
    recv = direction == "recv"
    wire = ~(send | recv)
    role = np.select(
        [send & is_query, recv & is_resp, recv & is_query, send & is_resp,
         wire & is_query, wire & is_resp],
        list(range(6)), default=-1)
    labels = np.array(list(ROLES) + [None], dtype=object)
    return pd.Series(labels[role] if n else np.array([], dtype=object), index=messages.index,
                     dtype=object, name="role")


def _codes(values: pd.Series | np.ndarray) -> tuple[np.ndarray, int]:
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    return codes.astype(np.int64) + 1, len(uniques) + 1


def _combine_key(parts: Iterable[pd.Series | np.ndarray]) -> np.ndarray:
    key: np.ndarray | None = None
    size = 1
    for part in parts:
        codes, n = _codes(part)
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


def match_transactions(messages: pd.DataFrame, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                       skew_s: float = DEFAULT_SKEW_S) -> tuple[pd.DataFrame, np.ndarray]:
    """Match queries and responses of ``messages`` (with ``role`` and ``msg_id``).

    Returns the transactions table and, for every message row (in ``messages`` order), the
    ``txn_id`` it belongs to (-1 for messages with no role or no transaction id).
    """
    n_all = len(messages)
    txn_of_msg = np.full(n_all, -1, dtype=np.int64)
    role = messages["role"].to_numpy(dtype=object)
    dns_id = _col(messages, "dns_id")
    eligible = np.flatnonzero(pd.notna(role) & dns_id.notna().to_numpy())
    if len(eligible) == 0:
        return _empty_transactions(), txn_of_msg

    m = messages.iloc[eligible]
    role_e = role[eligible]
    is_resp = np.isin(role_e, ("client_response", "server_response", "response"))
    is_q = ~is_resp
    side = pd.Series(role_e).map(_SIDE_OF_ROLE).to_numpy(dtype=object)
    src_addr = _col(m, "src_addr").to_numpy(dtype=object)
    dst_addr = _col(m, "dst_addr").to_numpy(dtype=object)
    src_port = _col(m, "src_port").astype("Int64").to_numpy(dtype="float64", na_value=np.nan)
    dst_port = _col(m, "dst_port").astype("Int64").to_numpy(dtype="float64", na_value=np.nan)
    client_addr = np.where(is_q, src_addr, dst_addr)
    server_addr = np.where(is_q, dst_addr, src_addr)
    client_port = np.where(is_q, src_port, dst_port)
    server_port = np.where(is_q, dst_port, src_port)

    # Identity of the conversation. Client side: the process's socket (sock_id, else fd),
    # whatever addresses the syscall showed. Server side: its socket and the client's
    # address, since one server socket talks to everyone. Wire: the 5-tuple.
    is_wire = side == "wire"
    is_server = side == "server"
    tgid = _col(m, "tgid").astype("Int64").to_numpy(dtype="float64", na_value=np.nan)
    sock_id = _col(m, "sock_id")
    fd = _col(m, "fd").astype("Int64").to_numpy(dtype="float64", na_value=np.nan)
    # sock_id when known, else the fd (negated so the two never collide)
    sock_key = np.where(sock_id.notna().to_numpy(), sock_id.astype(object).to_numpy(),
                        -(fd + 2))
    peer_addr = np.where(is_wire, client_addr, np.where(is_server, client_addr, None))
    peer_port = np.where(is_wire | is_server, client_port, np.nan)
    wire_server = np.where(is_wire, server_addr, None)
    wire_sport = np.where(is_wire, server_port, np.nan)
    key = _combine_key([
        _col(m, "node").to_numpy(dtype=object), side, np.where(is_wire, np.nan, tgid),
        np.where(is_wire, None, sock_key), peer_addr, peer_port, wire_server,
        wire_sport, _col(m, "protocol").astype(object).to_numpy(),
        dns_id.iloc[eligible].astype("int64").to_numpy(),
        _col(m, "qname").to_numpy(dtype=object), _col(m, "qtype").to_numpy(dtype=object),
    ])

    ts = _ns(m["ts"])
    skew = int(skew_s * _NS)
    order = np.lexsort((is_resp, np.where(is_resp, ts + skew, ts), key))
    k = key[order]
    t = ts[order]
    r = is_resp[order]
    n = len(order)
    timeout = int(timeout_s * _NS)
    new = np.ones(n, dtype=bool)
    if n > 1:
        same = k[1:] == k[:-1]
        gap = t[1:] - t[:-1]
        prev_r = r[:-1]
        cur_r = r[1:]
        cut = (~same) | (~cur_r & prev_r) | (cur_r & prev_r) | (gap > timeout)
        new[1:] = cut
    seg = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], n) - 1
    has_r = r[ends]
    nq = ends - starts + 1 - has_r.astype(np.int64)
    txn_of_msg[eligible[order]] = seg

    first_q = order[starts]                 # positions in m (eligible order)
    last_q = order[np.where(has_r, ends - 1, ends)]
    resp = order[ends]
    n_txn = len(starts)
    answered = (nq > 0) & has_r
    status = np.where(answered, "answered", np.where(nq > 0, "timeout", "unsolicited"))
    base = first_q  # the first query, or the response itself for an unsolicited one

    out: dict[str, Any] = {"txn_id": np.arange(n_txn, dtype=np.int64)}
    out["side"] = side[base]
    out["status"] = status.astype(object)
    ts_ser = m["ts"]
    q_ts = ts_ser.iloc[base].reset_index(drop=True)
    out["ts"] = q_ts
    resp_ts = ts_ser.iloc[resp].reset_index(drop=True)
    resp_ts[~has_r] = pd.NaT
    out["response_ts"] = resp_ts
    lq_ts = ts_ser.iloc[last_q].reset_index(drop=True)
    lq_ts[nq == 0] = pd.NaT
    out["last_query_ts"] = lq_ts
    lat = (ts[resp] - ts[last_q]) / _NS
    out["latency_s"] = np.where(answered, np.maximum(lat, 0.0), np.nan)
    out["retransmissions"] = np.maximum(nq - 1, 0)
    msg_id = m["msg_id"].to_numpy()
    out["query_msg_id"] = pd.array(np.where(nq > 0, msg_id[base], 0), dtype="Int64")
    out["query_msg_id"][nq == 0] = pd.NA
    out["response_msg_id"] = pd.array(np.where(has_r, msg_id[resp], 0), dtype="Int64")
    out["response_msg_id"][~has_r] = pd.NA
    out["client_addr"] = client_addr[base]
    out["client_port"] = pd.array(client_port[base], dtype="Int64")
    out["server_addr"] = server_addr[base]
    out["server_port"] = pd.array(server_port[base], dtype="Int64")
    for name in _FROM_QUERY:
        out[name] = _col(m, name).iloc[base].reset_index(drop=True)
    for name in _FROM_RESPONSE:
        col = _col(m, name).iloc[resp].reset_index(drop=True)
        if not has_r.all():
            col = col.where(pd.Series(has_r), None if col.dtype == object else pd.NA)
        out[name] = col
    txns = pd.DataFrame(out)
    txns = txns.sort_values(["ts", "txn_id"], kind="stable").reset_index(drop=True)
    # Renumber so txn_id follows time; keep the per-message map consistent.
    remap = np.empty(n_txn, dtype=np.int64)
    remap[txns["txn_id"].to_numpy()] = np.arange(n_txn)
    txns["txn_id"] = np.arange(n_txn, dtype=np.int64)
    hit = txn_of_msg >= 0
    txn_of_msg[hit] = remap[txn_of_msg[hit]]
    return txns[list(TRANSACTION_COLUMNS)], txn_of_msg


def _empty_transactions() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in TRANSACTION_COLUMNS})


# --- lookups -------------------------------------------------------------------------------

def _infer_suffixes(names: np.ndarray, same_proc: np.ndarray) -> tuple[set[str], set[str]]:
    """Search suffixes seen next to their base name, and cluster domains."""
    suffixes: set[str] = set()
    domains: set[str] = {"cluster.local"}
    for name in pd.unique(names):
        if isinstance(name, str) and ".svc." in name:
            dom = name.rsplit(".svc.", 1)[1]
            if dom:
                domains.add(dom)
    if len(names) > 1:
        a, b = names[1:], names[:-1]
        idx = np.flatnonzero(same_proc & (a != b))
        for i in idx[:200_000]:          # bounded: inference needs only a sample
            x, y = a[i], b[i]
            if not isinstance(x, str) or not isinstance(y, str):
                continue
            if len(x) > len(y) and x.startswith(y + "."):
                suffixes.add(x[len(y) + 1:])
            elif len(y) > len(x) and y.startswith(x + "."):
                suffixes.add(y[len(x) + 1:])
    return suffixes, domains


def candidate_bases(name: str, suffixes: set[str], domains: set[str]) -> frozenset[str]:
    """Names the application may have asked for when ``name`` went on the wire."""
    out = {name}
    for dom in domains:
        tail = "." + dom
        if not name.endswith(tail):
            continue
        head = name[: -len(tail)]
        out.add(head)
        if head.endswith(".svc"):
            out.add(head[:-4])
            ns_head = head[:-4]
            if "." in ns_head:
                out.add(ns_head.rsplit(".", 1)[0])
    for suf in suffixes:
        tail = "." + suf
        if name.endswith(tail) and len(name) > len(tail):
            out.add(name[: -len(tail)])
    out.discard("")
    return frozenset(out)


def build_lookups(transactions: pd.DataFrame, *, gap_s: float = DEFAULT_GAP_S,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> pd.DataFrame:
    """Group client-side (and wire) transactions into resolver calls; see the module doc."""
    tx = transactions[(transactions["side"] != "server")
                      & (transactions["status"] != "unsolicited")]
    if tx.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in LOOKUP_COLUMNS})
    wire = (tx["side"] == "wire").to_numpy()
    proc = _combine_key([
        tx["node"].to_numpy(dtype=object),
        np.where(wire, np.nan, tx["tgid"].astype("Int64").to_numpy("float64", na_value=np.nan)),
        np.where(wire, tx["client_addr"].to_numpy(dtype=object), None),
    ])
    ts = _ns(tx["ts"])
    order = np.lexsort((tx["txn_id"].to_numpy(), ts, proc))
    tx = tx.iloc[order].reset_index(drop=True)
    proc = proc[order]
    ts = ts[order]
    answered = (tx["status"] == "answered").to_numpy()
    end = np.where(answered, _ns(tx["response_ts"]),
                   _ns(tx["last_query_ts"]) + int(timeout_s * _NS))
    n = len(tx)
    names = tx["qname"].to_numpy(dtype=object)
    new = np.ones(n, dtype=bool)
    if n > 1:
        same = proc[1:] == proc[:-1]
        # running latest end of activity inside each process run
        run_end = pd.Series(end).groupby(proc).cummax().to_numpy()
        gap_ok = (ts[1:] - run_end[:-1]) <= int(gap_s * _NS)
        cont = same & gap_ok
        suffixes, domains = _infer_suffixes(names, cont)
        eq = names[1:] == names[:-1]
        cache: dict[str, frozenset[str]] = {}

        def bases(x: Any) -> frozenset[str]:
            if not isinstance(x, str):
                return frozenset()
            got = cache.get(x)
            if got is None:
                got = cache[x] = candidate_bases(x, suffixes, domains)
            return got

        related = eq.copy()
        for i in np.flatnonzero(cont & ~eq):
            related[i] = bool(bases(names[i + 1]) & bases(names[i]))
        new[1:] = ~(cont & related)
    else:
        suffixes, domains = set(), {"cluster.local"}
    lookup = np.cumsum(new) - 1
    tx["_lookup"] = lookup
    tx["_end"] = pd.to_datetime(end, utc=True)
    starts = np.flatnonzero(new)
    first = tx.iloc[starts].reset_index(drop=True)
    g = tx.groupby("_lookup", sort=True)
    out = pd.DataFrame({"lookup_id": np.arange(len(starts), dtype=np.int64)})
    out["ts"] = first["ts"]
    out["end_ts"] = g["_end"].max().reset_index(drop=True)
    for c in ("node", "tgid", "comm", "netns", "cgroup_id", "client_addr", "pod_uid",
              "namespace", "pod", "container", "container_id", "qos", "server_addr"):
        out[c] = first[c]
    out["first_name"] = first["qname"]
    is_nx = (tx["rcode_name"] == "NXDOMAIN").fillna(False)
    is_to = tx["status"] == "timeout"
    out["n_queries"] = (g["retransmissions"].sum() + g.size()).to_numpy()
    out["n_nxdomain"] = is_nx.groupby(lookup).sum().to_numpy()
    out["n_timeouts"] = is_to.groupby(lookup).sum().to_numpy()
    out["n_retransmissions"] = g["retransmissions"].sum().to_numpy()

    has_data = tx["answer_ips"].map(lambda v: v is not None and len(v) > 0
                                    if not isinstance(v, float) else False)
    has_data |= tx["answers"].map(lambda v: v is not None and not isinstance(v, float)
                                  and len(v) > 0)
    final_name: list[Any] = []
    base_name: list[Any] = []
    names_l: list[list[str]] = []
    qtypes_l: list[list[str]] = []
    rcode_l: list[Any] = []
    ips_l: list[list[str]] = []
    txn_l: list[list[int]] = []
    bounds = np.append(starts, n)
    qn = tx["qname"].to_numpy(dtype=object)
    qt = tx["qtype"].to_numpy(dtype=object)
    rc = tx["rcode_name"].to_numpy(dtype=object)
    st = tx["status"].to_numpy(dtype=object)
    ips = tx["answer_ips"].to_numpy(dtype=object)
    tid = tx["txn_id"].to_numpy()
    data = has_data.to_numpy(dtype=bool)
    for j in range(len(starts)):
        a, b = bounds[j], bounds[j + 1]
        if b - a == 1:
            nm = qn[a]
            names_l.append([nm])
            qtypes_l.append([qt[a]])
            txn_l.append([int(tid[a])])
            base_name.append(nm)
            if data[a]:
                final_name.append(nm)
                rcode_l.append(rc[a])
                ips_l.append(list(ips[a]) if ips[a] is not None else [])
            else:
                final_name.append(None)
                rcode_l.append("TIMEOUT" if st[a] == "timeout" else rc[a])
                ips_l.append([])
            continue
        seen_names = list(dict.fromkeys(qn[a:b]))
        names_l.append(seen_names)
        qtypes_l.append(list(dict.fromkeys(qt[a:b])))
        txn_l.append([int(x) for x in tid[a:b]])
        common: frozenset[str] | None = None
        for nm in seen_names:
            bs = candidate_bases(nm, suffixes, domains) if isinstance(nm, str) else frozenset()
            common = bs if common is None else common & bs
        base_name.append(max(common, key=len) if common and len(seen_names) > 1
                         else seen_names[0])
        hits = np.flatnonzero(data[a:b])
        if len(hits):
            fin = qn[a + hits[-1]]
            final_name.append(fin)
            rcode_l.append(rc[a + hits[-1]])
            got: list[str] = []
            for i in range(a, b):
                if qn[i] == fin and ips[i] is not None and not isinstance(ips[i], float):
                    got.extend(x for x in ips[i] if x not in got)
            ips_l.append(got)
        else:
            final_name.append(None)
            rcode_l.append("TIMEOUT" if st[b - 1] == "timeout" else rc[b - 1])
            ips_l.append([])
    out["final_name"] = final_name
    out["base_name"] = base_name
    out["names"] = names_l
    out["qtypes"] = qtypes_l
    out["rcode_name"] = rcode_l
    out["answer_ips"] = ips_l
    out["txn_ids"] = txn_l
    out = out.sort_values(["ts", "lookup_id"], kind="stable").reset_index(drop=True)
    out["lookup_id"] = np.arange(len(out), dtype=np.int64)
    return out[list(LOOKUP_COLUMNS)]
