"""deploy/setup.sh: its options as --help says them, and the Jupyter kernel it registers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ci_strict

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "deploy" / "setup.sh"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SETUP), *args], capture_output=True, text=True,
                          timeout=30, check=False)


def test_help_lists_every_option_and_nothing_else() -> None:
    r = _run("--help")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert all(line.startswith("#") for line in lines), lines  # only the header comment
    for option in ("--lab", "--jupyter"):
        assert f"deploy/setup.sh {option}" in r.stdout
    assert ".venv/bin/jupyter lab notebooks/incident.ipynb" in r.stdout
    bad = _run("--nope")
    assert bad.returncode == 2 and "unknown option --nope" in bad.stderr


def test_jupyter_extra_is_declared() -> None:
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert {d.split(">")[0] for d in extras["jupyter"]} == {"jupyterlab", "ipykernel"}


def test_the_venv_kernel_when_setup_ran_with_jupyter() -> None:
    """After ``setup.sh --jupyter`` the kernel ``dnstrail`` is in the venv and runs its python."""
    spec = Path(sys.prefix) / "share" / "jupyter" / "kernels" / "dnstrail" / "kernel.json"
    if not spec.exists():
        if ci_strict():  # deploy/test.sh runs setup.sh --lab --jupyter
            pytest.fail(f"CI=true: {spec} is missing after deploy/setup.sh --jupyter")
        pytest.skip("deploy/setup.sh --jupyter did not run for this venv")
    kernel = json.loads(spec.read_text())
    assert Path(kernel["argv"][0]).resolve() == Path(sys.executable).resolve()
    assert kernel["argv"][kernel["argv"].index("-m") + 1] == "ipykernel_launcher"
