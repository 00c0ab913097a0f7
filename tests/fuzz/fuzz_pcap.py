"""atheris: a pcap/pcapng file -> import_pcap -> reassembled, decoded rows (or a clean refusal).

    .venv/bin/python tests/fuzz/fuzz_pcap.py -atheris_runs=5000 -artifact_prefix=/tmp/
    .venv/bin/python tests/fuzz/fuzz_pcap.py -max_total_time=600 /tmp/pcap-corpus \\
        tests/fuzz/corpus/pcap

Each input is imported twice into a scratch directory (the property includes determinism),
so this target runs at a few hundred inputs a second at best. A crash or a broken property
leaves the input as ``crash-*``: add it to tests/fuzz/corpus/pcap/ once fixed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

try:
    from tests.fuzz import _harness
except ImportError:  # run as a script: the repository is not on sys.path yet
    import _harness  # type: ignore[no-redef]

_harness.instrumented()

from tests.fuzz.targets import check_pcap

_SCRATCH = tempfile.TemporaryDirectory(prefix="dnstrail-fuzz-pcap-")


def test_one_input(data: bytes) -> None:
    work = Path(_SCRATCH.name) / "w"
    try:
        check_pcap(data, work)
    finally:
        for p in work.glob("*"):
            if p.is_file():
                p.unlink()


if __name__ == "__main__":
    _harness.run(test_one_input)
