"""The page for people at ``/``: every node's GPU graph with free and used GPUs.

One self-contained HTML document: inline CSS, one inline SVG per node from
``topology.render.to_svg`` (used GPUs grey with the holder in the tooltip), and a table
of holders. No scripts, no external assets. Large clusters are paged
(``?offset=&limit=``); ``?node=NAME`` shows one node.
"""

from __future__ import annotations

import html
from urllib.parse import urlencode

from extender.state import ClusterState
from extender.views import summary, users
from topology.gpuids import indices_of
from topology.render import to_svg

__all__ = ["render_page"]

_CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:1.5em;color:#212121;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .3em} .summary{color:#555;margin-bottom:1em}
.nodes{display:flex;flex-wrap:wrap;gap:1em}
section.node{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em;
  max-width:460px}
section.node h2{font-size:1.05em;margin:.2em 0} section.node svg{width:100%;height:auto}
table{border-collapse:collapse;font-size:.85em;width:100%} td,th{padding:2px 6px;
  border-bottom:1px solid #eee;text-align:left}
.free{color:#2e7d32} .used{color:#616161} nav a{margin-right:1em}
"""


def render_page(
    state: ClusterState, *, mode: str, offset: int = 0, limit: int = 100,
    node: str | None = None,
) -> str:
    names = sorted(state.nodes)
    if node is not None:
        names = [n for n in names if n == node]
    total = len(names)
    offset = max(0, min(offset, total))
    shown = names[offset:offset + limit]
    s = summary(state)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>gputopo extender: GPU topology</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>GPU topology scheduler extender</h1>",
        f'<p class="summary">source <b>{html.escape(mode)}</b> &middot; '
        f"{'synced' if s['synced'] else 'not synced yet'} &middot; {s['nodes']} nodes &middot; "
        f"{s['gpus']} GPUs, <span class=\"free\">{s['free_gpus']} free</span> &middot; "
        f"{s['pods']} pods holding GPUs &middot; {s['binds_in_flight']} binds in flight "
        '&middot; <a href="topology">JSON</a> &middot; <a href="metrics">metrics</a></p>',
    ]
    if total > len(shown) or offset:
        parts.append(_nav(offset, limit, total))
    if not shown:
        parts.append("<p>No nodes with a known GPU topology yet.</p>")
    parts.append('<div class="nodes">')
    for name in shown:
        parts.append(_node(state, name))
    parts.append("</div></body></html>")
    return "\n".join(parts)


def _node(state: ClusterState, name: str) -> str:
    n = state.nodes[name]
    who = users(state, name)
    free = indices_of(n.free_mask)
    model = n.topology.model or "mixed GPUs"
    svg = to_svg(n.topology, used=who, title=n.topology.name or model)
    rows = "".join(
        f'<tr class="used" data-gpu="{i}"><td>GPU{i}</td><td>{html.escape(holder)}</td></tr>'
        for i, holder in sorted(who.items())
    )
    esc = html.escape(name, quote=True)
    return (
        f'<section class="node" id="node-{esc}" data-node="{esc}" '
        f'data-free="{",".join(map(str, free))}" '
        f'data-used="{",".join(str(i) for i in sorted(who))}">'
        f"<h2>{html.escape(name)}</h2>"
        f'<div class="meta">{html.escape(model)} &middot; {n.topology.size} GPUs &middot; '
        f'<span class="free">{len(free)} free</span> &middot; '
        f'<a href="topology/{html.escape(name)}">JSON</a></div>'
        f"{svg}"
        + (f"<table><tr><th>GPU</th><th>held by</th></tr>{rows}</table>" if rows else "")
        + "</section>"
    )


def _nav(offset: int, limit: int, total: int) -> str:
    links = []
    if offset > 0:
        links.append(f'<a href="?{urlencode({"offset": max(0, offset - limit), "limit": limit})}">'
                     "&larr; previous</a>")
    if offset + limit < total:
        links.append(f'<a href="?{urlencode({"offset": offset + limit, "limit": limit})}">'
                     "next &rarr;</a>")
    end = min(total, offset + limit)
    return f"<nav>nodes {offset + 1}-{end} of {total} {' '.join(links)}</nav>"
