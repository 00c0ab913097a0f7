"""atheris: TCP chunks of a few streams -> reassembled messages -> rows (tcp_rows).

    .venv/bin/python tests/fuzz/fuzz_tcp.py -atheris_runs=100000 -artifact_prefix=/tmp/
    .venv/bin/python tests/fuzz/fuzz_tcp.py -max_total_time=600 /tmp/tcp-corpus \\
        tests/fuzz/corpus/tcp

A crash or a broken property (PropertyBroken) leaves the input as ``crash-*``: add it to
tests/fuzz/corpus/tcp/ once fixed (docs/fuzzing.md).
"""

from __future__ import annotations

try:
    from tests.fuzz import _harness
except ImportError:  # run as a script: the repository is not on sys.path yet
    import _harness  # type: ignore[no-redef]

_harness.instrumented()

from tests.fuzz.targets import check_tcp


def test_one_input(data: bytes) -> None:
    check_tcp(data)


if __name__ == "__main__":
    _harness.run(test_one_input)
