"""The lab's DNS data and its rendering into dnsmasq and unbound configurations.

A zone is a plain dict: ``{"www.lab.test": [("A", "10.213.0.80"), ("AAAA", "fd00:213::80")]}``.
Supported types: A, AAAA, CNAME (value: target), TXT (value: text, split into 255-byte
strings), MX (value: "PREF HOST"), SRV (value: "PRIO WEIGHT PORT TARGET").
Names in the lab's local domains that are not in the zone are NXDOMAIN; so is everything else:
neither server ever forwards anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ._sys import LabError

Zone = dict[str, list[tuple[str, str]]]

#: Domains the lab answers authoritatively (NXDOMAIN for unknown names inside them).
LOCAL_DOMAINS = ("lab.test", "cluster.local", "in-addr.arpa", "ip6.arpa")

WEB_ADDR = "10.213.0.80"
WEB_ADDR6 = "fd00:213::80"
API_ADDR = "10.213.0.81"
KUBERNETES_ADDR = "10.213.0.90"
BIG_A_COUNT = 40  # 40 A records: ~700 bytes, more than 512 (TCP without EDNS), less than 1232
HUGE_A_COUNT = 100  # 100 A records: ~1700 bytes, more than EDNS 1232: TCP for everyone


def default_zone() -> Zone:
    """The zone every lab serves unless told otherwise (see tests/lab/README.md)."""
    zone: Zone = {
        "www.lab.test": [("A", WEB_ADDR), ("AAAA", WEB_ADDR6)],
        "api.lab.test": [("A", API_ADDR)],  # AAAA query: NOERROR with no data
        "v6only.lab.test": [("AAAA", "fd00:213::82")],
        "alias.lab.test": [("CNAME", "mid.lab.test")],  # chain: alias -> mid -> www
        "mid.lab.test": [("CNAME", "www.lab.test")],
        "txt.lab.test": [("TXT", "hello from the dnstrail lab")],
        "bigtxt.lab.test": [("TXT", f"t{i:02d}-" + "x" * 200) for i in range(4)],  # ~900 bytes
        "big.lab.test": [("A", f"10.213.1.{i}") for i in range(1, BIG_A_COUNT + 1)],
        "huge.lab.test": [("A", f"10.213.{2 + i // 250}.{1 + i % 250}")
                          for i in range(HUGE_A_COUNT)],
        "kubernetes.default.svc.cluster.local": [("A", KUBERNETES_ADDR)],
        "web.shop.svc.cluster.local": [("A", WEB_ADDR)],
        "_http._tcp.web.shop.svc.cluster.local": [("SRV", "0 100 8080 web.shop.svc.cluster.local")],
        "mail.lab.test": [("MX", "10 www.lab.test")],
    }
    return zone


def merge_zone(base: Zone, extra: Mapping[str, Sequence[tuple[str, str]]] | None) -> Zone:
    """A copy of base where every name of extra replaces (not extends) the base's records."""
    out = {name.lower().rstrip("."): list(records) for name, records in base.items()}
    for name, records in (extra or {}).items():
        out[name.lower().rstrip(".")] = [(t.upper(), v) for t, v in records]
    return out


def _check_name(name: str) -> str:
    if not name or any(c in name for c in ' ,"/\\\n#') or len(name) > 253:
        raise LabError(f"zone name {name!r} is not a plain DNS name")
    return name


def _txt_chunks(text: str) -> list[str]:
    data = text.encode()
    if any(c in data for c in b'"\'\\\n'):
        raise LabError(f"TXT value {text!r} must not contain quotes, backslashes or newlines")
    chunks = [data[i:i + 255].decode() for i in range(0, len(data), 255)]
    return chunks or [""]


def dnsmasq_config(zone: Zone, *, listen: Sequence[str], ttl: int, log_file: str | None,
                   extra_txt: Mapping[str, str] | None = None) -> str:
    """A dnsmasq configuration serving zone on the listen addresses, with no upstream at all."""
    lines = [
        "# dnstrail lab: authoritative-only data, never forwards (no server=, no resolv file)",
        "no-resolv",
        "no-hosts",
        "no-poll",
        "bind-interfaces",
        "port=53",
        f"local-ttl={ttl}",
        "edns-packet-max=1232",
        "cache-size=0",
        # every name, in every domain, is answered from local data only
        "local=/#/",
    ]
    lines += [f"local=/{d}/" for d in LOCAL_DOMAINS]
    lines += [f"listen-address={a}" for a in listen]
    if log_file:
        lines += ["log-queries=extra", f"log-facility={log_file}"]
    for name, records in zone.items():
        _check_name(name)
        for rtype, value in records:
            rtype = rtype.upper()
            if rtype in ("A", "AAAA"):
                lines.append(f"host-record={name},{value}")
            elif rtype == "CNAME":
                lines.append(f"cname={name},{_check_name(value)}")
            elif rtype == "TXT":
                lines.append(f"txt-record={name}," + ",".join(f'"{c}"' for c in _txt_chunks(value)))
            elif rtype == "MX":
                pref, host = value.split()
                lines.append(f"mx-host={name},{_check_name(host)},{int(pref)}")
            elif rtype == "SRV":
                prio, weight, port, target = value.split()
                lines.append(f"srv-host={name},{_check_name(target)},{int(port)},"
                             f"{int(prio)},{int(weight)}")
            else:
                raise LabError(f"dnsmasq lab zones do not support {rtype} records ({name})")
    for name, text in (extra_txt or {}).items():
        lines.append(f"txt-record={_check_name(name)},\"{_txt_chunks(text)[0]}\"")
    return "\n".join(lines) + "\n"


def unbound_config(zone: Zone, *, interface: str, ttl: int, workdir: str,
                   threads: int = 1) -> str:
    """An unbound configuration with local data only: '.' is a static zone, no forwarders."""
    lines = [
        "# dnstrail lab: local data only; the root is a static local zone, so nothing recurses",
        "server:",
        f"    interface: {interface}",
        "    port: 53",
        f"    num-threads: {threads}",
        '    username: ""',
        '    chroot: ""',
        f'    directory: "{workdir}"',
        '    pidfile: ""',
        "    use-syslog: no",
        "    logfile: \"\"",
        "    verbosity: 0",
        "    do-ip6: yes",
        "    access-control: 0.0.0.0/0 allow",
        "    access-control: ::/0 allow",
        "    do-not-query-localhost: yes",
        "    harden-referral-path: no",
        "    module-config: \"iterator\"",
        '    local-zone: "." static',
    ]
    for name, records in zone.items():
        _check_name(name)
        for rtype, value in records:
            rtype = rtype.upper()
            if rtype == "TXT":
                rdata = " ".join(f'"{c}"' for c in _txt_chunks(value))
            elif rtype in ("CNAME", "MX", "SRV"):
                parts = value.split()
                parts[-1] = parts[-1].rstrip(".") + "."
                rdata = " ".join(parts)
            elif rtype in ("A", "AAAA"):
                rdata = value
            else:
                raise LabError(f"unbound lab zones do not support {rtype} records ({name})")
            # single quotes outside: TXT strings keep their own double quotes
            lines.append(f"    local-data: '{name}. {ttl} IN {rtype} {rdata}'")
    return "\n".join(lines) + "\n"
