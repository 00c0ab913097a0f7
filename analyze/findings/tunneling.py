"""tunneling: names that carry data (DNS tunnels, exfiltration) per client and registered domain.

Features per (client, ICANN registered domain), over the client's own queries:

* distinct subdomains and the share of queries that ask a new name (tunnels never repeat);
* the longest label of each name: encoders fill labels up to 63 bytes, hostnames rarely pass 30;
* Shannon entropy of the pooled subdomain characters (encoded data: 4-6 bits per character);
* record types: TXT, NULL, MX, CNAME, KEY, ANY or numeric types carry bigger answers;
* bytes of distinct subdomain text per minute (the tunnel's upstream bandwidth);
* the answers (the downstream): bytes per record type and per minute, distinct data answers,
  the download/upload ratio, template and counter names (``cdn0``.., ``0-1234.id-9.down.x``),
  the cadence of new names and the character distribution.

A pair is a tunnel candidate only when its names carry data (long, random-looking labels in
many distinct names, or long never-repeating ones), when it asks bulk record types for many
distinct random-looking names, or when its answers carry data (big distinct bulk answers, or
distinct answers to templated or counting names). ``metrics["fired"]`` names the rules; the
thresholds are settable (``analyze.findings.settings``, docs/findings.md).
Busy ordinary traffic (CDN host names, cloud host names, service discovery, reverse lookups)
has short or templated labels and A/AAAA/SRV/PTR types, so it stays at most `low`.

Per client and public suffix, many distinct long random second-level labels (payload moved into
the registered domain itself) are reported as tunneling with domain ``*.<suffix>``.

Names are grouped by the name the application asked for: a search suffix or the ndots walk
(``<hex>.tunnel.example.com.corp.local``, ``....default.svc.cluster.local``) is stripped first,
from the lookups' ``base_name`` (the suffixes inferred from the lookup walk,
``analyze.reconstruct``), else, for a name under an internal or unknown top-level domain, by
cutting labels off the right until a name under a known ICANN top-level domain is left. The
walk of one name counts as one query; the finding keeps both names.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

import pandas as pd
from publicsuffixlist import PublicSuffixList

from analyze.findings._common import Finding, shannon, spread, txn_evidence
from analyze.findings._names import is_internal, public_suffix, registered_domain, subdomain
from analyze.findings._sql import Rows, client_key_sql, client_rows, lookup_rows

#: Record types whose answers can carry a tunnel's downstream data.
BULK_TYPES = frozenset({"TXT", "NULL", "MX", "CNAME", "KEY", "ANY", "SRV", "PRIVATE"})
#: SRV is normal inside clusters; it only counts outside internal zones (those are skipped).


@dataclass(frozen=True)
class Thresholds:
    min_distinct: int = 6          #: distinct subdomains before anything is judged
    long_label: int = 30           #: a label this long looks like encoded data
    long_share: float = 0.3        #: share of distinct names with such a label
    long_mean: float = 40.0        #: or: mean subdomain length (many medium labels)
    entropy: float = 3.5           #: pooled bits/char of subdomain text
    bulk_share: float = 0.5        #: share of queries with bulk record types
    unique_share: float = 0.5      #: distinct names / queries
    template_share: float = 0.3    #: distinct shapes (digits set aside) / distinct names
    high_distinct: int = 50        #: this many data-carrying names is high on its own
    high_bytes_per_min: float = 3000.0
    sld_min_distinct: int = 20     #: distinct random second-level labels under one suffix
    sld_min_len: int = 20
    # payload in the answers (download side)
    min_answers: int = 12          #: answers with data before the answer rules judge
    answer_bytes_per_query: float = 100.0  #: mean answer payload of a bulk-answer tunnel
    answer_bulk_share: float = 0.5  #: share of answer bytes in TXT/NULL/CNAME/MX/other
    distinct_answer_share: float = 0.8     #: distinct answers / answers with data
    counter_share: float = 0.8     #: names of the main template, and its counter increasing
    counter_bytes_per_query: float = 16.0  #: least answer payload of a counter-named stager
    high_answer_bytes: int = 10000  #: this much downloaded is high
    high_answer_bytes_per_min: float = 3000.0
    high_answers: int = 50         #: this many distinct data answers is high


_DIGITS = re.compile(r"[0-9]+")
_ICANN = PublicSuffixList(only_icann=True)


def _max_label(sub: str) -> int:
    return max((len(x) for x in sub.split(".")), default=0) if sub else 0


def _is_bulk(qtype: Any) -> bool:
    q = str(qtype or "")
    return q in BULK_TYPES or q.startswith("TYPE")


def _bytes_sql(where: str | None = None) -> str:
    """Answer payload bytes of a transaction: A 4, AAAA 16, an RFC 3597 ``\\# N ...`` N,
    else the length of the record's text (TXT strings, CNAME/MX targets)."""
    records = "answers" if where is None else f"list_filter(answers, lambda a: {where})"
    size = ("CASE WHEN a.type = 'A' THEN 4 WHEN a.type = 'AAAA' THEN 16 "
            "WHEN starts_with(a.data, '\\# ') THEN coalesce(TRY_CAST(split_part(a.data, ' ', 2) "
            "AS BIGINT), 0) ELSE length(coalesce(a.data, '')) END")
    return (f"CAST(coalesce(sum(list_sum(list_transform({records}, lambda a: {size}))), 0) "
            "AS BIGINT)")


