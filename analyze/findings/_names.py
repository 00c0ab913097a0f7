"""Name helpers: ICANN registered domains, the subdomain part, label shapes."""

from __future__ import annotations

from functools import lru_cache

from publicsuffixlist import PublicSuffixList

_ICANN = PublicSuffixList(only_icann=True)

#: Zones never treated as tunnels or new domains: answered inside the cluster or reverse maps.
INTERNAL_SUFFIXES = ("arpa", "cluster.local", "local", "localhost", "internal", "localdomain")


@lru_cache(maxsize=65536)
def registered_domain(qname: str) -> str | None:
    """eTLD+1 of a name using only the ICANN section of the Public Suffix List.

    Private suffixes (cloudfront.net, compute-1.amazonaws.com, ...) are not used, so the
    random-looking host labels of CDNs and clouds count as subdomains of one provider domain
    instead of looking like thousands of distinct registered domains.
    """
    name = qname.rstrip(".").lower()
    if not name or name == ".":
        return None
    try:
        return _ICANN.privatesuffix(name)
    except (ValueError, UnicodeError):
        return None


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
