"""The dnstrail test lab: network namespaces with dnsmasq/unbound, fake pods, real clients.

See tests/lab/README.md.
"""

from ._sys import LabError, cgroup2_mount
from .clients import build_all, go_client, musl_client, uring_client
from .lab import (
    DEAD_ADDR,
    REFUSED_ADDR,
    SERVER2_ADDR,
    SERVER_ADDR,
    UNBOUND_ADDR,
    DnsperfResult,
    IodineResult,
    Lab,
    LabProcess,
    LabResult,
    NetNS,
    Server,
)
from .pods import FakePod, kubelet_cgroup_dirs
from .registry import cleanup_stale
from .zone import Zone, default_zone

__all__ = [
    "DEAD_ADDR",
    "REFUSED_ADDR",
    "SERVER2_ADDR",
    "SERVER_ADDR",
    "UNBOUND_ADDR",
    "DnsperfResult",
    "FakePod",
    "IodineResult",
    "Lab",
    "LabError",
    "LabProcess",
    "LabResult",
    "NetNS",
    "Server",
    "Zone",
    "build_all",
    "cgroup2_mount",
    "cleanup_stale",
    "default_zone",
    "go_client",
    "kubelet_cgroup_dirs",
    "musl_client",
    "uring_client",
]
