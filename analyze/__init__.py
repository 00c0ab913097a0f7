"""dnstrail analyze: read captures, decode DNS, match transactions, attribute pods, find.

The analyzer never imports bcc; it runs on a laptop or in Jupyter::

    from analyze import load
    cap = load("capture-dir")          # or several directories, or a .pcap
    cap.transactions, cap.lookups, cap.filter(namespace="shop").by_pod()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from analyze.capture import Capture, load

__all__ = ["Capture", "load"]


def __getattr__(name: str) -> Any:
    # Imported on use so that `import analyze.errors` (the CLI, the recorder) stays light.
    if name in __all__:
        from analyze import capture

        return getattr(capture, name)
    raise AttributeError(f"module 'analyze' has no attribute {name!r}")
