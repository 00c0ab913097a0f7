"""Compile, load and attach the BPF program in a short-lived child process.

BCC links LLVM and clang: importing it and compiling the program costs the process about
300 MB of resident memory that it never gives back. The recorder runs for hours, so it does
not import bcc at all: ``capture.probe`` starts ``python -m capture._loader``, which compiles
and attaches the program, fills the static filter maps, and hands the file descriptors of the
maps and of the tracepoint attachments back over a Unix socket (SCM_RIGHTS). The child then
exits with ``os._exit`` so that BCC's exit handlers do not detach anything: the attachments
live as long as the parent holds their descriptors.

Protocol on the socket: one message, a JSON header plus the descriptors. Header
``{"ok": true, "maps": [names...], "attachments": n}`` (fds: maps in that order, then the
attachments), or ``{"ok": false, "error": "<CaptureError subclass name>", "message": "..."}``.
The request arrives on stdin as JSON: ``{"source", "cflags", "ports", "pids", "comms",
"cgroup_ids", "maps"}``. Filters are compiled in as "in force" (-DFILTER_*), so nothing
passes them between the attach (which BCC does while loading) and the filling of the sets.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import sys
from typing import Any

from capture.errors import CaptureError, LoadFailed, NotPermitted


def _load(req: dict[str, Any]) -> tuple[list[str], list[int], list[int]]:
    from capture.probe import _check_environment

    bcc = _check_environment()
    try:
        b = bcc.BPF(src_file=req["source"].encode(), cflags=list(req["cflags"]))
    except PermissionError as exc:
        raise NotPermitted(f"not permitted to load BPF programs: {exc}") from None
    except Exception as exc:  # noqa: BLE001  (bcc raises bare Exception on failure)
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LoadFailed(f"the BPF program failed to compile or load: {msg} "
                         "(run with --print-bpf to see the C source; check dmesg)") from None
    one = ctypes.c_uint8(1)
    ports = b["ports"]
    for port in req["ports"]:
        ports[ports.Key(port)] = one
    pids = b["pids"]
    for pid in req["pids"]:
        pids[pids.Key(pid)] = one
    comms = b["comms"]
    for comm in req["comms"]:
        key = comms.Key()
        raw = comm.encode()
        ctypes.memmove(ctypes.addressof(key), raw, len(raw))
        comms[key] = one
    cgroups = b["cgroups"]
    for cg in req["cgroup_ids"]:
        cgroups[cgroups.Key(cg)] = one
    names = list(req["maps"])
    map_fds = [b[name].map_fd for name in names]
    attach_fds = list(b.tracepoint_fds.values()) + list(b.raw_tracepoint_fds.values())
    if not attach_fds:
        raise LoadFailed("the BPF program attached to no tracepoint")
    return names, map_fds, attach_fds


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    try:
        req = json.loads(sys.stdin.read())
        names, map_fds, attach_fds = _load(req)
        header = {"ok": True, "maps": names, "attachments": len(attach_fds)}
        socket.send_fds(sock, [json.dumps(header).encode()], map_fds + attach_fds)
    except CaptureError as exc:
        err = {"ok": False, "error": type(exc).__name__, "message": str(exc)}
        sock.sendall(json.dumps(err).encode())
    except Exception as exc:  # noqa: BLE001  (report anything to the parent, as LoadFailed)
        err = {"ok": False, "error": "LoadFailed", "message": f"BPF loader: {exc!r}"}
        sock.sendall(json.dumps(err).encode())
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip bcc's atexit cleanup: it would detach what the parent now holds


if __name__ == "__main__":
    main()
