"""``dnstrail record``: options in, ``capture.recorder.record()`` out. Nothing imports bcc here."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from capture.errors import CaptureError
from capture.recorder import (
    MAX_SNAPLEN,
    RecordOptions,
    parse_duration,
    parse_size,
    probe_config,
)
from capture.recorder import record as record_capture
from capture.sched import PRIORITIES
from capture.writer import DEFAULT_MAX_FILE_BYTES, DEFAULT_ROTATE_SECONDS


class _Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _Size(click.ParamType):
    name = "SIZE"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.command("record")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Capture directory "
              "(created 0700; must be empty unless --append). Required unless --print-bpf.")
@click.option("--duration", type=_Duration(), default=None,
              help="Stop after this long (30s, 5m, 1h). Default: until Ctrl-C or SIGTERM.")
@click.option("--port", "ports", type=click.IntRange(1, 65535), multiple=True,
              help="DNS port to trace, local or remote end (repeatable; default 53).")
@click.option("--pid", "pids", type=click.IntRange(min=1), multiple=True,
              help="Only these process ids (tgid; repeatable).")
@click.option("--comm", "comms", multiple=True,
              help="Only tasks whose thread name or process name (the thread-group leader's) "
              "is this (exact, max 15 bytes: dig and its thread isc-net-0000 both match "
              "--comm dig; repeatable).")
@click.option("--cgroup", "cgroups", multiple=True,
              help="Only cgroups whose v2 path contains this text (repeatable; "
              "re-resolved every few seconds for new cgroups).")
@click.option("--pod", "pods", multiple=True,
              help="Only this pod: uid, name or namespace/name (names may be globs: "
              "'shop/web-*'; as replay --pod), found under --pods-root or in --pods-json "
              "(repeatable; new containers and pods are picked up).")
@click.option("--snaplen", type=click.IntRange(12, MAX_SNAPLEN), default=1232,
              show_default=True, help="Bytes of payload kept per message (orig_len keeps the "
              "real length).")
@click.option("--ringbuf-mb", type=click.IntRange(1, 1024), default=32, show_default=True,
              help="Kernel ring buffer size in MB (power of two).")
@click.option("--max-size", "max_size", type=_Size(), default=DEFAULT_MAX_FILE_BYTES,
              help="Rotate an event file when it reaches this size (default 64MB).")
@click.option("--rotate", type=_Duration(), default=DEFAULT_ROTATE_SECONDS,
              help="Rotate event files at least this often (default 60s).")
@click.option("--append", is_flag=True,
              help="Continue the capture already in --output (numbering and manifest "
              "continue).")
@click.option("--pods-root", type=click.Path(path_type=Path, file_okay=False), default="/",
              show_default=True, help="Root holding var/log/pods and var/log/containers.")
@click.option("--pods-json", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              default=None, help="Output of `kubectl get pods -A -o json` for pod names and "
              "container ids.")
@click.option("--priority", type=click.Choice(PRIORITIES), default="auto", show_default=True,
              help="CPU priority of the recorder against the node's workload: auto (while the "
              "node's CPUs are saturated, the spool's Parquet conversion waits; with "
              "--no-spool, nice 19 and --cpu-budget), normal, low (nice 19) or idle "
              "(SCHED_IDLE: only CPU nobody wants; under saturation the ring buffer "
              "overflows and the losses are counted).")
@click.option("--cpu-budget", type=click.FloatRange(0, 100), default=2, show_default=True,
              metavar="PCT",
              help="With --priority auto and --no-spool, while the node's CPUs are saturated: "
              "the most CPU the recorder takes, in percent of one CPU (0: no cap). It sleeps "
              "off what goes over; the ring buffer overflows meanwhile and the losses are "
              "counted.")
@click.option("--spool/--no-spool", default=True, show_default=True,
              help="Drain the ring buffer into spool files with a compiled routine and turn "
              "them into Parquet when there is CPU to spare (--no-spool: parse every poll at "
              "once, the slower path that loses messages on a saturated node).")
@click.option("--finish-within", "finish_within", type=_Duration(), default=25.0,
              help="After the capture ends, convert spooled messages to Parquet for at most "
              "this long (default 25s, under Kubernetes' 30 s grace period); the rest stays "
              "in spool segments, listed with their hashes and read by the analyzer.")
@click.option("--no-connects", is_flag=True, help="Do not record connect() events.")
@click.option("--no-execs", is_flag=True, help="Do not record exec events.")
@click.option("--print-bpf", is_flag=True,
              help="Print the BPF C program for these options and exit (needs neither root "
              "nor bcc).")
def record(
    output: Path | None,
    duration: float | None,
    ports: tuple[int, ...],
    pids: tuple[int, ...],
    comms: tuple[str, ...],
    cgroups: tuple[str, ...],
    pods: tuple[str, ...],
    snaplen: int,
    ringbuf_mb: int,
    max_size: int,
    rotate: float,
    append: bool,
    pods_root: Path,
    pods_json: Path | None,
    priority: str,
    cpu_budget: float,
    spool: bool,
    finish_within: float,
    no_connects: bool,
    no_execs: bool,
    print_bpf: bool,
) -> None:
    """Record every DNS message on this node (needs root and BCC).

    Writes Parquet files and manifest.json into --output until --duration, Ctrl-C or SIGTERM;
    messages go through spool segments first (readable at once, docs/record.md), and each
    Parquet file appears under its final name only once complete. Exit status: 0 done,
    1 error, 3 disk full (finished files are kept), 130 Ctrl-C before tracing began (nothing
    written).
    """
    options = RecordOptions(
        output=output or Path("."),
        duration=duration,
        ports=ports or (53,),
        pids=pids,
        comms=comms,
        cgroups=cgroups,
        pods=pods,
        snaplen=snaplen,
        ringbuf_mb=ringbuf_mb,
        max_file_bytes=max_size,
        rotate_seconds=rotate,
        append=append,
        pods_root=pods_root,
        pods_json=pods_json,
        trace_connects=not no_connects,
        trace_execs=not no_execs,
        priority=priority,
        cpu_budget=cpu_budget / 100,
        spool=spool,
        finish_seconds=finish_within,
        command_line=list(sys.argv),
    )
    if print_bpf:
        from capture.probe import ProbeConfig, render_source

        options.validate()
        try:
            cfg = probe_config(ProbeConfig, options, set(), bool(pods or cgroups))
        except ValueError as exc:
            raise CaptureError(f"bad probe option: {exc}") from None
        click.echo(render_source(cfg))
        return
    if output is None:
        raise click.UsageError("Missing option '-o' / '--output'.")
    record_capture(options)
