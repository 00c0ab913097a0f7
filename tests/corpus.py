"""Where the shared corpus of real DNS captures lives (../shared/corpus beside the repo).

Tests read the files in place and skip, with the path in the reason, where they are absent.
"""

from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def corpus(name: str) -> Path:
    """Path of a corpus file (e.g. ``benign/dns_lab.pcapng``); skip the test if it is absent."""
    path = CORPUS / name
    if not path.exists():
        pytest.skip(f"corpus file {path} is absent")
    return path
