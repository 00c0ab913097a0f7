"""A bounded TCP listener for the lab's server namespace: accepts, writes "ok\\n", closes.

    python listener.py --port 8080 --addr 0.0.0.0 --addr :: [--max-seconds 600]

With --sink it reads each connection to EOF and replies "got N\\n" (bytes received).
Prints "ready" on stdout once every socket listens (with --verbose, then one line per
accepted connection: "accept ADDR PORT"). Exits after --max-seconds or on SIGTERM.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--addr", action="append", default=[])
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--verbose", action="store_true", help="print one line per connection")
    ap.add_argument("--sink", action="store_true",
                    help="read each connection to EOF (at most 16 MiB, 10 s), reply 'got N'")
    args = ap.parse_args()
    sel = selectors.DefaultSelector()
    for addr in args.addr or ["0.0.0.0"]:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, args.port))
        s.listen(128)
        sel.register(s, selectors.EVENT_READ)
    print("ready", flush=True)
    deadline = time.monotonic() + args.max_seconds
    while (left := deadline - time.monotonic()) > 0:
        for key, _ in sel.select(timeout=min(left, 1.0)):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                conn, peer = sock.accept()
            except OSError:
                continue
            with conn:
                try:
                    if args.sink:
                        conn.settimeout(10.0)
                        conn.sendall(f"got {_drain(conn)}\n".encode())
                    else:
                        conn.settimeout(1.0)
                        conn.sendall(b"ok\n")
                except OSError:
                    pass
            if args.verbose:
                print(f"accept {peer[0]} {peer[1]}", flush=True)
    return 0


def _drain(conn: socket.socket, limit: int = 16 << 20) -> int:
    total = 0
    while total < limit:
        chunk = conn.recv(65536)
        if not chunk:
            break
        total += len(chunk)
    return total


if __name__ == "__main__":
    sys.exit(main())
