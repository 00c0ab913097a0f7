"""Send N bytes to HOST:PORT over TCP, half-close, print the peer's reply (bounded by --timeout).

    python push.py HOST PORT N [--timeout 20]
"""

from __future__ import annotations

import argparse
import socket
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("size", type=int)
    ap.add_argument("--timeout", type=float, default=20.0)
    args = ap.parse_args()
    if not 0 <= args.size <= 16 << 20:
        print("size must be between 0 and 16 MiB", file=sys.stderr)
        return 64
    with socket.create_connection((args.host, args.port), timeout=args.timeout) as s:
        s.sendall(b"d" * args.size)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while len(reply) < 256:
            chunk = s.recv(256)
            if not chunk:
                break
            reply += chunk
    print(reply.decode(errors="replace").strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
