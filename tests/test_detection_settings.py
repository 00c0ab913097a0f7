"""Detector settings: the TOML file, --set, --allow, their errors, and their documentation."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from analyze import load
from analyze.commands import detection_kwargs, detection_options
from analyze.findings import resolvers, tunneling
from analyze.findings.settings import SettingsError, load_settings, thresholds_for
from tests.test_detection_resolvers import _corpus

DOC = Path(__file__).resolve().parents[1] / "docs" / "findings.md"


@pytest.mark.parametrize("module", [tunneling, resolvers], ids=["tunneling", "resolvers"])
def test_every_threshold_is_documented_with_its_default(module: Any) -> None:
    text = DOC.read_text()
    for f in dataclasses.fields(module.Thresholds):
        row = re.search(rf"^\| `{f.name}` \| ([^|]+) \| (.+) \|$", text, re.MULTILINE)
        assert row, f"docs/findings.md has no row for {f.name}"
        assert row.group(1).strip() == str(f.default), (f.name, row.group(1), f.default)
        assert len(row.group(2)) > 20  # the reasoning, not just a name


def test_file_then_set(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("[tunneling]\nmin_answers = 20\nentropy = 4\n[resolvers]\n"
                    "silent_span_s = 5\n[known_services]\nallow = ['Scan.Example-AV.com.']\n")
    s = load_settings(path, ["tunneling.min_answers=30", "min_queries=4"], ["other.example"])
    th = thresholds_for("tunneling", tunneling.Thresholds, s)
    assert (th.min_answers, th.entropy, th.min_distinct) == (30, 4.0, 6)
    assert isinstance(th.entropy, float)
    rth = thresholds_for("resolvers", resolvers.Thresholds, s)
    assert (rth.min_queries, rth.silent_span_s) == (4, 5.0)
    assert s.allow == ("scan.example-av.com", "other.example")


@pytest.mark.parametrize(("sets", "message"), [
    (["tunneling.nope=1"], "unknown setting tunneling.nope"),
    (["nope=1"], "'nope' is unknown"),
    (["min_queries"], "NAME=VALUE"),
    (["tunneling.min_answers=many"], "'many' is not an integer"),
    (["tunneling.entropy=-1"], "negative"),
    (["dns.min_queries=1"], "unknown settings section 'dns'"),
])
def test_bad_settings_name_the_setting(sets: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(sets=sets)


def test_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("[tunneling\n")
    with pytest.raises(SettingsError, match="s.toml"):
        load_settings(path)
    path.write_text("[tunneling]\nmin_answers = 'x'\n")
    with pytest.raises(SettingsError, match="tunneling.min_answers"):
        load_settings(path)


@click.command()
@click.argument("capture")
@click.option("--work-dir")
@detection_options
def _findings(capture: str, work_dir: str, sets: tuple[str, ...], settings_file: str | None,
              allow: tuple[str, ...]) -> None:
    """What `dnstrail report` does with the options: find, then print kind/severity/domain."""
    kw = detection_kwargs(sets, settings_file, allow)
    for f in load(capture, work_dir=work_dir).findings(**kw):
        click.echo(f"{f.kind} {f.severity} {f.registered_domain}")


@pytest.mark.corpus
def test_options_on_a_real_tunnel(tmp_path: Path) -> None:
    """dnscat2 from the corpus: flagged by default; not with min_distinct above its 12
    names (and no answer rule at min_answers 40); at info once its domain is allowed."""
    corpus = _corpus()
    if corpus is None:
        pytest.skip("../shared/corpus is absent")
    cap = str(corpus / "tunnels" / "dnscat2.pcap")
    run = CliRunner().invoke
    work = ["--work-dir", str(tmp_path)]
    r = run(_findings, [cap, *work])
    assert r.exit_code == 0 and "tunneling high biillpi.com" in r.output, r.output
    r = run(_findings, [cap, *work, "--set", "tunneling.min_distinct=13", "--set",
                        "min_answers=40"])
    assert r.exit_code == 0 and "tunneling" not in r.output, r.output
    r = run(_findings, [cap, *work, "--allow", "biillpi.com"])
    assert r.exit_code == 0 and "tunneling low biillpi.com" in r.output, r.output
    r = run(_findings, [cap, *work, "--set", "tunneling.min_distinct=lots"])
    assert r.exit_code == 2 and "tunneling.min_distinct: 'lots' is not an integer" in r.output
    settings = tmp_path / "s.toml"
    settings.write_text("[tunneling]\nmin_distinct = 13\nmin_answers = 40\n")
    r = run(_findings, [cap, *work, "--settings", str(settings)])
    assert r.exit_code == 0 and "tunneling" not in r.output, r.output
