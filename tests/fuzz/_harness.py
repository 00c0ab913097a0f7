"""Shared start-up of the atheris harnesses (tests/fuzz/fuzz_*.py): the repository on sys.path,
the analyzer's modules instrumented for coverage, libFuzzer's flags passed through."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def run(target: Callable[[bytes], object]) -> None:
    """Fuzz ``target`` with libFuzzer's command line (``-atheris_runs=N``, ``-max_total_time``,
    a corpus directory...). An exception out of ``target`` is a crash: libFuzzer writes the
    input as ``crash-*`` (``-artifact_prefix=DIR/``) and exits non-zero."""
    import atheris

    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


def instrumented() -> None:
    """Import the code under test with coverage instrumentation (before the targets import it)."""
    import atheris

    with atheris.instrument_imports(include=["analyze"]):
        import analyze.decode
        import analyze.names
        import analyze.pcap
        import analyze.tcp  # noqa: F401
