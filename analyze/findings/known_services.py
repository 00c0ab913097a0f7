"""Known encoded-lookup services (``known_services.toml``, shipped in the package): names
that look like tunnels by design. A tunneling finding under one of them stays visible, at
``info`` (``low`` where the rules said ``high``), with the service and the reason."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

#: Share of a finding's distinct names under one known service for the finding to be its.
KNOWN_SHARE = 0.9


@dataclass(frozen=True)
class Service:
    name: str
    kind: str
    reason: str
    domains: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()

    def matches(self, qname: str) -> bool:
        n = qname.rstrip(".").lower()
        if any(n == d or n.endswith("." + d) for d in self.domains):
            return True
        if self.labels:
            padded = "." + n + "."
            return any(f".{label}." in padded for label in self.labels)
        return False


@lru_cache(maxsize=1)
def shipped() -> tuple[Service, ...]:
    """The services of the package's known_services.toml."""
    text = resources.files("analyze.findings").joinpath("known_services.toml").read_text()
    return tuple(Service(name=s["name"], kind=s.get("kind", ""), reason=s["reason"],
                         domains=tuple(d.lower() for d in s.get("domains", ())),
                         labels=tuple(x.lower() for x in s.get("labels", ())))
                 for s in tomllib.loads(text)["service"])


def services(allow: Iterable[str] = ()) -> tuple[Service, ...]:
    """The shipped services plus one for the domains allowed by ``--allow``."""
    extra = tuple(dict.fromkeys(allow))
    if not extra:
        return shipped()
    return (*shipped(), Service(name="allowed by --allow", kind="allowed",
                                reason="the operator allowed " + ", ".join(extra[:5])
                                + (" ..." if len(extra) > 5 else ""), domains=extra))


def known(names: Iterable[str], catalog: tuple[Service, ...]) -> Service | None:
    """The service at least ``KNOWN_SHARE`` of these (distinct) names belong to, or None."""
    uniq = list(dict.fromkeys(names))
    if not uniq:
        return None
    for service in catalog:
        hits = sum(1 for n in uniq if service.matches(n))
        if hits >= KNOWN_SHARE * len(uniq):
            return service
    return None
