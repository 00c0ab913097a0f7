"""dnstrail's tunneling finding against RITA's rule, on the same captures.

RITA v5 (activecm/rita) scores DNS tunneling with one feature: the number of unique subdomains
under a parent domain, scored from 100 (bands 100/500/800/1000), parents ending in ``.local``
and ``.arpa`` dropped (../shared/RESEARCH.md). This script applies that rule to the client
queries of each capture, next to dnstrail's own verdict (``tunneling`` and the other findings
at or above medium), and prints a Markdown table. It runs RITA's rule, not RITA.

Usage::

    .venv/bin/python benchmarks/rita_compare.py [CAPTURE...]   # default: ../shared/corpus
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: RITA's score bands for unique subdomains per parent domain.
RITA_BANDS = (100, 500, 800, 1000)


def rita_rule(qnames: list[str]) -> tuple[str | None, int]:
    """The parent domain with the most unique subdomains (RITA drops .local and .arpa) and
    that count."""
    from analyze.names import registered_domain

    per: Counter[str] = Counter()
    for name in set(qnames):
        name = name.rstrip(".").lower()
        parent = registered_domain(name)
        if not parent or parent.endswith((".local", ".arpa")) or name == parent:
            continue
        per[parent] += 1
    if not per:
        return None, 0
    parent, n = per.most_common(1)[0]
    return parent, n


def compare(path: Path, work: Path) -> dict[str, Any]:
    import analyze

    cap = analyze.load(path, work_dir=work)
    names = cap.sql("SELECT qname FROM transactions WHERE qname IS NOT NULL")["qname"].tolist()
    parent, n = rita_rule([str(x) for x in names])
    findings = cap.findings()
    tunnel = [f for f in findings if f.kind == "tunneling"]
    top = max(tunnel, key=lambda f: f.rank, default=None)
    others = sorted({f.kind for f in findings if f.kind != "tunneling" and f.rank >= 2})
    return {
        "file": f"{path.parent.name}/{path.name}",
        "queries": len(names),
        "rita_parent": parent, "rita_unique": n,
        "rita_band": max((b for b in RITA_BANDS if n >= b), default=None),
        "dnstrail": (f"{top.severity} at {top.registered_domain}"
                     if top is not None else "-"),
        "other": ", ".join(others) or "-",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("captures", nargs="*", type=Path)
    args = ap.parse_args(argv)
    paths = args.captures or sorted((REPO.parent / "shared" / "corpus").glob("*/*.pcap*"))
    if not paths:
        ap.error("no captures (../shared/corpus is absent)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="dnstrail-rita-") as work:
        for p in paths:
            rows.append(compare(p, Path(work)))
    print("| capture | client queries | RITA rule: top parent (unique subdomains) | RITA "
          "scores | dnstrail tunneling | other findings >= medium |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        band = f">= {r['rita_band']}" if r["rita_band"] else "no (< 100)"
        print(f"| {r['file']} | {r['queries']:,} | {r['rita_parent'] or '-'} "
              f"({r['rita_unique']:,}) | {band} | {r['dnstrail']} | {r['other']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
