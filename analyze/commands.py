"""`dnstrail replay` and `dnstrail import`: thin click commands over the analyze library."""

from __future__ import annotations

from typing import Any

import click

from analyze.reconstruct import DEFAULT_TIMEOUT_S

FILTERS = ("pod", "namespace", "container", "comm", "pid", "name", "rcode", "since", "until",
           "node")


def filter_options(command: Any) -> Any:
    """The filter options of ``replay`` and ``report`` (one definition, ``Capture.filter``)."""
    options = [
        click.option("--pod", help="Pod name glob (e.g. 'web-*'), NAMESPACE/NAME (globs), or "
                     "a pod UID."),
        click.option("--namespace", "-n", help="Namespace glob."),
        click.option("--container", help="Container name glob."),
        click.option("--comm", help="Thread or process name glob (dig matches dig's "
                     "isc-net-0000 thread)."),
        click.option("--pid", type=int, help="Process id (tgid)."),
        click.option("--name", help="Query name glob (e.g. '*.example.com')."),
        click.option("--rcode", help="Response code name or number; TIMEOUT for unanswered."),
        click.option("--since", help="ISO time, +10s / +2m from the capture start, or -30s / "
                     "-5m before its end."),
        click.option("--until", help="ISO time, +10s / +2m from the capture start, or -30s / "
                     "-5m before its end."),
        click.option("--node", help="Node (manifest host) glob."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def evidence_options(*, timeout: bool = True) -> Any:
    """How ``replay``, ``report`` and ``export`` read the evidence (one definition of
    ``--timeout``, ``--no-verify`` and ``--work-dir``, the keywords of ``load``)."""
    options = [
        click.option("--no-verify", is_flag=True, help="Do not check file sha256 sums."),
        click.option("--work-dir", type=click.Path(file_okay=False),
                     help="Cache of derived tables (default $DNSTRAIL_WORK_DIR, else "
                          "$XDG_CACHE_HOME/dnstrail): a second run on the same evidence "
                          "reuses it; the evidence is never written."),
    ]
    if timeout:
        options.insert(0, click.option(
            "--timeout", "timeout_s", type=float, default=DEFAULT_TIMEOUT_S, show_default=True,
            help="Seconds after which an unanswered query is a timeout."))

    def apply(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        return command
    return apply


# --- detector settings (docs/findings.md): --set, --settings, --allow ---------------------
def detection_options(command: Any) -> Any:
    """``--set NAME=VALUE``, ``--settings FILE`` and ``--allow DOMAIN|FILE`` for a command
    that computes findings; ``detection_kwargs`` turns them into ``find``'s keywords."""
    options = [
        click.option("--set", "sets", multiple=True, metavar="NAME=VALUE",
                     help="A detector threshold, e.g. tunneling.min_answers=20 or "
                          "silent_span_s=3 (repeatable; names and defaults: "
                          "docs/findings.md)."),
        click.option("--settings", "settings_file", type=click.Path(exists=True,
                                                                      dir_okay=False),
                     help="TOML file of detector thresholds ([tunneling], [resolvers]) and "
                          "[known_services] allow = [...]; --set wins over it."),
        click.option("--allow", "allow", multiple=True, metavar="DOMAIN|FILE",
                     help="A domain whose encoded lookups are expected (a known service: "
                          "its tunneling findings stay at info/low), repeatable; an existing "
                          "file is an allow file of 'WORKLOAD-GLOB DOMAIN-GLOB' lines for "
                          "new_domain (docs/report.md)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def detection_kwargs(sets: tuple[str, ...], settings_file: str | None,
                     allow: tuple[str, ...]) -> dict[str, Any]:
    """``find``'s ``settings`` and ``allow`` (the allow file, at most one) from the options
    of ``detection_options``; a bad name or value is a click.BadParameter."""
    from pathlib import Path

    from analyze.findings.settings import SettingsError, load_settings

    files = [a for a in allow if Path(a).is_file()]
    if len(files) > 1:
        raise click.BadParameter("at most one allow file", param_hint="--allow")
    domains = [a for a in allow if a not in files]
    try:
        settings = load_settings(settings_file, sets, domains)
    except SettingsError as exc:
        raise click.BadParameter(str(exc), param_hint="--set/--settings/--allow") from None
    return {"settings": settings, "allow": files[0] if files else None}
# --- end of detector settings -----------------------------------------------------------


def given_filters(values: dict[str, Any]) -> dict[str, Any]:
    """The filter options that were given, by name."""
    return {k: values[k] for k in FILTERS if values.get(k) is not None}


# --- replay --against (one block: the options, and the run behind them) ---------------------

def against_options(command: Any) -> Any:
    """``--against`` and its limits (analyze.against)."""
    from analyze import against as a

    options = [
        click.option("--against", "against_addr", metavar="ADDR[:PORT]",
                     help="Ask the resolver at this IP address (port 53 unless given; "
                          "[V6]:PORT) each distinct name and type the capture's clients "
                          "asked, and compare its answers with the captured ones. Nothing "
                          "is sent anywhere else."),
        click.option("--rate", type=float, default=a.DEFAULT_RATE, show_default=True,
                     help="--against: queries per second at most."),
        click.option("--max-queries", type=int, default=a.DEFAULT_MAX_QUERIES,
                     show_default=True,
                     help=f"--against: queries sent at most (more than {a.QUERY_CEILING} "
                          "only with --exceed-ceiling)."),
        click.option("--query-timeout", type=float, default=a.DEFAULT_QUERY_TIMEOUT_S,
                     show_default=True, help="--against: seconds to wait for each answer."),
        click.option("--exceed-ceiling", is_flag=True,
                     help=f"--against: allow --max-queries over {a.QUERY_CEILING} and "
                          f"--rate over {a.RATE_CEILING:.0f}."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _run_against(cap: Any, addr: str, *, fmt: str, width: int | None, rate: float,
                 max_queries: int, query_timeout: float, exceed_ceiling: bool) -> None:
    import json

    from analyze.against import against, check_limits, format_against, parse_target
    from analyze.replay import terminal_width

    if fmt == "jsonl":
        raise click.UsageError("--against prints a table or --format json")
    check_limits(rate, max_queries, query_timeout, exceed_ceiling=exceed_ceiling)
    target = parse_target(addr)
    click.echo(f"asking {target} at most {max_queries} queries, {rate:g}/s ...", err=True)
    result = against(cap, target, rate=rate, max_queries=max_queries,
                     timeout_s=query_timeout, exceed_ceiling=exceed_ceiling)
    if fmt == "json":
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=True, default=str))
        return
    for line in format_against(result, width=terminal_width() if width is None else width):
        click.echo(line)

# --- end of replay --against -------------------------------------------------------------


@click.command("replay")
@click.argument("captures", nargs=-1, required=True, metavar="CAPTURE...")
@filter_options
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl", "json"]), default="table",
              show_default=True, help="table fits --width columns; jsonl has every column; "
              "json: the --against result as one document.")
@click.option("--lookups", is_flag=True, help="One line per resolver call (search-list "
              "walk, A+AAAA, retries) instead of per transaction.")
@click.option("--messages", is_flag=True, help="One line per DNS message.")
@click.option("--width", type=int, help="Table width (default: the terminal's, $COLUMNS, "
              "else 80; 0: no limit).")
@evidence_options()
@against_options
def replay(captures: tuple[str, ...], pod: str | None, namespace: str | None,
           container: str | None, comm: str | None, pid: int | None, name: str | None,
           rcode: str | None, since: str | None, until: str | None, node: str | None,
           fmt: str, lookups: bool, messages: bool, width: int | None, timeout_s: float,
           no_verify: bool, work_dir: str | None,
           against_addr: str | None, rate: float, max_queries: int, query_timeout: float,
           exceed_ceiling: bool) -> None:
    """Show the DNS timeline of one or more captures (directories or pcaps) in time
    order, or ask a resolver the captured questions again (--against).

    \b
    One line per transaction by default: a query and its response (MS is the
    latency in ms, then any retries), a TIMEOUT (MS: its retries), or an
    unsolicited response (!RCODE). Times are UTC, the date in the header (on each
    line when the capture spans days). WHO is namespace/pod, process[pid] for host
    processes, or the client address (pcaps); from --width 110 a PROC column
    shows process[pid], /thread when it differs (dig[42]/isc-net-0000). Wire
    strings are sanitized; --format jsonl keeps everything.

    \b
    --against 10.96.0.10 sends each distinct name and type once, to that address
    only (--rate, --max-queries, --query-timeout), and says per name: same,
    changed, newly answering (a fix that works), now failing, or hijacked (the
    capture saw a private address the resolver does not give). docs/replay.md.
    """
    from analyze.capture import load
    from analyze.replay import replay as run

    if lookups and messages:
        raise click.UsageError("--lookups and --messages exclude each other")
    if fmt == "json" and against_addr is None:
        raise click.UsageError("--format json is for --against; the timeline has jsonl")
    if against_addr is not None and (lookups or messages):
        raise click.UsageError("--against asks each question once: no --lookups/--messages")
    cap = load(list(captures), timeout_s=timeout_s, verify=not no_verify, work_dir=work_dir)
    filters = given_filters({
        "pod": pod, "namespace": namespace, "container": container, "comm": comm, "pid": pid,
        "name": name, "rcode": rcode, "since": since, "until": until, "node": node})
    if filters:
        cap = cap.filter(**filters)
        table = "lookups" if lookups else "messages" if messages else "transactions"
        if cap.count(table) == 0:
            shown = ", ".join(f"--{k} {v}" for k, v in filters.items())
            click.echo(f"no {table} match {shown}", err=True)
    from analyze.completeness import completeness

    for problem in completeness(cap)["problems"]:
        click.echo(f"incomplete: {problem}", err=True)
    for w in cap.warnings:
        click.echo(f"warning: {w}", err=True)
    if against_addr is not None:
        _run_against(cap, against_addr, fmt=fmt, width=width, rate=rate,
                     max_queries=max_queries, query_timeout=query_timeout,
                     exceed_ceiling=exceed_ceiling)
        return
    try:
        for line in run(cap, format=fmt, lookups=lookups, messages=messages, width=width):
            click.echo(line)
    except BrokenPipeError:
        # the reader (head, less) went away: stop quietly, as a tracer piped to head does
        import os
        import sys

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Capture directory to write.")
@click.option("--port", "ports", type=int, multiple=True,
              help="DNS server port besides 53 (repeatable).")
@click.option("--append", is_flag=True, help="Add to a capture an earlier import wrote.")
def import_(file: str, output: str, ports: tuple[int, ...], append: bool) -> None:
    """Turn a pcap or pcapng FILE into a capture directory that replay and report read."""
    import sys

    from analyze.pcap import import_pcap

    summary = import_pcap(file, output, ports=(53, *ports), append=append,
                          command_line=sys.argv)
    s = summary.as_dict() if hasattr(summary, "as_dict") else dict(vars(summary))
    click.echo(f"{file}: {s.get('packets', 0)} packets, {s.get('messages', 0)} DNS messages "
               f"({s.get('udp', 0)} udp, {s.get('tcp', 0)} tcp) -> {output}")
    skipped = {k: v for k, v in s.items() if k.startswith("skipped_") and v}
    if skipped:
        click.echo("skipped: " + ", ".join(f"{k[8:]}={v}" for k, v in skipped.items()))
    if s.get("truncated"):
        click.echo(f"truncated: {s['truncated']} messages cut by the capture snaplen")
    if s.get("file_damaged"):
        click.echo(f"warning: {s['file_damaged']}")


@click.command("export", short_help="Write captures as pcapng, a Zeek dns.log, JSON Lines or CSV.")
@click.argument("captures", nargs=-1, required=True, metavar="CAPTURE...")
@filter_options
@click.option("--format", "fmt", required=True,
              type=click.Choice(["pcapng", "zeek", "jsonl", "csv"]),
              help="pcapng: packets with who sent them as comments (Wireshark); zeek: dns.log; "
                   "jsonl/csv: one transaction per line.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="File to write (replaced when complete).")
@evidence_options()
def export(captures: tuple[str, ...], fmt: str, output: str, timeout_s: float,
           no_verify: bool, work_dir: str | None, **filters: Any) -> None:
    """Write CAPTURE... (directories or pcaps) as pcapng, a Zeek dns.log, JSON Lines or CSV.

    \b
    dnstrail export cap/ --format pcapng -o cap.pcapng   open in Wireshark
    dnstrail export cap/ --format zeek -o dns.log --namespace shop
    dnstrail export cap/ --format csv -o dns.csv --rcode NXDOMAIN
    pcapng: one packet per DNS message, one interface per network namespace;
    the others: one line per transaction. See docs/export.md.
    """
    from analyze.capture import load
    from analyze.completeness import completeness
    from analyze.export import export as run

    cap = load(list(captures), timeout_s=timeout_s, verify=not no_verify, work_dir=work_dir)
    given = given_filters(filters)
    if given:
        cap = cap.filter(**given)
    for problem in completeness(cap)["problems"]:
        click.echo(f"incomplete: {problem}", err=True)
    for w in cap.warnings:
        click.echo(f"warning: {w}", err=True)
    done = run(cap, output, fmt)
    unit = "packets" if fmt == "pcapng" else "transactions"
    click.echo(f"{done.records} {unit} -> {done.path}", err=True)


__all__ = ["export", "import_", "replay"]
