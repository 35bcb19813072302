"""Draw a topology: the ``topo -m`` matrix, Graphviz DOT, and a self-contained SVG.

All three are plain strings built here; no Graphviz binary and no external assets.
``highlight`` is a set of GPU indices (say, an allocation) whose links are emphasised.

>>> from topology.presets import preset
>>> to_matrix_text(preset("workstation-2gpu-nvlink")).splitlines()[1]
'GPU0\\t X \\tNV4\\t0-5\\t0'
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from topology.links import Link, LinkKind
from topology.model import Topology

__all__ = ["to_dot", "to_matrix_text", "to_svg"]

_LEGEND = """\
Legend:

  X    = Self
  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)
  NODE = Connection traversing PCIe as well as the interconnect between PCIe Host Bridges within a NUMA node
  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)
  PXB  = Connection traversing multiple PCIe bridges (without traversing the PCIe Host Bridge)
  PIX  = Connection traversing at most a single PCIe bridge
  NV#  = Connection traversing a bonded set of # NVLinks
"""  # noqa: E501  (nvidia-smi's own wording)


def to_matrix_text(t: Topology, highlight: Iterable[int] = ()) -> str:
    """The matrix as ``nvidia-smi topo -m`` prints it, tab separated.

    GPU rows carry the NIC columns and the ``CPU Affinity`` and ``NUMA Affinity``
    columns (``N/A`` where unknown). NICs are written as ``NIC0``, ``NIC1``, ... with a
    ``NIC Legend`` giving their names; NIC rows are left out, since the model keeps no
    NIC-to-NIC links. ``highlight`` adds a ``Highlighted:`` line after the matrix.
    ``parse_topo_matrix`` reads the result back to the same links, NICs, NUMA nodes and
    CPU affinities (for affinities without blanks in them).

    Examples
    --------
    >>> from topology.presets import preset
    >>> text = to_matrix_text(preset("pcie-4gpu-nvlink-pairs"), highlight=[0, 1])
    >>> print("\\n".join(text.splitlines()[:3]).expandtabs(8))
            GPU0    GPU1    GPU2    GPU3    NIC0    NIC1    CPU Affinity    NUMA Affinity
    GPU0     X      NV12    SYS     SYS     NODE    NODE    0-27,56-83      0
    GPU1    NV12     X      SYS     SYS     NODE    NODE    0-27,56-83      0
    >>> [line for line in text.splitlines() if line.startswith("Highlighted")]
    ['Highlighted: GPU0 GPU1']
    """
    nics = [f"NIC{k}" for k in range(len(t.nics))]
    header = [g.name for g in t.gpus] + nics + ["CPU Affinity", "NUMA Affinity"]
    lines = ["\t" + "\t".join(header)]
    for gpu in t.gpus:
        cells = [" X " if c is None else str(c) for c in t.links[gpu.index]]
        cells += [str(nic.links[gpu.index]) for nic in t.nics]
        cells.append(gpu.cpu_affinity if gpu.cpu_affinity else "N/A")
        cells.append("N/A" if gpu.numa_node is None else str(gpu.numa_node))
        lines.append(gpu.name + "\t" + "\t".join(cells))
    chosen = _valid(t, highlight)
    if chosen:
        lines += ["", "Highlighted: " + " ".join(f"GPU{i}" for i in sorted(chosen))]
    lines += ["", _LEGEND]
    if t.nics:
        lines += ["NIC Legend:", ""]
        lines += [f"  {col}: {nic.name}" for col, nic in zip(nics, t.nics, strict=True)]
        lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class _Edge:
    i: int
    j: int
    link: Link
    highlighted: bool


def _valid(t: Topology, highlight: Iterable[int]) -> frozenset[int]:
    return frozenset(i for i in highlight if 0 <= i < t.size)


def _drawn_edges(t: Topology, chosen: frozenset[int], *, with_sys: bool) -> list[_Edge]:
    """NVLink pairs; pairs of the best non-NVLink class; every pair inside ``chosen``.

    ``with_sys=False`` leaves the best non-NVLink class out when it is SYS (the NUMA
    grouping already shows the sockets).
    """
    pcie = [t.link(i, j) for i in range(t.size) for j in range(i + 1, t.size)]
    best_pcie = max((c for c in pcie if not c.is_nvlink), default=None)
    if best_pcie is not None and not with_sys and best_pcie.kind is LinkKind.SYS:
        best_pcie = None
    edges = []
    for i in range(t.size):
        for j in range(i + 1, t.size):
            link = t.link(i, j)
            inside = i in chosen and j in chosen
            if link.is_nvlink or link == best_pcie or inside:
                edges.append(_Edge(i, j, link, inside))
    return edges


# --- DOT ---------------------------------------------------------------------------------


def _dot_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\r", "").replace("\n", "\\n") + '"'


def _numa_label(numa: int | None) -> str:
    return "NUMA ?" if numa is None else f"NUMA {numa}"


def _by_numa(t: Topology) -> dict[int | None, list[int]]:
    groups: dict[int | None, list[int]] = {}
    for gpu in sorted(t.gpus, key=lambda g: (g.numa_node is None, g.numa_node or 0, g.index)):
        groups.setdefault(gpu.numa_node, []).append(gpu.index)
    return groups


def to_dot(
    t: Topology, highlight: Iterable[int] = (), *, used: Mapping[int, str] | None = None
) -> str:
    """Graphviz DOT: GPUs clustered by NUMA node, NVLink edges labelled and weighted.

    NVLink edges are solid, labelled ``NVn``, with pen width and ``weight`` growing with
    the link count. Of the PCIe paths only the best class present among the pairs without
    NVLink is drawn, dashed. Highlighted GPUs are filled orange, and every pair inside the
    highlighted set is drawn bold red, whatever its class. ``used`` maps GPU index to who
    holds it: those GPUs are filled grey and labelled with the holder.

    Examples
    --------
    >>> from topology.presets import preset
    >>> dot = to_dot(preset("pcie-8gpu-nvlink-pairs"), highlight=[0, 2])
    >>> print([line.strip() for line in dot.splitlines() if "gpu0 -- gpu2" in line][0])
    gpu0 -- gpu2 [label="NV12", penwidth=7.0, weight=300, color="#d62728", fontcolor="#d62728"];
    >>> sum(1 for line in dot.splitlines() if 'style="dashed"' in line)
    24
    >>> [line.strip() for line in to_dot(preset("workstation-2gpu-nvlink"), used={1: "ml/a"})
    ...  .splitlines() if line.strip().startswith("gpu1 [")]
    ['gpu1 [label="GPU1\\\\nNVIDIA GeForce RTX 3090\\\\nused by ml/a", fillcolor="#e0e0e0"];']
    """
    chosen = _valid(t, highlight)
    held = dict(used or {})
    title = t.name or "topology"
    out = [
        f"graph {_dot_string(title)} {{",
        f"  graph [label={_dot_string(title)}, labelloc=t, overlap=false, splines=true];",
        '  node [shape=box, style="rounded,filled", fillcolor="#c8e6c9", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for k, (numa, members) in enumerate(_by_numa(t).items()):
        out.append(f"  subgraph cluster_numa{k} {{")
        out.append(f'    label={_dot_string(_numa_label(numa))}; style="rounded"; color="#9e9e9e";')
        for i in members:
            gpu = t.gpus[i]
            label = gpu.name if gpu.model is None else f"{gpu.name}\n{gpu.model}"
            extra = ', fillcolor="#ffb74d", penwidth=3' if i in chosen else ""
            if i in held:
                label += f"\nused by {held[i]}"
                extra = extra or ', fillcolor="#e0e0e0"'
            out.append(f"    gpu{i} [label={_dot_string(label)}{extra}];")
        out.append("  }")
    for e in _drawn_edges(t, chosen, with_sys=True):
        attrs = [f"label={_dot_string(str(e.link))}"]
        if e.link.is_nvlink:
            attrs.append(f"penwidth={1 + 0.5 * e.link.nvlinks:.1f}")
        else:
            attrs.append('style="dashed"')
        attrs.append(f"weight={max(1, round(t.bandwidth(e.i, e.j)))}")
        if e.highlighted:
            attrs.append('color="#d62728", fontcolor="#d62728"')
        out.append(f"  gpu{e.i} -- gpu{e.j} [{', '.join(attrs)}];")
    out.append("}")
    return "\n".join(out) + "\n"


# --- SVG ---------------------------------------------------------------------------------

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")

_FREE = "#4caf50"
_USED = "#9e9e9e"
_HIGHLIGHT = "#ff6f00"
_NVLINK = "#1f77b4"
_PCIE = "#7f7f7f"
_NODE_R = 22.0


def _esc(text: str) -> str:
    """Text safe in XML content and in double-quoted attributes."""
    text = _XML_INVALID.sub("\ufffd", text)
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        .replace('"', "&quot;")
    )


def _uniform_nvlink(t: Topology) -> Link | None:
    """The one NVLink class of an NVSwitch-style machine (every pair the same NVLink)."""
    cells = {t.link(i, j) for i in range(t.size) for j in range(i + 1, t.size)}
    if t.size >= 3 and len(cells) == 1:
        (link,) = cells
        return link if link.is_nvlink else None
    return None


def _width(link: Link) -> float:
    return min(12.0, 1.0 + 0.5 * link.nvlinks) if link.is_nvlink else 1.0


def to_svg(
    t: Topology,
    *,
    used: Mapping[int, str] | None = None,
    highlight: Iterable[int] = (),
    title: str | None = None,
) -> str:
    """A self-contained SVG drawing of the GPUs and their NVLinks.

    GPUs sit on a circle, grouped by NUMA node (an arc outside the circle names each
    node). Free GPUs are green, used ones grey with the holder's label in their
    ``<title>`` tooltip; highlighted GPUs are outlined in orange and the links among them
    drawn in orange. NVLink edges are labelled ``NVn`` with a width growing with the link
    count; when every pair has the same NVLink (an NVSwitch), the switch is drawn as a
    hub instead of all the pairs. PCIe paths are drawn dashed only for the best class
    below NVLink, and only when it is better than SYS. All text is escaped.

    Parameters
    ----------
    t : Topology
    used : mapping of GPU index to str, optional
        Who holds each used GPU (a pod name, say).
    highlight : iterable of int
        GPUs to outline (say, the set an allocation chose).
    title : str, optional
        Drawn on top; defaults to the topology's name.

    Examples
    --------
    >>> import xml.etree.ElementTree as ET
    >>> from topology.presets import preset
    >>> svg = to_svg(preset("dgx1-v100"), used={0: "team-a/<train>"}, highlight=[4, 5])
    >>> root = ET.fromstring(svg)
    >>> [e.text for e in root.iter("{http://www.w3.org/2000/svg}title") if "GPU0:" in e.text]
    ['GPU0: used by team-a/<train> (Tesla V100-SXM2-16GB, NUMA 0)']
    """
    used = dict(used or {})
    chosen = _valid(t, highlight)
    groups = _by_numa(t)
    order = [i for members in groups.values() for i in members]
    n = t.size
    radius = max(110.0, n * 16.0)
    margin = 90.0
    top = 40.0
    cx = cy = radius + margin
    cy += top
    width = 2 * (radius + margin)
    height = width + top + 40.0
    step = 2 * math.pi / n
    angle = {i: -math.pi / 2 + k * step for k, i in enumerate(order)}
    pos = {i: (cx + radius * math.cos(a), cy + radius * math.sin(a)) for i, a in angle.items()}

    heading = title if title is not None else (t.name or "GPU topology")
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif">',
        f"<title>{_esc(heading)}</title>",
        '<rect width="100%" height="100%" fill="#ffffff"/>',
        f'<text x="{width / 2:.1f}" y="26" text-anchor="middle" font-size="16" '
        f'font-weight="bold">{_esc(heading)}</text>',
    ]

    # NUMA arcs
    if len(groups) > 1 or None not in groups:
        arc_r = radius + 40.0
        for numa, members in groups.items():
            a0 = angle[members[0]] - step * 0.4
            a1 = angle[members[-1]] + step * 0.4
            x0, y0 = cx + arc_r * math.cos(a0), cy + arc_r * math.sin(a0)
            x1, y1 = cx + arc_r * math.cos(a1), cy + arc_r * math.sin(a1)
            large = 1 if a1 - a0 > math.pi else 0
            mid = (a0 + a1) / 2
            lx, ly = cx + (arc_r + 16) * math.cos(mid), cy + (arc_r + 16) * math.sin(mid)
            out.append(
                f'<path d="M {x0:.1f} {y0:.1f} A {arc_r:.1f} {arc_r:.1f} 0 {large} 1 '
                f'{x1:.1f} {y1:.1f}" fill="none" stroke="#bdbdbd" stroke-width="6" '
                f'stroke-linecap="round"/>'
            )
            out.append(
                f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="middle" '
                f'dominant-baseline="middle" font-size="12" fill="#616161">'
                f"{_esc(_numa_label(numa))}</text>"
            )

    # links
    hub = _uniform_nvlink(t)
    label_style = (
        'font-size="11" text-anchor="middle" dominant-baseline="middle" '
        'stroke="#ffffff" stroke-width="3" paint-order="stroke"'
    )
    if hub is not None:
        for i in order:
            x, y = pos[i]
            color = _HIGHLIGHT if i in chosen else _NVLINK
            out.append(
                f'<line x1="{cx:.1f}" y1="{cy:.1f}" x2="{x:.1f}" y2="{y:.1f}" '
                f'stroke="{color}" stroke-width="{_width(hub):.1f}" stroke-opacity="0.8">'
                f"<title>{_esc(f'GPU{i}: {hub} into the NVSwitch fabric')}</title></line>"
            )
        out.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="34" fill="#e3f2fd" stroke="{_NVLINK}" '
            f'stroke-width="2"/>'
        )
        out.append(f'<text x="{cx:.1f}" y="{cy - 6:.1f}" {label_style}>NVSwitch</text>')
        out.append(f'<text x="{cx:.1f}" y="{cy + 9:.1f}" {label_style}>{_esc(str(hub))}</text>')
        edges = [e for e in _drawn_edges(t, chosen, with_sys=False) if not e.link.is_nvlink]
    else:
        edges = _drawn_edges(t, chosen, with_sys=False)
    for e in edges:
        (x1, y1), (x2, y2) = pos[e.i], pos[e.j]
        color = _HIGHLIGHT if e.highlighted else (_NVLINK if e.link.is_nvlink else _PCIE)
        dash = "" if e.link.is_nvlink else ' stroke-dasharray="6 4"'
        tip = f"GPU{e.i}-GPU{e.j}: {e.link}, {t.bandwidth(e.i, e.j):g} GB/s"
        out.append(
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}" '
            f'stroke-width="{_width(e.link):.1f}" stroke-opacity="0.8"{dash}>'
            f"<title>{_esc(tip)}</title></line>"
        )
        # label a third of the way along, so the labels of crossing chords part
        lx, ly = x1 + (x2 - x1) / 3, y1 + (y2 - y1) / 3
        out.append(f'<text x="{lx:.1f}" y="{ly:.1f}" {label_style}>{_esc(str(e.link))}</text>')

    # GPUs
    for i in order:
        gpu = t.gpus[i]
        x, y = pos[i]
        holder = used.get(i)
        state = "free" if holder is None else f"used by {holder}"
        details = ", ".join(
            ([gpu.model] if gpu.model else []) + [_numa_label(gpu.numa_node)]
        )
        fill = _FREE if holder is None else _USED
        stroke, stroke_w = (_HIGHLIGHT, 5.0) if i in chosen else ("#263238", 1.5)
        out.append(f'<g class="gpu {"used" if holder is not None else "free"}">')
        out.append(f"<title>{_esc(f'{gpu.name}: {state} ({details})')}</title>")
        out.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{_NODE_R:.0f}" fill="{fill}" '
            f'stroke="{stroke}" stroke-width="{stroke_w:.1f}"/>'
        )
        out.append(
            f'<text x="{x:.1f}" y="{y:.1f}" font-size="11" font-weight="bold" '
            f'fill="#ffffff" text-anchor="middle" dominant-baseline="middle">'
            f"{_esc(gpu.name)}</text>"
        )
        out.append("</g>")

    # key
    ky = height - 22
    key = [(_FREE, "#263238", "free"), (_USED, "#263238", "used"),
           ("#ffffff", _HIGHLIGHT, "highlighted")]
    for k, (fill, stroke, text) in enumerate(key):
        kx = 20 + k * 110
        out.append(
            f'<circle cx="{kx + 8}" cy="{ky:.1f}" r="8" fill="{fill}" stroke="{stroke}" '
            f'stroke-width="2"/>'
        )
        out.append(
            f'<text x="{kx + 22}" y="{ky:.1f}" font-size="12" dominant-baseline="middle">'
            f"{text}</text>"
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"
