"""Name helpers: ICANN registered domains, the subdomain part, label shapes."""

from __future__ import annotations

from functools import lru_cache

from publicsuffixlist import PublicSuffixList

from analyze.names import registered_domain as _registered_domain

_ICANN = PublicSuffixList(only_icann=True)

#: Zones never treated as tunnels or new domains: answered inside the cluster or reverse maps.
INTERNAL_SUFFIXES = ("arpa", "cluster.local", "local", "localhost", "internal", "localdomain")


def registered_domain(qname: str) -> str | None:
    """eTLD+1 of a name: the analyzer's own rule (analyze.names, ICANN section only).

    Private suffixes (cloudfront.net, compute-1.amazonaws.com, ...) are not used, so the
    random-looking host labels of CDNs and clouds count as subdomains of one provider domain
    instead of looking like thousands of distinct registered domains.
    """
    return _registered_domain(qname.rstrip(".").lower())


@lru_cache(maxsize=65536)
def public_suffix(qname: str) -> str | None:
    try:
        return _ICANN.publicsuffix(qname.rstrip(".").lower())
    except (ValueError, UnicodeError):
        return None


def subdomain(qname: str, registered: str) -> str:
    """The labels left of the registered domain ('' for the registered domain itself)."""
    name = qname.rstrip(".").lower()
    if name == registered:
        return ""
    if name.endswith("." + registered):
        return name[: -len(registered) - 1]
    return name


def is_internal(qname: str, cluster_domain: str = "cluster.local") -> bool:
    """Reverse lookups, cluster-internal names and other names a tunnel cannot ride on."""
    name = qname.rstrip(".").lower()
    suffixes = (*INTERNAL_SUFFIXES, cluster_domain)
    return any(name == s or name.endswith("." + s) for s in suffixes) or "." not in name
