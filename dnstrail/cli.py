"""The `dnstrail` command: a thin click layer over the capture and analyze libraries.

Every subcommand lives beside the library it drives (``capture.commands``,
``analyze.commands``, ``analyze.report.commands``) and only parses options, calls one library
function and prints. This module is the one error gate: a ``DnstrailError`` (or an OSError the
user can act on) becomes ``Error: ...`` on one line and exit status 1; ``--verbose`` shows the
traceback.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

import click

from dnstrail import __version__
from dnstrail.errors import DnstrailError


class _Gate(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (DnstrailError, OSError) as exc:
            if ctx.meta.get("dnstrail.verbose"):
                traceback.print_exc()
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            click.echo(f"Error: {msg}", err=True)
            sys.exit(getattr(exc, "exit_code", 1))


@click.group(cls=_Gate, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dnstrail")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Record every DNS message on a node with eBPF, then replay and analyze it offline.

    \b
    sudo dnstrail record -o CAPTURE_DIR      record until Ctrl-C (needs BCC)
    dnstrail replay CAPTURE_DIR              timeline of DNS messages and lookups
    dnstrail report CAPTURE_DIR -o r.html    findings as HTML, Markdown or JSON
    dnstrail import FILE.pcap -o CAPTURE_DIR turn a pcap into a capture
    """
    ctx.meta["dnstrail.verbose"] = verbose


def _register() -> None:
    # Each import is guarded so that a half-built tree still offers the other commands; the
    # modules themselves never import bcc at import time.
    import importlib

    for module, names in (
        ("capture.commands", ("record",)),
        ("analyze.commands", ("import_", "replay")),
        ("analyze.report.commands", ("report",)),
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and (exc.name == module or module.startswith(exc.name + ".")):
                continue
            raise
        for name in names:
            cmd = getattr(mod, name, None)
            if isinstance(cmd, click.Command):
                main.add_command(cmd)


_register()
