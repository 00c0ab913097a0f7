"""``dnstrail verify``: a thin click command over ``analyze.verify``."""

from __future__ import annotations

import json
import sys

import click


@click.command("verify")
@click.argument("captures", nargs=-1, required=True, metavar="CAPTURE...")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="text for a person; json for a script or a ticket.")
def verify(captures: tuple[str, ...], fmt: str) -> None:
    """Check CAPTURE... (directories) against their manifests and say how each ended.

    \b
    Every file's size, SHA-256 and row count against manifest.json; missing, extra and
    changed files; the format version; how the capture ended (complete, stopped by a
    signal, failed, or died with the manifest still 'running'); lost events in words.
    The evidence id is the SHA-256 of manifest.json: note it in the ticket.
    Exit status (the worst capture decides):
      0 verified: every file matches, ended normally, nothing lost
      1 error (not a capture directory, unreadable)      2 bad option
      3 every file matches, ended normally, but events were lost (counted)
      4 every finished file matches, but the capture ended abnormally
      5 damaged: a file is missing, changed, cut or extra, or the manifest is
    """
    from analyze.verify import exit_code, format_text
    from analyze.verify import verify as run

    results = run(list(captures))
    if fmt == "json":
        doc = {"captures": [r.to_dict() for r in results], "exit_code": exit_code(results)}
        click.echo(json.dumps(doc, indent=2, ensure_ascii=True))
    else:
        for r in results:
            for line in format_text(r):
                click.echo(line)
    sys.exit(exit_code(results))


__all__ = ["verify"]
