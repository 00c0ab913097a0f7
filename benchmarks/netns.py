"""A private network namespace with a local-data-only unbound, for the capture benchmark.

The namespace has only a loopback interface, unbound answers a static zone (``bench.test``) from
``local-data`` and refuses everything else (``local-zone: "." refuse``), so no query can leave
this machine: there is no route out of the namespace and unbound never recurses or forwards.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

ZONE = "bench.test"


class BenchSetupError(RuntimeError):
    """The benchmark namespace or its unbound could not be started."""


def _run(argv: list[str], timeout: float = 20.0) -> str:
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise BenchSetupError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout


def zone_names(n: int = 500) -> list[str]:
    return [f"host{i:04d}.svc{i % 17}.{ZONE}" for i in range(n)]


def write_query_file(path: Path, n: int = 500, nxdomain_share: float = 0.1) -> None:
    """dnsperf input: A and AAAA for the zone's names, and some names that do not exist."""
    lines = []
    for i, name in enumerate(zone_names(n)):
        lines.append(f"{name} A")
        lines.append(f"{name} AAAA")
        if i % max(1, int(1 / nxdomain_share / 2)) == 0:
            lines.append(f"missing{i}.{ZONE} A")
    path.write_text("\n".join(lines) + "\n")


def remove_stale() -> None:
    """Delete namespaces left by benchmark runs whose process is gone (killed runs)."""
    listing = subprocess.run(["ip", "netns", "list"], check=False, capture_output=True,
                             text=True).stdout
    for line in listing.splitlines():
        m = re.match(r"^dnstrail-bench-(\d+)\b", line)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            for pid in subprocess.run(["ip", "netns", "pids", m.group(0)], check=False,
                                      capture_output=True, text=True).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)  # an orphaned unbound of that run
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", m.group(0)], check=False, capture_output=True)


class UnboundNetns:
    """``with UnboundNetns() as ns:`` ns.name is the namespace, unbound on 127.0.0.1:53 in it."""

    def __init__(self, name: str | None = None, names: int = 500) -> None:
        self.name = name or f"dnstrail-bench-{os.getpid()}"
        self.n_names = names
        self.tmp = Path(tempfile.mkdtemp(prefix="dnstrail-bench-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._created = False

    @property
    def inode(self) -> int:
        """The namespace's inode: the ``netns`` a capture records for its processes."""
        return os.stat(f"/run/netns/{self.name}").st_ino

    def exec_argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _start(self) -> None:
        if os.geteuid() != 0:
            raise BenchSetupError("the capture benchmark needs root (network namespaces)")
        for tool in ("ip", "unbound", "dnsperf"):
            if shutil.which(tool) is None:
                raise BenchSetupError(f"{tool} is not installed")
        remove_stale()
        _run(["ip", "netns", "add", self.name])
        self._created = True
        _run(["ip", "-n", self.name, "link", "set", "lo", "up"])
        conf = self.tmp / "unbound.conf"
        data = []
        for i, name in enumerate(zone_names(self.n_names)):
            data.append(f'  local-data: "{name}. 300 IN A 10.77.{i // 250}.{i % 250 + 1}"')
            data.append(f'  local-data: "{name}. 300 IN AAAA fd00:77::{i:x}"')
        conf.write_text(
            "server:\n"
            "  interface: 127.0.0.1\n  port: 53\n  do-daemonize: no\n"
            f'  chroot: ""\n  username: ""\n  directory: "{self.tmp}"\n'
            f'  pidfile: "{self.tmp}/unbound.pid"\n  use-syslog: no\n  logfile: ""\n'
            "  verbosity: 0\n  num-threads: 1\n  do-ip6: no\n"
            "  access-control: 127.0.0.0/8 allow\n"
            '  local-zone: "." refuse\n'
            f'  local-zone: "{ZONE}." static\n' + "\n".join(data) + "\n"
            "remote-control:\n  control-enable: no\n"
        )
        _run(["unbound-checkconf", str(conf)])
        self.proc = subprocess.Popen(
            self.exec_argv(["unbound", "-d", "-c", str(conf)]),
            stdout=subprocess.DEVNULL, stderr=open(self.tmp / "unbound.log", "wb"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 15
        probe = zone_names(1)[0]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchSetupError(
                    f"unbound exited: {(self.tmp / 'unbound.log').read_text()[-500:]}")
            out = subprocess.run(
                self.exec_argv(["dig", "+short", "+time=1", "+tries=1", "@127.0.0.1", probe]),
                check=False, capture_output=True, text=True, timeout=10,
            ).stdout
            if out.strip():
                return
            time.sleep(0.2)
        raise BenchSetupError("unbound did not answer within 15 s")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self._created:
            subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)
            self._created = False
        shutil.rmtree(self.tmp, ignore_errors=True)
