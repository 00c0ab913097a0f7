"""Errors of the analyzer: each docstring is the one-line message a person acts on.

Raise them bare (``raise PcapError()``) to get the docstring as the message, or with a more
specific one (``raise PcapError(f"{path}: not a pcap or pcapng file (magic 0x1234)")``).
Damaged DNS payloads are never raised: they become rows with ``error``/``error_offset``.
"""

from __future__ import annotations

from dnstrail.errors import DnstrailError


class AnalyzeError(DnstrailError):
    """the capture could not be analyzed"""

    #: Process exit code the CLI uses for this error.
    exit_code: int = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message if message is not None else (type(self).__doc__ or "").strip())


class PcapError(AnalyzeError):
    """not a pcap or pcapng file (or it is damaged beyond the first packet): check the file, or convert it with `editcap -F pcap IN OUT`"""


class UnsupportedLinkType(PcapError):
    """unsupported link type: dnstrail import reads Ethernet, Linux cooked (SLL/SLL2), loopback/NULL and raw IP captures"""


class OutputExists(AnalyzeError):
    """the output directory already holds a capture: choose a new directory or pass --append"""


class AppendMismatch(AnalyzeError):
    """cannot append: the existing capture directory was not made by `dnstrail import`"""


class CaptureNotFound(AnalyzeError):
    """no such capture directory or pcap file"""


class NotACapture(AnalyzeError):
    """not a dnstrail capture directory (no manifest.json) nor a pcap file"""


class CaptureTooNew(AnalyzeError):
    """the capture was written by a newer dnstrail: upgrade dnstrail to read it"""


class CaptureDamaged(AnalyzeError):
    """a capture file does not match the sha256 in its manifest: the capture was modified or damaged (--no-verify reads it anyway)"""


class BadFilter(AnalyzeError):
    """a filter value could not be understood"""


__all__ = [
    "AnalyzeError",
    "AppendMismatch",
    "BadFilter",
    "CaptureDamaged",
    "CaptureNotFound",
    "CaptureTooNew",
    "NotACapture",
    "OutputExists",
    "PcapError",
    "UnsupportedLinkType",
]
