"""A tunnel-like DNS client for the sample story: exfiltrates data as base32 labels in TXT queries.

It behaves like a DNS tunnel's upstream half (one process, a steady cadence, every name new,
data-carrying labels under one domain, TXT answers carrying data back) but talks only to the
server given with --server (a lab dnsmasq that holds the answers, see make_sample.py), sends at
most --count queries and stops.
"""

from __future__ import annotations

import argparse
import base64
import random
import socket
import sys
import time

from dnslib import QTYPE, DNSRecord

MAX_COUNT = 1000


def tunnel_names(domain: str, count: int, seed: int = 7) -> list[tuple[str, str]]:
    """(query name, TXT reply) pairs: chunk i of a 'file' as a 56-char base32 label."""
    rng = random.Random(seed)
    secret = ("user,email,card\n" + "".join(
        f"u{i},user{i}@example.org,4111{rng.randrange(10**11, 10**12)}\n" for i in range(400)
    )).encode()
    out = []
    for i in range(min(count, MAX_COUNT)):
        chunk = secret[i * 35:(i + 1) * 35] or rng.randbytes(35)
        label = base64.b32encode(chunk).decode().rstrip("=").lower()
        reply = base64.b32encode(rng.randbytes(20)).decode().rstrip("=").lower()
        out.append((f"{label}.{i:x}.{domain}", reply))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", required=True, help="IPv4 address of the DNS server")
    ap.add_argument("--domain", required=True)
    ap.add_argument("--count", type=int, default=80)
    ap.add_argument("--interval-ms", type=int, default=120)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    if not 1 <= args.count <= MAX_COUNT:
        ap.error(f"--count must be 1..{MAX_COUNT}")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(1.0)
    answered = 0
    for name, _ in tunnel_names(args.domain, args.count, args.seed):
        q = DNSRecord.question(name, "TXT")
        sock.sendto(q.pack(), (args.server, 53))
        try:
            data, _ = sock.recvfrom(4096)
            r = DNSRecord.parse(data)
            answered += any(rr.rtype == QTYPE.TXT for rr in r.rr)
        except (TimeoutError, OSError, ValueError):
            pass
        time.sleep(args.interval_ms / 1000)
    print(f"{answered}/{args.count} answered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