#: Gaps between new names this regular (coefficient of variation) read as a tool's timer.
CADENCE_TIMER_CV = 0.3

#: Least payload (bytes) of an answer that counts as carrying data.
DATA_ANSWER_BYTES = 16

#: Answer record types whose bytes are counted apart (the rest: ``_ab_other``).
ANSWER_TYPES = {"txt": "TXT", "null": "NULL", "cname": "CNAME", "mx": "MX"}

#: What an answer says (its records' types and data, not their owner names: the CNAME chain
#: of ``img1.x`` and ``img2.x`` to one CDN host is one answer).
_ANSWER_DATA = "hash(list_transform(answers, lambda a: a.type || ' ' || coalesce(a.data, '')))"

#: Per (client, name, type): answer bytes (all, per type), answers with data, and their
#: distinct payloads (count, and the smallest hash to tell single answers apart across names).
_ANSWER_SQL = ", ".join([
    f"{_bytes_sql()} AS _ab",
    *(f"{_bytes_sql(f'a.type = {t!r}')} AS _ab_{k}" for k, t in ANSWER_TYPES.items()),
    _bytes_sql("a.type IN ('A', 'AAAA')") + " AS _ab_addr",
    "count(*) FILTER (WHERE len(answers) > 0) AS _answered",
    f"count(DISTINCT {_ANSWER_DATA}) FILTER (WHERE len(answers) > 0) AS _adist",
    f"min({_ANSWER_DATA}) FILTER (WHERE len(answers) > 0) AS _ahash",
])


#: Most labels cut off the right of a name to find the name under a known top-level domain.
_MAX_CUT = 4


def _known_tld(name: str) -> bool:
    """The name ends in a public suffix the ICANN list names (not its implicit ``*`` rule)."""
    return _ICANN.publicsuffix(name, accept_unknown=False) is not None


def _walk_bases(capture: Any) -> dict[str, str]:
    """Name -> the name the application asked for, from the lookups (search suffix removed),
    for the names that differ."""
    rows = lookup_rows(capture)
    got = rows.capture.query(
        "SELECT n AS qname, any_value(base_name) AS base FROM (SELECT unnest(names) AS n, "
        f"base_name FROM ({rows.sql})) WHERE base_name IS NOT NULL AND n <> base_name "
        "GROUP BY n", rows.params)
    return dict(zip(got.column("qname").to_pylist(), got.column("base").to_pylist()))


def _cut_base(name: str, cluster_domain: str) -> str | None:
    """A name under an internal or unknown top-level domain (``x.example.com.corp.local``),
    not a cluster name: the longest left part under a known ICANN top-level domain with at
    least three labels (``x.example.com``), else None."""
    n = name.rstrip(".").lower()
    if n.endswith(("." + cluster_domain, ".arpa")) or _known_tld(n):
        return None
    labels = n.split(".")
    for cut in range(1, min(_MAX_CUT, len(labels) - 3) + 1):
        rest = ".".join(labels[:-cut])
        if _known_tld(rest):
            return rest
    return None


def _base_of(name: str, walked: dict[str, str], cluster_domain: str) -> str:
    base = walked.get(name)
    if base is not None and base.count(".") >= 2 and _known_tld(base.rstrip(".").lower()):
        return base
    return _cut_base(name, cluster_domain) or name


