"""Session fixtures for the lab, and the CI rule: a skipped `live`/`lab` test is a failure
when CI=true, so that a broken install cannot pass by skipping everything that matters."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab import Lab, LabError, NetNS, build_all, cleanup_stale
from tests.lab.require import require_lab, require_root, require_root_bcc

__all__ = ["require_lab", "require_root", "require_root_bcc"]

STRICT_MARKERS = ("live", "lab")

pytest_plugins = ["pytester"]


def ci_strict() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def pytest_sessionstart(session: pytest.Session) -> None:
    # the analyzer's cache of derived tables: one per test session, never the user's
    if "DNSTRAIL_WORK_DIR" not in os.environ:
        import tempfile

        os.environ["DNSTRAIL_WORK_DIR"] = tempfile.mkdtemp(prefix="dnstrail-work-")
    # leftovers of earlier crashed runs (only labs whose owner process is gone)
    if os.geteuid() == 0:
        cleanup_stale()
    # a SIGTERM (CI timeout, kill) must still run the lab's finalizers: make it an interrupt
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)


def _sigterm_to_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # a test that uses the lab is a lab test, whether or not its author marked it
    for item in items:
        names = getattr(item, "fixturenames", ())
        if any(f in names for f in ("lab", "lab_ns", "pods_root", "lab_clients")):
            item.add_marker(pytest.mark.lab)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    if not (rep.skipped and ci_strict()) or hasattr(rep, "wasxfail"):
        return
    marks = [m for m in STRICT_MARKERS if item.get_closest_marker(m) is not None]
    if not marks:
        return
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    rep.outcome = "failed"
    rep.longrepr = (f"CI=true: this {'/'.join(marks)} test was skipped, which CI treats as a "
                    f"failure (a broken install must not pass): {reason}")


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """One lab for the session: server namespace with two dnsmasq, default zone lab.test."""
    require_lab()
    with Lab() as the_lab:
        yield the_lab


@pytest.fixture
def lab_ns(lab: Lab) -> Iterator[NetNS]:
    """A fresh client namespace using the lab's first server, short timeouts; removed after
    the test."""
    ns = lab.client_ns(timeout=1, attempts=2)
    yield ns
    lab.remove_ns(ns)


@pytest.fixture(scope="session")
def pods_root(lab: Lab) -> Path:
    return lab.pods_root


@pytest.fixture(scope="session")
def lab_clients() -> dict[str, Path]:
    """The built clients: {"musl": path, "go": path} (built once, cached in tests/lab/bin)."""
    require_lab()
    try:
        return build_all()
    except LabError as exc:
        pytest.skip(f"cannot build the lab clients: {exc}")
