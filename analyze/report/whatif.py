"""The report's "What if" section (analyze.whatif): a node-local cache, a lower ndots."""

from __future__ import annotations

from typing import Any

from analyze.report._text import h, md

_NDOTS_HEAD = ("ndots", "queries saved", "queries added", "net saved", "lookups shortened",
               "lookups lengthened")
_NDOTS_KEYS = ("ndots", "saved_queries", "extra_queries", "net_saved", "lookups_shortened",
               "lookups_lengthened")
_CACHE_NOTE = ("Each node's client queries replayed through a cache that keeps an answer "
               "for its TTL (NXDOMAIN and no data for the SOA's negative TTL; SERVFAIL and "
               "timeouts not at all), without merging queries in flight: a lower bound.")
_NDOTS_NOTE = ("From the lookups that walked the search list first: with ndots at most "
               "the name's dots, the name is tried as given first. Saved: the suffixed "
               "queries before a name that answered as given; added: one try per type of "
               "a name that answered through a suffix.")


def _cache_sentence(c: dict[str, Any]) -> str:
    share = 100.0 * float(c.get("saved_share") or 0.0)
    text = (f"A node-local cache would have answered {c['saved']:,} of {c['queries']:,} "
            f"client queries ({share:.1f} %) without asking a nameserver")
    if c.get("timeouts_answered"):
        text += f", {c['timeouts_answered']:,} of them queries that timed out"
    return text + "."


def _ndots_sentence(rows: list[dict[str, Any]], queries: int | None) -> str:
    best = max(rows, key=lambda r: (int(r["net_saved"]), int(r["ndots"])))
    if int(best["net_saved"]) <= 0:
        return "A lower ndots would have saved no queries."
    of = f" of {queries:,}" if queries else ""
    return (f"With ndots:{int(best['ndots'])} the clients would have sent "
            f"{int(best['net_saved']):,} fewer queries{of} "
            f"({int(best['lookups_shortened']):,} lookups shortened).")


def whatif_markdown(w: dict[str, Any] | None) -> list[str]:
    """Markdown lines of the section (none when there is no what-if)."""
    if not w:
        return []
    lines = ["## What if", ""]
    c = w.get("node_cache") or {}
    if c:
        lines += [md(_cache_sentence(c)), "", f"_{md(_CACHE_NOTE)}_", ""]
        if c.get("top_names"):
            lines += ["| name | type | queries saved |", "|---|---|---|"]
            lines += [f"| {md(n['qname'])} | {md(n['qtype'])} | {int(n['saved']):,} |"
                      for n in c["top_names"]]
            lines += [""]
    rows = w.get("ndots") or []
    if rows:
        lines += [md(_ndots_sentence(rows, c.get("queries"))), "",
                  "| " + " | ".join(_NDOTS_HEAD) + " |",
                  "|" + "---|" * len(_NDOTS_HEAD)]
        lines += ["| " + " | ".join(str(int(r[k])) for k in _NDOTS_KEYS) + " |" for r in rows]
        lines += ["", f"_{md(_NDOTS_NOTE)}_", ""]
    return lines


def whatif_html(w: dict[str, Any] | None) -> str:
    """The HTML of the section ("" when there is no what-if)."""
    if not w:
        return ""
    parts = ['<h2 id="whatif">What if</h2>']
    c = w.get("node_cache") or {}
    if c:
        parts.append(f"<p>{h(_cache_sentence(c))}</p><p><small>{h(_CACHE_NOTE)}</small></p>")
        if c.get("top_names"):
            parts.append("<table><tr><th>name</th><th>type</th><th>queries saved</th></tr>"
                         + "".join(f'<tr><td class="wire">{h(n["qname"])}</td>'
                                   f"<td>{h(n['qtype'])}</td><td>{int(n['saved']):,}</td></tr>"
                                   for n in c["top_names"]) + "</table>")
    rows = w.get("ndots") or []
    if rows:
        parts.append(f"<p>{h(_ndots_sentence(rows, c.get('queries')))}</p><table><tr>"
                     + "".join(f"<th>{h(x)}</th>" for x in _NDOTS_HEAD) + "</tr>"
                     + "".join("<tr>" + "".join(f"<td>{int(r[k])}</td>" for k in _NDOTS_KEYS)
                               + "</tr>" for r in rows)
                     + f"</table><p><small>{h(_NDOTS_NOTE)}</small></p>")
    return "\n".join(parts)


__all__ = ["whatif_html", "whatif_markdown"]
