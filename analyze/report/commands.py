"""``dnstrail report``: load captures, find, render. The work is in analyze.findings/report."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from analyze.commands import (
    detection_kwargs,
    detection_options,
    evidence_options,
    filter_options,
    given_filters,
)
from analyze.findings._common import SEVERITIES, severity_rank

#: Exit status when --fail-on is given and a finding at or above that severity exists.
EXIT_FINDINGS = 3


class _Progress:
    """Stage-by-stage progress on stderr, only when stderr is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.t0 = time.monotonic()

    def __call__(self, stage: str) -> None:
        if self.enabled:
            msg = f"\r[{time.monotonic() - self.t0:6.1f}s] {stage}"
            sys.stderr.write(msg.ljust(60)[:79])
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 79 + "\r")
            sys.stderr.flush()


def _local_or_url(ctx: Any, param: Any, value: tuple[str, ...]) -> tuple[str, ...]:
    """A capture path must exist, unless it is a URL (``s3://...``, read through fsspec)."""
    from analyze.fleet import is_remote

    for v in value:
        if not is_remote(v) and not Path(v).exists():
            raise click.BadParameter(f"Path {v!r} does not exist.", ctx=ctx, param=param)
    return value


@click.command("report")
@click.argument("captures", nargs=-1, required=True, callback=_local_or_url)
@filter_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
              help="Write the report here (format from the suffix .html/.md/.json). "
                   "Without it the report goes to stdout.")
@click.option("--format", "fmt", type=click.Choice(["html", "md", "json"]),
              help="Report format (default: from -o's suffix, else md).")
@click.option("--baseline", multiple=True, callback=_local_or_url,
              help="A capture of known-good behaviour: report domains a workload resolves "
                   "that the baseline never saw (new_domain). Repeatable.")
@detection_options
@click.option("--fail-on", type=click.Choice([*SEVERITIES, "incomplete"]),
              help="Exit with status 3 when a finding at or above this severity exists; "
                   "'incomplete': exit 4 when the evidence is incomplete (a capture that "
                   "died, damaged or missing files, lost events, record-time filters, "
                   "--no-verify).")
@click.option("--min-severity", type=click.Choice(list(SEVERITIES)), default="info",
              show_default=True, help="Leave out findings below this severity.")
@click.option("--no-plots", is_flag=True, help="HTML without plots (faster).")
@evidence_options(timeout=False)
@click.option("--skip-damaged", is_flag=True,
              help="Name damaged evidence files in the report and analyze the rest (default: "
                   "stop with an error).")
@click.option("--scheduler", metavar="tcp://HOST:PORT",
              help="Ingest each capture on this Dask distributed scheduler's workers (they "
                   "need no shared filesystem); the findings are the same. docs/deploy.md.")
def report(captures: tuple[str, ...], output: str | None, fmt: str | None,
           baseline: tuple[str, ...], sets: tuple[str, ...], settings_file: str | None,
           allow: tuple[str, ...], fail_on: str | None, min_severity: str, no_plots: bool,
           work_dir: str | None, no_verify: bool, skip_damaged: bool,
           scheduler: str | None, **filters: Any) -> None:
    """Find problems and threats in CAPTURE... (directories or pcaps) and report them.

    \b
    dnstrail report cap/ -o report.html     self-contained HTML with plots
    dnstrail report cap/ --format json      versioned JSON on stdout
    dnstrail report cap/ --baseline last-week/ --fail-on high
    dnstrail report cap/ --set tunneling.min_answers=20 --allow sophosxl.net
    dnstrail report s3://bucket/node-a s3://bucket/node-b --scheduler tcp://dask:8786
    Exit status: 0 done, 1 error, 3 a finding at or above --fail-on,
    4 incomplete evidence with --fail-on incomplete.
    """
    from analyze.capture import load  # direct: works even if `analyze` resolves as a namespace
    from analyze.report import format_for, render

    fmt = format_for(output, fmt)
    detection = detection_kwargs(sets, settings_file, allow)  # bad values fail before loading
    progress = _Progress()
    progress(f"loading {len(captures)} capture(s)")
    opts = {"work_dir": work_dir, "verify": not no_verify,
            "on_damage": "skip" if skip_damaged else "raise", "scheduler": scheduler}
    capture = load(list(captures), **opts)  # type: ignore[arg-type]
    chosen = given_filters(filters)
    if chosen:  # the report says it is filtered (summary.filters, a banner)
        capture = capture.filter(**chosen)
    base = None
    if baseline:
        progress("loading baseline")
        base = load(list(baseline), **opts)  # type: ignore[arg-type]
    findings = capture.findings(baseline=base, min_severity=min_severity,
                                progress=lambda name: progress(f"finding: {name}"),
                                **detection)
    progress(f"rendering {fmt}")
    text = render(capture, findings, fmt, output, plots=not no_plots)
    progress.done()
    if output is None:
        click.echo(text, nl=not text.endswith("\n"))
    else:
        counts = {s: sum(f.severity == s for f in findings) for s in reversed(SEVERITIES)}
        click.echo(f"{Path(output)}: {len(findings)} findings ("
                   + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")", err=True)
    if fail_on == "incomplete":
        from analyze.completeness import EXIT_INCOMPLETE, completeness

        if not completeness(capture)["complete"]:
            sys.exit(EXIT_INCOMPLETE)
    elif fail_on is not None and any(f.rank >= severity_rank(fail_on) for f in findings):
        sys.exit(EXIT_FINDINGS)
