"""`record --pod` and the analyzer's `--pod` take the same forms (a pod UID, a name or
namespace/name, names as globs) and name the same pods: checked on the bundled sample
capture, whose pods snapshot the recorder side reads and whose attributed rows the analyzer
side filters."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from analyze import load
from analyze.errors import BadFilter
from capture import snapshot as snap
from capture.errors import CaptureError
from capture.recorder import RecordOptions
from capture.selectors import BadSelector, parse_pod

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "incident"
CART = "a53dc830-8927-4093-8222-52d84a644aa2"
FRONTEND = "7e83d6f0-73b2-4da3-bf41-ccc04304b094"
CHECKOUT = "bb0077d5-9761-4a8b-86e7-0727dcdbe6bb"

FORMS = [
    (CART, {CART}),
    (CART.upper().replace("-", "_"), {CART}),       # as systemd spells it in cgroup names
    ("cart-7c6b8d5f9-q4vnt", {CART}),
    ("payments/cart-7c6b8d5f9-q4vnt", {CART}),
    (" payments/cart-7c6b8d5f9-q4vnt ", {CART}),    # pasted with spaces
    ("cart-*", {CART}),
    ("shop/*", {FRONTEND, CHECKOUT}),
    ("s?op/[cf]*", {FRONTEND, CHECKOUT}),
    ("*/checkout-*", {CHECKOUT}),
    ("payments/frontend-*", set()),                  # the name is in another namespace
]
BAD = ["", "  ", "shop/", "/web", "a/b/c"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return load(SAMPLE, work_dir=tmp_path_factory.mktemp("work"))


def _sample_pods() -> list[snap.PodRow]:
    return [snap.PodRow(r["pod_uid"], r["namespace"], r["pod"], r["container"],
                        r["container_id"], r["source"])
            for r in pq.read_table(SAMPLE / "pods.parquet").to_pylist()]


@pytest.mark.parametrize(("form", "uids"), FORMS)
def test_record_and_analyzer_name_the_same_pods(sample, form: str, uids: set[str]) -> None:  # type: ignore[no-untyped-def]
    assert snap.pod_uids(form, _sample_pods()) == uids
    RecordOptions(output=Path("cap"), pods=(form,)).validate()
    tx = sample.filter(pod=form).transactions
    assert set(tx["pod_uid"].dropna().astype(str)) == uids
    if uids:
        assert len(tx) > 0


def test_a_uid_unknown_to_the_snapshot_still_selects() -> None:
    """The recorder takes a uid the pods snapshot does not know (its cgroups name it)."""
    uid = "0d5f2c1e-0000-4000-8000-000000000001"
    assert snap.pod_uids(uid.replace("-", "_"), _sample_pods()) == {uid}
    assert parse_pod(uid).uid == uid


@pytest.mark.parametrize("form", BAD)
def test_both_refuse_what_is_no_pod(sample, form: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadSelector, match="a pod UID, a pod name or namespace/name"):
        parse_pod(form)
    with pytest.raises(CaptureError, match="bad --pod"):
        RecordOptions(output=Path("cap"), pods=(form,)).validate()
    with pytest.raises(BadFilter, match="a pod UID, a pod name or namespace/name"):
        sample.filter(pod=form)


def test_the_commands_say_so(sample) -> None:  # type: ignore[no-untyped-def]
    """`dnstrail record --pod a/b/c` fails before anything is loaded, with the forms; the
    replay of the same value fails the same way."""
    from dnstrail.cli import main

    r = CliRunner().invoke(main, ["record", "-o", "/nonexistent/cap", "--pod", "a/b/c"])
    assert r.exit_code == 1 and "bad --pod 'a/b/c': a pod UID, a pod name" in r.output, r.output
    r = CliRunner().invoke(main, ["replay", str(SAMPLE), "--pod", "a/b/c"])
    assert r.exit_code == 1 and "'a/b/c': a pod UID, a pod name" in r.output, r.output
    r = CliRunner().invoke(main, ["replay", str(SAMPLE), "--pod", "shop/*"])
    assert r.exit_code == 0
    body = [ln for ln in r.output.splitlines() if re.match(r"\d\d:\d\d:\d\d\.\d{3} ", ln)]
    assert body and all(ln.split()[1].startswith("shop/") for ln in body), r.output


@pytest.mark.live
@pytest.mark.lab
def test_record_pod_glob_picks_up_a_pod_that_starts_later(lab, lab_clients, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`record --pod 'shop/glob-*'`: the pod there at the start is traced, one named by the
    glob that starts during the capture is traced too, one outside it is not."""
    import time

    from tests.test_record_live import Recording, event_table

    ns = lab.client_ns(timeout=1, attempts=2)
    first = lab.fake_pod("shop", "glob-1", container="app")
    other = lab.fake_pod("shop", "plain-1", container="app")
    out = tmp_path / "cap"
    opts = RecordOptions(output=out, pods=("shop/glob-*",), pods_root=lab.pods_root,
                         refilter_seconds=0.3)
    with Recording(opts) as rec:
        in_first = lab.resolve_musl(ns, ["www.lab.test"], pod=first)
        in_other = lab.resolve_musl(ns, ["www.lab.test"], pod=other)
        late = lab.fake_pod("shop", "glob-2", container="app")
        time.sleep(1.5)  # > refilter_seconds: the recorder sees the new pod and its cgroup
        in_late = lab.resolve_musl(ns, ["api.lab.test"], pod=late)
        summary = rec.stop()
    for r in (in_first, in_other, in_late):
        assert r.returncode == 0, r.stderr
    assert summary.pod_uids == [first.uid]  # what the start resolved
    pids = set(event_table(out, "messages").column("tgid").to_pylist())
    assert in_first.pid in pids and in_late.pid in pids
    assert in_other.pid not in pids
