"""atheris: one DNS payload -> row (decode_message, decode_table, decode_messages).

    .venv/bin/python tests/fuzz/fuzz_decode.py -atheris_runs=100000 -artifact_prefix=/tmp/
    .venv/bin/python tests/fuzz/fuzz_decode.py -max_total_time=600 /tmp/decode-corpus \\
        tests/fuzz/corpus/decode

A crash or a broken property (PropertyBroken) leaves the input as ``crash-*``: add it to
tests/fuzz/corpus/decode/ once fixed (docs/fuzzing.md).
"""

from __future__ import annotations

try:
    from tests.fuzz import _harness
except ImportError:  # run as a script: the repository is not on sys.path yet
    import _harness  # type: ignore[no-redef]

_harness.instrumented()

from tests.fuzz.targets import check_decode


def test_one_input(data: bytes) -> None:
    check_decode(data)


if __name__ == "__main__":
    _harness.run(test_one_input)
