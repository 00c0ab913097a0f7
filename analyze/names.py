"""Registered domains (eTLD+1) from the Public Suffix List bundled with ``publicsuffixlist``.

The list ships inside the package; nothing is fetched. Rules (docs/decode.md):

- Only the ICANN section of the list is used, as the findings do
  (``analyze/findings/_names.py``), so one name has one registered domain everywhere:
  ``x.y.github.io`` gives ``github.io`` and ``abc.cloudfront.net`` gives ``cloudfront.net``
  (the random host labels of CDNs and clouds are subdomains of the provider, not thousands of
  distinct domains).
- A top-level domain that is not in the list counts as a public suffix (the list's implicit
  ``*`` rule), so ``api.default.svc.cluster.local`` gives ``cluster.local`` and
  ``printer.corp.internal`` gives ``corp.internal``.
- Names under ``arpa`` (reverse lookups ``in-addr.arpa`` / ``ip6.arpa``) give None: the
  owner of a reverse name is not a registered domain.
- Single-label names (``localhost``, ``wpad``), the root, empty names and bare public
  suffixes (``com``, ``co.uk``) give None.
"""

from __future__ import annotations

from publicsuffixlist import PublicSuffixList

_PSL = PublicSuffixList(only_icann=True)
#: Bound of the memos: names come from the wire, an attacker can send endless distinct ones.
_MEMO_MAX = 1 << 17
_memo: dict[str, str | None] = {}
_count_memo: dict[str, int] = {}


def _suffix_closure() -> frozenset[str]:
    """Every suffix of every name a PSL rule looks at (rules without '!' or '*.').

    If the last k labels of a name are not in this set, no rule can match deeper than k
    labels, so the public suffix of the name is the public suffix of its last k labels: the
    memo is keyed by that short suffix, not by the (often random) full name.
    """
    rules = getattr(_PSL, "_publicsuffix", None)
    if not rules:
        return frozenset()
    closure: set[str] = set()
    for rule in rules:
        bare = rule.removeprefix("!")
        bare = bare.removeprefix("*.")
        labels = bare.split(".")
        for i in range(len(labels)):
            closure.add(".".join(labels[i:]))
    return frozenset(closure)


_CLOSURE = _suffix_closure()


def _public_count(key: str) -> int:
    count = _count_memo.get(key)
    if count is None:
        public = _PSL.publicsuffix(key)
        count = key.count(".") + 1 if public is None else public.count(".") + 1
        if len(_count_memo) >= _MEMO_MAX:
            _count_memo.clear()
        _count_memo[key] = count
    return count


def _compute(name: str) -> str | None:
    if not name or name == "." or "." not in name.strip("."):
        return None
    name = name.strip(".").lower()
    if name == "arpa" or name.endswith(".arpa"):
        return None
    labels = name.split(".")
    if "" in labels:
        return None
    if not _CLOSURE:  # the list's internals changed: ask it directly
        try:
            result = _PSL.privatesuffix(name)
        except Exception:  # noqa: BLE001 - the list code must not fail a decode on odd input
            return None
        return result if isinstance(result, str) else None
    n = len(labels)
    key = labels[-1]
    depth = 1
    while depth < n and key in _CLOSURE:
        depth += 1
        key = labels[-depth] + "." + key
    count = _public_count(key)
    if count >= n:
        return None
    return ".".join(labels[n - count - 1 :])


def registered_domain(name: str) -> str | None:
    """eTLD+1 of a presented name (lower-case, no trailing dot), or None (see module doc)."""
    try:
        return _memo[name]
    except KeyError:
        pass
    result = _compute(name)
    if len(_memo) >= _MEMO_MAX:
        _memo.clear()
    _memo[name] = result
    return result


__all__ = ["registered_domain"]
