"""The report's plots as base64 PNG (matplotlib, Agg backend; nothing is fetched)."""

from __future__ import annotations

import base64
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analyze.findings._common import Finding, client_queries, col
from analyze.report._text import plot_label

_RC: Any = {"font.size": 9, "figure.dpi": 96}


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _who(df: pd.DataFrame) -> pd.Series:
    pod = col(df, "pod")
    ns = col(df, "namespace")
    comm = col(df, "comm")
    addr = col(df, "client_addr")
    out = []
    for p, n, c, a in zip(pod, ns, comm, addr):
        if isinstance(p, str) and p:
            out.append(f"{n}/{p}" if isinstance(n, str) else p)
        elif isinstance(c, str) and c:
            out.append(c)
        else:
            out.append(str(a) if isinstance(a, str) else "?")
    return pd.Series(out, index=df.index)


def queries_over_time(capture: Any, top: int = 8) -> str | None:
    tx = client_queries(capture)
    if tx.empty or "ts" not in tx.columns:
        return None
    who = _who(tx)
    counts = who.value_counts()
    keep = list(counts.index[:top])
    span = (tx["ts"].max() - tx["ts"].min()).total_seconds()
    bin_s = max(span / 60.0, 0.001)
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(8, 3.2))
        t0 = tx["ts"].min()
        for name in keep:
            sec = (tx.loc[who == name, "ts"] - t0).dt.total_seconds().to_numpy()
            edges = np.arange(0, span + bin_s * 1.001, bin_s) if span > 0 else np.array([0, 1])
            hist, edges = np.histogram(sec, bins=edges)
            ax.step(edges[:-1], hist / bin_s, where="post", label=plot_label(name, 40))
        ax.set_xlabel(f"seconds since {t0.isoformat()}")
        ax.set_ylabel("queries/s")
        ax.set_title(f"Queries over time (top {len(keep)} clients)")
        ax.legend(fontsize=7, loc="upper right")
        return _png(fig)


def latency_cdf(capture: Any, top: int = 8) -> str | None:
    tx = client_queries(capture)
    if tx.empty or "latency_s" not in tx.columns or "server_addr" not in tx.columns:
        return None
    tx = tx[tx["latency_s"].notna() & tx["server_addr"].notna()]
    if tx.empty:
        return None
    servers = tx["server_addr"].astype(str).value_counts().index[:top]
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(8, 3.2))
        for s in servers:
            lat = np.sort(tx.loc[tx["server_addr"].astype(str) == s, "latency_s"]
                          .astype(float).to_numpy() * 1000)
            y = np.arange(1, len(lat) + 1) / len(lat)
            ax.step(lat, y, where="post", label=f"{plot_label(s)} (n={len(lat)})")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("fraction of answers")
        ax.set_title("Latency CDF per nameserver")
        ax.legend(fontsize=7, loc="lower right")
        return _png(fig)


def connect_delays(findings: list[Finding]) -> str | None:
    delays = [d for f in findings if f.kind == "dns_to_connect"
              for d in f.metrics.get("delays_s", [])]
    if not delays:
        return None
    ms = np.array(delays, dtype=float) * 1000
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(8, 3.0))
        lo = max(ms.min(), 1e-3)
        bins = np.logspace(np.log10(lo), np.log10(max(ms.max(), lo * 10)), 40)
        ax.hist(np.clip(ms, lo, None), bins=list(bins))
        ax.set_xscale("log")
        ax.set_xlabel("delay from DNS answer to connect() (ms)")
        ax.set_ylabel("connects")
        ax.set_title(f"DNS-to-connect delay ({len(ms)} connects)")
        return _png(fig)


def tunneling_scatter(capture: Any, findings: list[Finding]) -> str | None:
    from analyze.findings.tunneling import pair_table

    pairs = pair_table(capture)
    if pairs.empty:
        return None
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(8, 3.6))
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