def _prepared(capture: Any, cluster_domain: str) -> pd.DataFrame:
    """One row per (client, registered domain, name, type) of the client queries outside
    internal zones, with the query count `_n`, first/last time and NXDOMAINs (`_nx`): an
    aggregate query, in the order the names were first asked. ``_base`` is the name without
    its search suffix (the name itself when none), ``_rd`` and ``_sub`` are of the base;
    ``_nq`` counts the walk of one name (suffixed tries and the bare one) as one query."""
    agg = client_rows(capture).where("qname IS NOT NULL").frame(
        f"{client_key_sql()} AS _client, qname, qtype, count(*) AS _n, min(ts) AS _first, "
        "max(ts) AS _last, count(*) FILTER (WHERE rcode_name = 'NXDOMAIN') AS _nx, "
        + _ANSWER_SQL, "GROUP BY ALL ORDER BY min(txn_id)")
    if agg.empty:
        return agg
    names = agg["qname"].astype(str)
    uniq = pd.unique(names)
    walked = _walk_bases(capture)
    bases = {u: _base_of(u, walked, cluster_domain) for u in uniq}
    rds = {u: (None if is_internal(b, cluster_domain) else registered_domain(b))
           for u, b in bases.items()}
    agg["_base"] = names.map(bases)
    agg["_rd"] = names.map(rds)
    agg = agg[agg["_rd"].notna()].reset_index(drop=True)
    agg["_sub"] = [subdomain(str(q), str(r)) for q, r in zip(agg["_base"], agg["_rd"])]
    top = agg.groupby(["_client", "_base", "qtype"], sort=False)["_n"].transform("max")
    first = ~agg.duplicated(["_client", "_base", "qtype"])
    agg["_nq"] = top.where(first, 0)
    return agg


def _client_names(capture: Any, client: str, names: Any) -> Rows:
    """The client queries of one client for these names."""
    return client_rows(capture).where(
        f"{client_key_sql()} = ? AND qname IN (SELECT unnest(?::VARCHAR[]))",
        client, [str(q) for q in pd.unique(names)])


def _first_per(rows: Rows, key: Any) -> pd.DataFrame:
    """Evidence: the first query (in time) of each value of ``key(qname)``, spread out."""
    slim = rows.frame("txn_id, ts, qname", "ORDER BY ts, txn_id")
    slim = slim.assign(_k=[key(str(q)) for q in slim["qname"]]).drop_duplicates("_k")
    return rows.by_ids(list(spread(slim)["txn_id"]))


def detect(capture: Any, th: Thresholds | None = None, cluster_domain: str = "cluster.local",
           settings: Any = None, **_: Any) -> list[Finding]:
    from analyze.findings.known_services import services
    from analyze.findings.settings import thresholds_for

    th = th or thresholds_for("tunneling", Thresholds, settings)
    catalog = services(settings.allow if settings is not None else ())
    agg = _prepared(capture, cluster_domain)
    if agg.empty:
        return []
    findings: list[Finding] = []
    for (client, rd), g in _candidates(agg, th).groupby(["_client", "_rd"], sort=False):
        f = _judge_pair(g, str(rd), th, capture, str(client))
        if f is not None:
            findings.append(_as_known(f, g["_base"], catalog))
    for f, names in _second_level(agg, capture, th):
        findings.append(_as_known(f, names, catalog))
    return findings


def _as_known(f: Finding, names: Any, catalog: Any) -> Finding:
    """A finding whose names belong to a known encoded-lookup service: info (low where the
    rules said high), the service and the reason in front of the explanation."""
    from analyze.findings.known_services import known

    service = known((str(n) for n in pd.unique(names)), catalog)
    if service is None:
        return f
    was = f.severity
    f.severity = "low" if was == "high" else "info"
    f.metrics["known_service"] = service.name
    f.metrics["known_service_kind"] = service.kind
    f.metrics["severity_by_rules"] = was
    f.explanation = (f"Known encoded-lookup service: {service.name} ({service.kind}): "
                     f"{service.reason}. The rules alone said {was}: " + f.explanation)
    return f


