"""The lab itself, exercised with real clients: every client resolves inside a fake pod and the
answer is the zone's; TCP and EDNS fallbacks happen; dead servers time out; teardown is clean;
and no lab query can reach this machine's own resolver."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.lab import Lab, LabError, NetNS, cgroup2_mount, default_zone
from tests.lab.require import require_lab

pytestmark = pytest.mark.lab

WWW = "www.lab.test"


def zone_addrs(lab: Lab, name: str) -> set[str]:
    """Addresses name resolves to in the lab zone, following CNAMEs (bounded)."""
    for _ in range(8):
        recs = lab.zone[name]
        cname = [v for t, v in recs if t == "CNAME"]
        if not cname:
            return {v for t, v in recs if t in ("A", "AAAA")}
        name = cname[0]
    raise AssertionError("CNAME chain too long")


def addrs_in(out: str) -> set[str]:
    found = set()
    for tok in out.split():
        try:
            found.add(str(ipaddress.ip_address(tok)))
        except ValueError:
            pass
    return found


# ------------------------------------------------------------------ clients in fake pods
@pytest.mark.parametrize("style", ["cgroupfs", "systemd"])
def test_getent_in_fake_pod(lab: Lab, style: str) -> None:
    ns = lab.client_ns(search=["default.svc.cluster.local", "svc.cluster.local",
                               "cluster.local"], ndots=5, timeout=1, attempts=2)
    pod = lab.fake_pod(namespace="shop", name=f"web-{style}", style=style)
    r = lab.run(ns, ["getent", "ahosts", "alias.lab.test"], pod=pod, timeout=15)
    assert r.returncode == 0, r.stderr
    assert addrs_in(r.stdout) == zone_addrs(lab, "alias.lab.test")
    # the search list was walked: the server saw the suffixed names first
    log = lab.server_log()
    assert "alias.lab.test.default.svc.cluster.local" in log
