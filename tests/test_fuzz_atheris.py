"""Each coverage-guided fuzzer (tests/fuzz/fuzz_*.py, atheris) runs for a few seconds from the
regression corpus: the harness starts, replays the corpus, mutates, and finds nothing. A longer
run is how new crashers are found (docs/fuzzing.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "tests" / "fuzz"
TARGETS = ("decode", "tcp", "pcap")
SECONDS = int(os.environ.get("DNSTRAIL_FUZZ_SECONDS", "3"))


@pytest.mark.parametrize("target", TARGETS)
def test_fuzzer_runs_clean_from_the_corpus(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is in the dev extras (pyproject.toml)")
    corpus = tmp_path / "corpus"  # libFuzzer adds what it finds to its first directory
    shutil.copytree(FUZZ / "corpus" / target, corpus)
    before = len(list(corpus.iterdir()))
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    proc = subprocess.run(
        [sys.executable, str(FUZZ / f"fuzz_{target}.py"), f"-max_total_time={SECONDS}",
         "-timeout=20", "-rss_limit_mb=2048", "-max_len=8192", "-print_final_stats=1",
         f"-artifact_prefix={artifacts}/", str(corpus)],
        check=False, cwd=tmp_path, capture_output=True, text=True, timeout=SECONDS + 120,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    log = proc.stdout + proc.stderr
    found = sorted(p.name for p in artifacts.iterdir())
    assert proc.returncode == 0 and not found, f"fuzz_{target} found {found}:\n{log[-3000:]}"
    assert "INITED" in log and "Done" in log, log[-3000:]
    runs = [int(line.rsplit(":", 1)[1]) for line in log.splitlines()
            if line.startswith("stat::number_of_executed_units")]
    assert runs and runs[0] > before, f"only {runs} inputs ran:\n{log[-3000:]}"
