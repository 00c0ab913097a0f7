"""Errors of ``dnstrail record``: each docstring is the one-line message a person acts on.

Raise them bare (``raise BccMissing()``) to get the docstring as the message, or with a more
specific message (``raise LoadFailed(f"...: {detail}")``).
"""

from __future__ import annotations

from dnstrail.errors import DnstrailError


class CaptureError(DnstrailError):
    """The capture could not be made."""

    #: Process exit code the CLI uses for this error.
    exit_code: int = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message if message is not None else (type(self).__doc__ or "").strip())


class BccMissing(CaptureError):
    """bcc is not importable: apt-get install python3-bpfcc (the PyPI package 'bcc' is unrelated), then re-run deploy/setup.sh"""


class HeadersMissing(CaptureError):
    """kernel headers are missing: apt-get install linux-headers-$(uname -r) (or run deploy/setup.sh --lab, which links the nearest Debian headers)"""


class TracefsMissing(CaptureError):
    """tracefs is not mounted: mount -t tracefs tracefs /sys/kernel/tracing"""


class NotPermitted(CaptureError):
    """not permitted to load BPF programs: run as root (sudo dnstrail record ...) or grant CAP_BPF and CAP_PERFMON"""


class LoadFailed(CaptureError):
    """the BPF program failed to compile or attach: run with --print-bpf to see the C source and check the kernel log (dmesg)"""


class OutputNotEmpty(CaptureError):
    """the output directory is not empty: choose a new directory or pass --append to continue that capture"""


class Interrupted(CaptureError):
    """interrupted before tracing began: nothing was recorded and no capture directory was written"""

    exit_code = 130  # 128 + SIGINT, as a shell reports a command ended by Ctrl-C


class DiskFull(CaptureError):
    """the disk is full: the capture stopped; finished files are kept and listed in manifest.json"""

    exit_code = 3


__all__ = [
    "BccMissing",
    "CaptureError",
    "DiskFull",
    "HeadersMissing",
    "Interrupted",
    "LoadFailed",
    "NotPermitted",
    "OutputNotEmpty",
    "TracefsMissing",
]