def _candidates(agg: pd.DataFrame, th: Thresholds) -> pd.DataFrame:
    """Rows of the pairs with enough distinct subdomains, or enough answers with data of
    some size, to be judged at all."""
    pairs = agg.assign(_named=agg["_sub"].where(agg["_sub"] != "")).groupby(
        ["_client", "_rd"], sort=False).agg(
        distinct=("_named", "nunique"), answered=("_answered", "sum"), ab=("_ab", "sum"))
    keep = (pairs["distinct"] >= th.min_distinct) | (
        (pairs["answered"] >= max(th.min_answers // 2, 1))
        & (pairs["ab"] >= th.counter_bytes_per_query * pairs["answered"]))
    keys = pairs[keep].reset_index()[["_client", "_rd"]]
    return agg.merge(keys, on=["_client", "_rd"])


def pair_table(capture: Any, cluster_domain: str = "cluster.local",
               limit: int = 2000) -> pd.DataFrame:
    """Features of the (client, registered domain) pairs with the most distinct subdomains
    (at most `limit`), with `flagged` set when the pair raises a tunneling finding. A big
    capture is read one part at a time (``analyze.findings.partition``)."""
    from analyze.findings.partition import parts

    cols = ["registered_domain", "distinct_subdomains", "entropy_bits_per_char", "flagged"]
    tables = [_pair_table(part, cluster_domain, limit, cols) for part in parts(capture)]
    out = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
    return out.sort_values("distinct_subdomains", ascending=False, kind="stable") \
        .head(limit).reset_index(drop=True)


def _pair_table(capture: Any, cluster_domain: str, limit: int,
                cols: list[str]) -> pd.DataFrame:
    agg = _prepared(capture, cluster_domain)
    if agg.empty:
        return pd.DataFrame(columns=cols)
    th = Thresholds()
    named = agg[agg["_sub"] != ""]
    counts = named.groupby(["_client", "_rd"], sort=False)["_sub"].nunique()
    top = counts.sort_values(ascending=False, kind="stable").head(limit)
    keys = pd.DataFrame(list(top.index), columns=["_client", "_rd"])
    rows = []
    for (_client, rd), g in agg.merge(keys, on=["_client", "_rd"]).groupby(
            ["_client", "_rd"], sort=False):
        m = pair_features(g)
        severity, _reasons = _assess(m, th)
        rows.append({"registered_domain": rd,
                     "distinct_subdomains": m["distinct_subdomains"],
                     "entropy_bits_per_char": m["entropy_bits_per_char"],
                     "flagged": severity is not None and severity != "low"})
    return pd.DataFrame(rows, columns=cols)


def pair_features(g: pd.DataFrame, th: Thresholds | None = None) -> dict[str, Any]:
    """The tunneling features of one client's queries under one registered domain
    (``g``: rows of the aggregated table, one per name and type with its count ``_n``)."""
    long_label = (th or Thresholds()).long_label
    subs = g["_sub"].astype(str)
    distinct = subs[subs != ""].drop_duplicates()
    n = g["_nq"] if "_nq" in g else g["_n"]
    n_q = int(n.sum())
    n_d = len(distinct)
    span = (g["_last"].max() - g["_first"].min()).total_seconds() if n_q > 1 else 0.0
    minutes = max(span, 60.0) / 60.0
    labels_max = [_max_label(s) for s in distinct]
    pooled = "".join(s.replace(".", "") for s in distinct)
    templates = {_DIGITS.sub("0", x) for x in distinct}
    qtypes = n.groupby(g["qtype"].astype(str), sort=False).sum() \
        .sort_values(ascending=False, kind="stable")
    bulk = int(sum(c for t, c in qtypes.items() if _is_bulk(t)))
    base = g["_base"] if "_base" in g else g["qname"]
    name_len = float((base.astype(str).str.len() * n).sum() / n_q) if n_q else 0.0
    return {
        "queries": n_q,
        "distinct_subdomains": n_d,
        "unique_share": round(n_d / n_q, 3) if n_q else 0.0,
        "distinct_templates": len(templates),
        "template_share": round(len(templates) / n_d, 3) if n_d else 0.0,
        "entropy_bits_per_char": round(shannon(pooled), 3),
        **_alphabet_metrics(pooled),
        "mean_name_length": round(name_len, 1),
        "mean_subdomain_length": round(float(distinct.str.len().mean()), 1) if n_d else 0.0,
        "max_label_length": max(labels_max, default=0),
        "long_label_names": sum(1 for x in labels_max if x >= long_label),
        "record_types": {str(t): int(c) for t, c in qtypes.items()},
        "bulk_type_share": round(bulk / n_q, 3) if n_q else 0.0,
        "span_s": round(span, 3),
        "name_bytes_per_min": round(sum(len(s) for s in distinct) / minutes, 1),
        **_answer_metrics(g, n, distinct, minutes),
        **_counter_metrics(distinct),
        **_cadence_metrics(g),
        **_suffix_metrics(g),
    }


def _answer_metrics(g: pd.DataFrame, n: pd.Series, distinct: pd.Series,
                    minutes: float) -> dict[str, Any]:
    """Download side: answer bytes (all, per record type, the bulk ones: TXT, NULL, MX,
    other types, and CNAME when CNAME was asked; a CDN chain's CNAMEs in an A answer are
    not payload), answers with data, distinct answers, and the download/upload ratio."""
    if "_ab" not in g:
        return {}
    total = int(g["_ab"].sum())
    by_type = {t.upper(): int(g[f"_ab_{k}"].sum()) for k, t in
               (("txt", "txt"), ("null", "null"), ("cname", "cname"), ("mx", "mx"))}
    by_type["A/AAAA"] = int(g["_ab_addr"].sum())
    by_type["other"] = max(total - sum(by_type.values()), 0)
    asked_cname = g["qtype"].astype(str) == "CNAME"
    bulk = (by_type["TXT"] + by_type["NULL"] + by_type["MX"] + by_type["other"]
            + int(g.loc[asked_cname, "_ab_cname"].sum()))
    answered = int(g["_answered"].sum())
    payload = bulk + by_type["A/AAAA"]  # a CDN chain's CNAMEs in an A answer left out
    # data answers: those carrying DATA_ANSWER_BYTES of payload or more (an idle tunnel's
    # empty polls, NXDOMAINs and NODATA answers are left out), and how many of them differ
    chain = g["_ab_cname"].where(~asked_cname, 0)
    per_answer = (g["_ab"] - chain) / g["_answered"].where(g["_answered"] > 0)
    data = g[per_answer >= DATA_ANSWER_BYTES]
    data_answers = int(data["_answered"].sum())
    distinct_answers = int(data.loc[data["_adist"] == 1, "_ahash"].nunique()
                           + data.loc[data["_adist"] > 1, "_adist"].sum())
    # upload: the subdomain text sent per query (the walk of one name once)
    sub_len = g["_sub"].astype(str).str.len()
    upload = int((sub_len * n).sum())
    return {
        "answer_bytes": total,
        "answer_bytes_by_type": {k: v for k, v in by_type.items() if v},
        "bulk_answer_bytes": bulk,
        "answers_with_data": answered,
        "answer_bytes_per_answer": round(total / answered, 1) if answered else 0.0,
        "bulk_bytes_per_answer": round(bulk / answered, 1) if answered else 0.0,
        "payload_bytes_per_answer": round(payload / answered, 1) if answered else 0.0,
        "answer_bytes_per_min": round(total / minutes, 1),
        "data_answers": data_answers,
        "distinct_answers": distinct_answers,
        "distinct_answer_share": round(min(distinct_answers / data_answers, 1.0), 3)
        if data_answers else 0.0,
        "bulk_bytes_per_data_answer": round(bulk / data_answers, 1) if data_answers else 0.0,
        "upload_bytes": upload,
        "download_upload_ratio": round(total / upload, 2) if upload else None,
    }


_HEX = frozenset("0123456789abcdef")
_BASE32 = frozenset("abcdefghijklmnopqrstuvwxyz234567")
_BASE36 = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def _alphabet_metrics(pooled: str) -> dict[str, Any]:
    """Character distribution of the subdomain text: the share of digits, and the smallest
    encoding alphabet it fits (hex, base32, base36 = letters and digits, or other: hyphens,
    underscores, base64's case and 8-bit bytes)."""
    if not pooled:
        return {}
    chars = set(pooled.lower())
    alphabet = ("hex" if chars <= _HEX else "base32" if chars <= _BASE32 else
                "base36" if chars <= _BASE36 else "other")
    digits = sum(c.isdigit() for c in pooled)
    return {"alphabet": alphabet, "digit_share": round(digits / len(pooled), 3)}


def _numbers(name: str) -> tuple[int, ...]:
    return tuple(int(x[:18]) for x in _DIGITS.findall(name))


def _counter_metrics(distinct: pd.Series) -> dict[str, Any]:
    """Counter and template labels: the share of distinct names of the commonest shape
    (digits set aside: ``cdn0``..``cdn99``, ``0-12345.id-9510.down.x``), and how often the
    numbers of that shape's names, in the order they were first asked, go up (a counter)."""
    if len(distinct) < 2:
        return {"top_template_share": 0.0, "counter_share": 0.0}
    shapes = distinct.map(lambda x: _DIGITS.sub("0", x))
    top = shapes.value_counts()
    name = str(top.index[0])
    mine = [_numbers(x) for x, sh in zip(distinct, shapes) if sh == name]
    ups = sum(1 for a, b in itertools.pairwise(mine) if b > a)
    return {
        "top_template": name[:80],
        "top_template_share": round(int(top.iloc[0]) / len(distinct), 3),
        "counter_share": round(ups / (len(mine) - 1), 3) if len(mine) > 1 and mine[0]
        else 0.0,
    }


def _cadence_metrics(g: pd.DataFrame) -> dict[str, Any]:
    """Query cadence: the coefficient of variation of the gaps between first asks of new
    names (a tool's timer: near 0; people and applications: near 1 or more)."""
    firsts = g.groupby("_sub", sort=False)["_first"].min().sort_values()
    if len(firsts) < 4:
        return {}
    gaps = firsts.diff().dropna().dt.total_seconds()
    mean = float(gaps.mean())
    if mean <= 0:
        return {}
    return {"cadence_mean_s": round(mean, 3),
            "cadence_cv": round(float(gaps.std(ddof=0)) / mean, 3)}


def _suffix_metrics(g: pd.DataFrame) -> dict[str, Any]:
    """How many names were asked with a search suffix appended, which suffixes, and a few
    (asked name, name it stands for) pairs."""
    if "_base" not in g:
        return {}
    moved = g[g["qname"].astype(str) != g["_base"].astype(str)]
    if moved.empty:
        return {}
    pairs = moved[["qname", "_base"]].astype(str).drop_duplicates("qname")
    suffixes = sorted({q.rstrip(".")[len(b.rstrip(".")) + 1:] for q, b in
                       zip(pairs["qname"], pairs["_base"])
                       if q.rstrip(".").startswith(b.rstrip(".") + ".")})
    return {"suffixed_names": len(pairs), "search_suffixes": suffixes[:10],
            "suffixed_examples": [[q, b] for q, b in zip(pairs["qname"][:3],
                                                          pairs["_base"][:3])]}


def _assess(m: dict[str, Any], th: Thresholds) -> tuple[str | None, list[str]]:
    """Severity (None: no finding) and the plain-words reasons, from the features; the
    rules that fired are kept in ``m["fired"]``."""
    names, name_reasons = _assess_names(m, th)
    answers, answer_reasons = _assess_answers(m, th)
    ranks = {None: -1, "low": 1, "medium": 2, "high": 3}
    severity = max(names, answers, key=lambda x: ranks[x])
    if names in ("medium", "high") and answers in ("medium", "high"):
        severity = "high"  # both directions carry data: certain
    reasons = name_reasons + answer_reasons
    m.setdefault("fired", [])
    if severity is not None and m.get("cadence_cv") is not None and \
            m["cadence_cv"] <= CADENCE_TIMER_CV and m["distinct_subdomains"] >= th.min_distinct:
        reasons.append(f"a new name every {m['cadence_mean_s']:.2f} s, as regular as a "
                       f"timer (coefficient of variation {m['cadence_cv']:.2f})")
    return severity, reasons


def _assess_answers(m: dict[str, Any], th: Thresholds) -> tuple[str | None, list[str]]:
    """Payload in the answers: many distinct, big bulk-type answers, or templated or counter
    names whose every answer differs (download staging: ``cdn0``.. with TXT or AAAA)."""
    answered = m.get("data_answers", 0)
    if answered < max(th.min_answers // 2, 1):
        return None, []
    fired: list[str] = m.setdefault("fired", [])
    distinct = m["distinct_answer_share"] >= th.distinct_answer_share
    bulk_share = m["bulk_answer_bytes"] / m["answer_bytes"] if m["answer_bytes"] else 0.0
    bulk = (distinct and m["bulk_bytes_per_data_answer"] >= th.answer_bytes_per_query
            and bulk_share >= th.answer_bulk_share)
    templated = (m["distinct_subdomains"] >= max(th.min_answers // 2, 2)
                 and m["top_template_share"] >= th.counter_share)
    counter = templated and m["counter_share"] >= th.counter_share
    staged = (distinct and templated and m["payload_bytes_per_answer"]
              >= th.counter_bytes_per_query and (counter or bulk_share >= th.answer_bulk_share))
    if not (bulk or staged):
        return None, []
    reasons: list[str] = []
    types = ", ".join(f"{t} {b} B" for t, b in m["answer_bytes_by_type"].items())
    if bulk:
        fired.append("bulk_answers")
        reasons.append(
            f"{answered} answers carried data, {m['answer_bytes']} bytes in all ({types}), "
            f"{m['bulk_bytes_per_data_answer']:.0f} bytes of TXT/NULL/MX/CNAME data per "
            f"answer, {m['distinct_answer_share']:.0%} of them distinct: data flowing down")
    if staged:
        fired.append("counter_names" if counter else "template_names")
        reasons.append(
            f"{m['top_template_share']:.0%} of the names follow one template "
            f"({m['top_template']!r}" + (f", its number counting up in "
                                         f"{m['counter_share']:.0%} of steps" if counter else "")
            + f") and {m['distinct_answer_share']:.0%} of their answers differ "
            f"({m['payload_bytes_per_answer']:.0f} bytes of payload per answer, {types}): a "
            "payload "
            "fetched piece by piece")
    ratio = m.get("download_upload_ratio")
    if ratio is not None:
        reasons.append(f"download/upload {ratio:.1f} (answer bytes per byte of name text)")
    volume = (m["bulk_answer_bytes"] >= th.high_answer_bytes
              or m["answer_bytes_per_min"] >= th.high_answer_bytes_per_min
              or m["distinct_answers"] >= th.high_answers)
    if answered < th.min_answers:
        return "low", reasons  # the shape is there but the sample is small
    if volume or (bulk and staged):
        fired.append("answer_volume")
        return "high", reasons
    return "medium", reasons


def _assess_names(m: dict[str, Any], th: Thresholds) -> tuple[str | None, list[str]]:
    """Payload in the names (the upload side)."""
    n_d = m["distinct_subdomains"]
    if n_d < th.min_distinct:
        return None, []
    long_names = m["long_label_names"]
    m["long_label_share"] = round(long_names / n_d, 3)
    random_looking = m["entropy_bits_per_char"] >= th.entropy
    fresh = (
        m["unique_share"] >= th.unique_share
        and m["distinct_templates"] >= th.min_distinct
        and (m["template_share"] >= th.template_share
             or m["distinct_templates"] >= th.high_distinct)
    )
    data_names = random_looking and fresh and (
        m["long_label_share"] >= th.long_share or m["mean_subdomain_length"] >= th.long_mean
    )
    bulk = random_looking and fresh and m["bulk_type_share"] >= th.bulk_share and \
        m["mean_subdomain_length"] >= 6
    # long names that never repeat carry data even when it is not random (uncompressed
    # text or zeros through dns2tcp spell out as 'grkzgrkz...': 2.6 bits per character)
    long_names = (not random_looking and fresh and m["long_label_share"] >= th.long_share
                  and m["mean_subdomain_length"] >= th.long_mean)
    volume = n_d >= th.high_distinct or m["name_bytes_per_min"] >= th.high_bytes_per_min
    reasons: list[str] = []
    if data_names:
        reasons.append(
            f"{m['long_label_names']} of {n_d} distinct names have a label of "
            f"{th.long_label}+ characters (longest {m['max_label_length']}), the shape of encoded data"
        )
    if bulk:
        types = ", ".join(f"{t} {c}" for t, c in m["record_types"].items())
        reasons.append(
            f"{m['bulk_type_share']:.0%} of queries ask record types that carry bulk answers "
            f"({types})"
        )
    if long_names:
        reasons.append(
            f"{m['long_label_names']} of {n_d} distinct names have a label of {th.long_label}+ "
            f"characters (mean subdomain length {m['mean_subdomain_length']:.0f}) and none "
            f"repeats, though the text is low-entropy ({m['entropy_bits_per_char']:.2f} "
            "bits/char: data that is not compressed or encrypted)")
    if random_looking:
        reasons.append(
            f"the subdomain text has {m['entropy_bits_per_char']:.2f} bits of entropy per "
            f"character (random-looking)"
        )
    if fresh:
        reasons.append(
            f"{m['unique_share']:.0%} of queries ask a name never asked before, and the "
            f"names do not follow a template ({m['distinct_templates']} distinct shapes once "
            "digits are set aside)"
        )
    fired: list[str] = m.setdefault("fired", [])
    fired.extend(x for x, on in (("data_names", data_names), ("bulk_types", bulk),
                                 ("long_names", long_names),
                                 ("name_volume", volume and (data_names or bulk))) if on)
    if (data_names and (bulk or volume)) or (bulk and volume):
        return "high", reasons
    if long_names and m["bulk_type_share"] >= th.bulk_share and volume:
        return "high", reasons
    if data_names or bulk or long_names:
        return "medium", reasons
    if random_looking and fresh and n_d >= th.high_distinct and \
            m["mean_subdomain_length"] >= 20:
        return "low", reasons
    return None, reasons


def _judge_pair(g: pd.DataFrame, rd: str, th: Thresholds, capture: Any,
                client: str) -> Finding | None:
    m = pair_features(g, th)
    severity, reasons = _assess(m, th)
    if severity is None:
        return None
    rows = _client_names(capture, client, g["qname"])
    ident = rows.identity()
    who = ident["pod"] or ident["comm"] or ident["client"] or "a client"
    explanation = (
        f"{who} sent {m['queries']} queries for {m['distinct_subdomains']} distinct "
        f"subdomains of {rd} ({m['name_bytes_per_min']:.0f} bytes of name text per minute): "
        + "; ".join(reasons) + ". " + _closing(m["fired"])
        + _suffix_note(m, rd)
    )
    return Finding(
        kind="tunneling",
        severity=severity,
        explanation=explanation,
        domain=rd,
        registered_domain=rd,
        metrics=m,
        evidence=txn_evidence(_first_per(rows, lambda q: q)),
        **ident,
    )


_NAME_RULES = frozenset({"data_names", "bulk_types", "long_names"})


def _closing(fired: list[str]) -> str:
    """What the fired rules mean, in words."""
    names = bool(_NAME_RULES & set(fired))
    answers = bool(set(fired) - _NAME_RULES - {"name_volume"})
    out = []
    if names:
        out.append("DNS tunnels and exfiltration tools encode data in query names this way; "
                   "ordinary clients repeat a few short host names.")
    if answers:
        out.append("Tunnels and download stagers carry data in the answers this way; "
                   "ordinary lookups get short answers that repeat.")
    return " ".join(out) + (f" Rules fired: {', '.join(fired)}." if fired else "")


def _suffix_note(m: dict[str, Any], rd: str) -> str:
    if not m.get("suffixed_names"):
        return ""
    asked, meant = m["suffixed_examples"][0]
    return (f" {m['suffixed_names']} of the names were asked with a search suffix appended "
            f"({', '.join(m['search_suffixes']) or 'inferred'}), e.g. {asked} for {meant}: "
            f"they are grouped under {rd}, the domain the application asked for.")


def _second_level(agg: pd.DataFrame, capture: Any,
                  th: Thresholds) -> list[tuple[Finding, pd.Series]]:
    """Payload in the registered domain itself: many distinct long random second-level labels
    (each finding with the names it is about)."""
    out: list[tuple[Finding, pd.Series]] = []
    rds = pd.unique(agg["_rd"].astype(str))
    suffix = {r: public_suffix(r) for r in rds}
    rows = agg.assign(_ps=agg["_rd"].astype(str).map(suffix))
    rows = rows[rows["_ps"].notna()]
    for (client, ps), g in rows.groupby(["_client", "_ps"], sort=False):
        labels = pd.Series(pd.unique(g["_rd"].astype(str))).str.slice(0, -len(str(ps)) - 1)
        long = labels[labels.str.len() >= th.sld_min_len]
        if len(long) < th.sld_min_distinct:
            continue
        ent = shannon("".join(long))
        if ent < th.entropy:
            continue
        n_q = int(g["_nq"].sum())
        nx = float(g["_nx"].sum()) / n_q if n_q else 0.0
        severity = "medium" if len(long) >= 2 * th.sld_min_distinct else "low"
        metrics = {
            "queries": n_q,
            "distinct_registered_domains": int(g["_rd"].nunique()),
            "long_random_second_level_labels": len(long),
            "entropy_bits_per_char": round(ent, 3),
            "nxdomain_share": round(nx, 3),
        }
        mine = _client_names(capture, str(client), g["qname"])
        ident = mine.identity()
        out.append((Finding(
            kind="tunneling",
            severity=severity,
            explanation=(
                f"{ident['pod'] or ident['comm'] or ident['client'] or 'a client'} asked "
                f"{len(long)} distinct registered domains under .{ps} whose second-level label "
                f"is {th.sld_min_len}+ random-looking characters ({ent:.2f} bits/char): data "
                "can be carried in the registered domain itself (or the names come from a "
                "domain generation algorithm)."
            ),
            domain=f"*.{ps}",
            registered_domain=None,
            metrics=metrics,
            evidence=txn_evidence(_first_per(mine, lambda q: registered_domain(q))),
            **ident,
        ), g["_base"]))
    return out
