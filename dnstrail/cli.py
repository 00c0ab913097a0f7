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

#: Subcommand name -> (module, attribute). A module is imported only when its command runs
#: (or for --help), so `dnstrail record` never loads the analyzer: analyze.* imports pandas,
#: ~45 MB resident in a recorder that runs for days.
_COMMANDS: dict[str, tuple[str, str]] = {
    "record": ("capture.commands", "record"),
    "import": ("analyze.commands", "import_"),
    "replay": ("analyze.commands", "replay"),
    "report": ("analyze.report.commands", "report"),
    "verify": ("analyze.verify_command", "verify"),
    "export": ("analyze.commands", "export"),
}


def _load(module: str, name: str) -> click.Command | None:
    """The command, or None when its module is absent from a half-built tree (the other
    commands still work); the modules themselves never import bcc at import time."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module or module.startswith(exc.name + ".")):
            return None
        raise
    cmd = getattr(mod, name, None)
    return cmd if isinstance(cmd, click.Command) else None


class _Gate(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        names.update(n for n, (mod, attr) in _COMMANDS.items() if _load(mod, attr) is not None)
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and cmd_name in _COMMANDS:
            cmd = _load(*_COMMANDS[cmd_name])
        return cmd

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
    dnstrail export CAPTURE_DIR --format pcapng -o F   pcapng, zeek, jsonl or csv
    """
    ctx.meta["dnstrail.verbose"] = verbose
