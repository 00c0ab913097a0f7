"""dnstrail: offline forensic capture and replay analyzer for DNS."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dnstrail")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
