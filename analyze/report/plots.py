"""The report's plots as base64 PNG (matplotlib figures drawn by the Agg canvas without
pyplot, so no backend is chosen for the process; nothing is fetched)."""

from __future__ import annotations

import base64
import io
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analyze.findings._common import Finding
from analyze.findings._sql import client_rows
from analyze.report import _human as hu
from analyze.report._text import plot_label
from analyze.report.summary import WHO_SQL

_RC: Any = {"font.size": 9, "figure.dpi": 96}


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


_WHO_SQL = WHO_SQL

#: Size of a plot (inches at 96 dpi): the width of the report's page.
_WIDE = (11, 3.8)
#: Latencies below this (ms) are drawn at it: a log axis has no zero.
_MIN_MS = 0.001
#: Bin widths the rate plot chooses from (s): about 60 bins over the capture.
_BINS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120,
         300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)


def bin_width(span_s: float, bins: int = 60) -> float:
    """The smallest round bin width (s) that cuts ``span_s`` into at most ``bins`` bins."""
    for b in _BINS:
        if span_s / b <= bins:
            return float(b)
    return float(_BINS[-1] * max(1, int(np.ceil(span_s / _BINS[-1] / bins))))


def ms_axis(ax: Any, low_ms: float, high_ms: float) -> None:
    """A log x axis in milliseconds with ticks at the decades (``0.1 ms`` ... ``1000 ms``)
    that cover the data."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    lo = max(low_ms, _MIN_MS)
    hi = max(high_ms, lo * 10)
    first, last = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
    ticks = [10.0 ** e for e in range(first, last + 1)]
    ax.set_xscale("log")
    ax.set_xlim(ticks[0], ticks[-1])
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _ms_tick(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _ms_tick(v: float) -> str:
    """``0.01 ms``, ``1 ms``, ``1,000 ms``."""
    decimals = max(0, -int(np.floor(np.log10(v)))) if v > 0 else 0
    return f"{v:,.{decimals}f} ms"


#: Points of a latency CDF (the answers' latencies are summarized by this many quantiles).
CDF_POINTS = 1000


def queries_over_time(capture: Any, top: int = 8) -> str | None:
    """Queries per second of the busiest clients, in about 60 bins (counted in the engine)."""
    rows = client_rows(capture)
    first = rows.arrow("count(*) AS n, epoch_ns(min(ts)) AS a, epoch_ns(max(ts)) AS b") \
        .to_pylist()[0]
    n, t0, t1 = first["n"], first["a"], first["b"]
    if not n:
        return None
    span = (t1 - t0) / 1e9
    bin_s = bin_width(span)
    edges = np.arange(0, span + bin_s * 1.001, bin_s) if span > 0 else np.array([0, bin_s])
    nbins = len(edges) - 1
    busiest = rows.frame(f"{_WHO_SQL} AS who, count(*) AS n",
                         f"GROUP BY 1 ORDER BY n DESC, who LIMIT {int(top)}")
    keep = [str(w) for w in busiest["who"]]
    counts = rows.where(f"{_WHO_SQL} IN (SELECT unnest(?::VARCHAR[]))", keep).frame(
        f"{_WHO_SQL} AS who, least(greatest(floor((epoch_ns(ts) - {int(t0)}) / 1e9 / "
        f"{bin_s!r}), 0), {nbins - 1})::BIGINT AS bin, count(*) AS n", "GROUP BY 1, 2")
    with mpl.rc_context(_RC):
        fig = Figure(figsize=_WIDE)
        ax = fig.subplots()
        for name in keep:
            mine = counts[counts["who"] == name]
            hist = np.zeros(nbins)
            hist[mine["bin"].to_numpy(dtype=np.int64)] = mine["n"].to_numpy(dtype=float)
            ax.step(edges[:-1], hist / bin_s, where="post", label=plot_label(name, 40))
        start = pd.Timestamp(int(t0), tz="UTC")
        ax.set_xlabel(f"seconds since {hu.when(start)}")
        ax.set_ylabel("queries/s")
        ax.set_title(f"Queries per second of the top {len(keep)} clients, in "
                     f"{hu.duration(bin_s)} bins")
        ax.set_xlim(0, max(span, bin_s))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return _png(fig)


def latency_cdf(capture: Any, top: int = 8) -> str | None:
    """Latency CDF of the busiest nameservers, from ``CDF_POINTS`` quantiles each."""
    rows = client_rows(capture).where("latency_s IS NOT NULL AND server_addr IS NOT NULL")
    qs = ", ".join(f"{(i + 1) / CDF_POINTS!r}" for i in range(CDF_POINTS))
    servers = rows.arrow(f"server_addr AS s, count(*) AS n, quantile_disc(latency_s, [{qs}]) "
                         "AS q", f"GROUP BY 1 ORDER BY n DESC, s LIMIT {int(top)}").to_pylist()
    if not servers:
        return None
    lows = min(float(np.min(np.asarray(srv["q"], dtype=float))) for srv in servers) * 1000
    highs = max(float(np.max(np.asarray(srv["q"], dtype=float))) for srv in servers) * 1000
    with mpl.rc_context(_RC):
        fig = Figure(figsize=_WIDE)
        ax = fig.subplots()
        for srv in servers:
            lat = np.asarray(srv["q"], dtype=float) * 1000
            y = np.arange(1, len(lat) + 1) / len(lat)
            ax.step(np.maximum(lat, _MIN_MS), y, where="post",
                    label=f"{plot_label(str(srv['s']))} (n={srv['n']:,})")
        ms_axis(ax, lows, highs)
        ax.set_xlabel("latency")
        ax.set_ylabel("fraction of answers")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3, which="major")
        ax.set_title("Latency CDF per nameserver")
        ax.legend(fontsize=7, loc="lower right")
        return _png(fig)


def connect_delays(findings: list[Finding]) -> str | None:
    delays = [d for f in findings if f.kind == "dns_to_connect"
              for d in f.metrics.get("delays_s", [])]
    if not delays:
        return None
    ms = np.array(delays, dtype=float) * 1000
    with mpl.rc_context(_RC):
        fig = Figure(figsize=_WIDE)
        ax = fig.subplots()
        lo = max(ms.min(), 1e-3)
        bins = np.logspace(np.log10(lo), np.log10(max(ms.max(), lo * 10)), 40)
        ax.hist(np.clip(ms, lo, None), bins=list(bins))
        ms_axis(ax, float(bins[0]), float(bins[-1]))
        ax.set_xlabel("delay from the DNS answer to connect()")
        ax.set_ylabel("connects")
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"DNS-to-connect delay ({len(ms)} connects)")
        return _png(fig)


def tunneling_scatter(capture: Any, findings: list[Finding]) -> str | None:
    from analyze.findings.tunneling import pair_table

    pairs = pair_table(capture)
    if pairs.empty:
        return None
    with mpl.rc_context(_RC):
        fig = Figure(figsize=(11, 4.4))
        ax = fig.subplots()
        hit_s = pairs["flagged"].astype(bool)
        ok = pairs[~hit_s]
        bad = pairs[hit_s]
        ax.scatter(ok["distinct_subdomains"], ok["entropy_bits_per_char"], s=12, alpha=0.6,
                   label="not flagged")
        ax.scatter(bad["distinct_subdomains"], bad["entropy_bits_per_char"], s=30,
                   marker="x", color="red", label="tunneling finding")
        for _, r in bad.head(10).iterrows():
            ax.annotate(plot_label(r["registered_domain"], 30),
                        (r["distinct_subdomains"], r["entropy_bits_per_char"]), fontsize=7)
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel("distinct subdomains (per client and registered domain)")
        ax.set_ylabel("entropy of subdomain text (bits/char)")
        ax.set_title("Tunneling features")
        ax.legend(fontsize=7)
        return _png(fig)


def all_plots(capture: Any, findings: list[Finding]) -> list[tuple[str, str | None]]:
    """(title, base64 PNG or None when there is nothing to plot) for every plot."""
    return [
        ("Queries over time per client", queries_over_time(capture)),
        ("Latency CDF per nameserver", latency_cdf(capture)),
        ("DNS-to-connect delay", connect_delays(findings)),
        ("Tunneling: distinct subdomains vs entropy", tunneling_scatter(capture, findings)),
    ]
