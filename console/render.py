"""The operator tools' answers as text (and JSON). Pure."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from console.views import Explanation, NodeDetail, NodeSummary, NodeVerdict, Sets
from extender.config import DEFAULT_BEST_SET_PATIENCE_S
from extender.validation import format_duration
from topology.links import Link
from topology.names import ALLOCATED_GPUS_ANNOTATION, ASSIGNED_GPUS_ANNOTATION
from topology.render import to_dot, to_matrix_text, to_svg

__all__ = ["explanation_text", "node_text", "nodes_text", "to_json"]


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ) + "\n"


def _gpus(devices: Sequence[int]) -> str:
    return ",".join(map(str, devices)) if devices else "-"


def nodes_text(summaries: Sequence[NodeSummary], unreadable: Mapping[str, str]) -> str:
    """``gputopo cluster nodes``: one line per GPU node.

    >>> from console.views import BestFree
    >>> from topology.links import Link
    >>> s = NodeSummary(name="gpu-a", model="V100", gpus=8, free=(0, 1, 2, 3),
    ...                 best=(BestFree(size=2, fits=True, ring_link=Link.parse("NV2")),
    ...                       BestFree(size=4, fits=True, ring_link=Link.parse("NV1")),
    ...                       BestFree(size=8, fits=False)))
    >>> print(nodes_text([s], {}), end="")
    NODE   MODEL  FREE/GPUS  BEST FREE SET PER SIZE
    gpu-a  V100   4/8        2: NV2, 4: NV1 ring, 8: none
    """
    rows = [["NODE", "MODEL", "FREE/GPUS", "BEST FREE SET PER SIZE"]]
    for s in summaries:
        rows.append([s.name, s.model, f"{len(s.free)}/{s.gpus}",
                     ", ".join(map(str, s.best))])
    for name, reason in sorted(unreadable.items()):
        rows.append([name, "?", "?", f"GPUTopology unreadable (the extender skips it): {reason}"])
    if len(rows) == 1:
        return "no GPU nodes: no GPUTopology objects (is the device plugin running?)\n"
    return _table(rows)


def node_text(detail: NodeDetail, fmt: str = "matrix") -> str:
    """``gputopo cluster show NODE``: the matrix (used GPUs marked ``*``) and who holds
    each GPU; or DOT / SVG with the used GPUs drawn as used, named by their pod."""
    t = detail.node.topology
    used = detail.used
    title = f"{detail.summary.name} ({detail.summary.model})"
    if fmt == "dot":
        return to_dot(t, used=used)
    if fmt == "svg":
        return to_svg(t, used=used, title=title) + "\n"
    s = detail.summary
    head = (f"{s.name}: {s.model}, {s.gpus} GPUs, {len(s.free)} free "
            f"({_gpus(s.free)}), fingerprint {t.fingerprint}\n"
            f"best free set per size: {', '.join(map(str, s.best))}\n\n")
    lines = []
    for line in to_matrix_text(t).splitlines():
        label, sep, rest = line.partition("\t")
        if sep and label.startswith("GPU") and label[3:].isdigit() and int(label[3:]) in used:
            label += "*"
        lines.append(label + sep + rest)
    matrix = "\n".join(lines).split("\nLegend:")[0].rstrip("\n") + "\n"
    rows = [["GPU", "ID", "STATE", "POD", "CONTAINER", "RECORD"]]
    for g in detail.gpus:
        rows.append([f"GPU{g.index}", g.id, "free" if g.pod is None else "used",
                     g.pod or "", g.container or "", _source(g.source)])
    return head + matrix + "* used\n\n" + _table(rows)


def _source(source: str | None) -> str:
    return {
        None: "",
        "allocated": "allocated (kubelet, via the plugin)",
        "assigned": "assigned (extender, at bind)",
        "bind": "assigned (extender, at bind)",
        "binding": "bind in flight",
        "cluster-file": "cluster file",
    }.get(source, source or "")


def _sets(sets: Sets) -> str:
    return "; ".join(f"{c}: GPUs {_gpus(d)}" for c, d in sets) or "-"


def _ring(link: Link | None) -> str:
    if link is None:
        return "no links (1 GPU)"
    return f"ring bottleneck {link}" + (" (NVLink all the way)" if link.is_nvlink else "")


def _verdict(v: NodeVerdict) -> list[str]:
    if v.fits:
        extra = "" if v.meets_min_link else "  (without the preferred link)"
        ring = "" if v.ring_link is None else f"  ring {v.ring_link}"
        fits = "fits, not its best set" if v.best_set is False else "fits"
        return [v.node, fits, f"score {v.score}", f"{_sets(v.sets)}{ring}{extra}"]
    why = "fails, even with every GPU free" if v.unresolvable else "fails"
    return [v.node, why, "", v.reason]


def explanation_text(e: Explanation) -> str:
    """``gputopo explain POD``."""
    out = [f"Pod {e.pod}: " + (e.request or "(its GPU request cannot be read)")]
    if e.error:
        out.append(f"The extender refuses it: {e.error}")
        out.append("(this is the Error of its filter answer; kube-scheduler shows it on the pod)")
        out += _events(e)
        return "\n".join(out) + "\n"
    if e.no_gpus:
        out.append("It asks for no GPUs: the extender passes every node and scores it 0.")
        if e.node:
            out.append(f"Bound to {e.node} (phase {e.phase}).")
        return "\n".join(out + _events(e)) + "\n"
    out += [f"note: {n}" for n in e.notes]
    if e.node:
        out.append(f"Bound to {e.node} (phase {e.phase}).")
        if not e.node_known:
            out.append(f"  {e.node} has no GPUTopology the extender can read: it knows no "
                       "GPUs there.")
        labels = {ASSIGNED_GPUS_ANNOTATION: "assigned by the extender at bind",
                  ALLOCATED_GPUS_ANNOTATION: "allocated by the kubelet (recorded by the plugin)"}
        for r in e.records:
            if r.error:
                out.append(f"  {r.key}: unreadable: {r.error}")
                continue
            unknown = (f" (ids not on {e.node}: {', '.join(r.unknown_ids)})"
                       if r.unknown_ids else "")
            out.append(f"  {labels[r.key]}: {_sets(r.sets)}{unknown}")
        if e.holding_source:
            out.append(f"  the extender counts it as holding these GPUs "
                       f"(from {_source(e.holding_source)})")
        for q in e.quality:
            numa = ",".join(map(str, q.numa_nodes)) or "unknown"
            out.append(f"  {q.container}: GPUs {_gpus(q.devices)}: {_ring(q.ring_link)}, "
                       f"{q.gbps:g} GB/s between them, NUMA {numa}")
        if e.same_set_now is True:
            out.append(f"  With its GPUs given back, {e.node} would give it the same set now.")
        elif e.same_set_now is False:
            out.append(f"  With its GPUs given back, {e.node} would give it another set now "
                       "(the cluster has changed since it was bound).")
        mine = next((v for v in e.verdicts if v.node == e.node), None)
        better = [v for v in e.fitting if mine is None or (v.score or 0) > (mine.score or 0)]
        if better:
            top = max(better, key=lambda v: v.score or 0)
            than = "" if mine is None or not mine.fits else f" against {mine.score} for {e.node}"
            out.append(f"  Now the extender would rank {top.node} first (score {top.score}"
                       f"{than}): the cluster has changed since it was bound.")
        out.append("The extender's verdict on every GPU node now, with this pod's GPUs "
                   "given back (filter reasons as kube-scheduler shows them, scores 0-10):")
    else:
        out.append(f"Not bound (phase {e.phase}).")
        if e.fitting and e.waits_for_best_set:
            patience = (f"its gputopo.io/best-set-patience, {format_duration(e.patience_s)}"
                        if e.patience_s is not None else
                        "the extender's --best-set-patience (default "
                        f"{format_duration(DEFAULT_BEST_SET_PATIENCE_S)})")
            out.append(f"{len(e.fitting)} GPU node(s) could take it now, none with the best "
                       "set its node type offers: the extender passes it over for that set "
                       f"for up to {patience} from the first time it did, then takes the "
                       "best of these (kube-scheduler retries it on every cluster change, "
                       "and 5 minutes after its last try at the latest; its FailedScheduling "
                       "events say since when):")
        elif e.fitting:
            waits = any(v.best_set is False for v in e.fitting) and e.patience_s != 0
            out.append(f"{len(e.fitting)} GPU node(s) can take it now (kube-scheduler's own "
                       "checks, such as node selectors, taints and resources, also apply; "
                       "it retries pending pods on every cluster change)"
                       + (". While some give it the best set its node type offers, the "
                          "extender fails those that do not" if waits else "") + ":")
        else:
            out.append("No GPU node can take it now. The extender's filter, node by node "
                       "(the reasons kube-scheduler shows on the pod):")
    if e.verdicts:
        ranked = sorted(e.verdicts, key=lambda v: (not v.fits, -(v.score or 0), v.node))
        out += ["  " + line for line in _table([_verdict(v) for v in ranked]).splitlines()]
    else:
        out.append("  (no GPU nodes: no GPUTopology objects)")
    out += _events(e)
    return "\n".join(out) + "\n"


def _events(e: Explanation) -> list[str]:
    if not e.events:
        return []
    when = " from before it was bound" if e.node else ""
    return [f"kube-scheduler's FailedScheduling events{when} (newest last):",
            *(f"  {m}" for m in e.events)]


def to_json(value: Any) -> str:
    """A view as JSON (links as their ``topo -m`` names)."""
    def default(o: Any) -> Any:
        if isinstance(o, Link):
            return str(o)
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
        raise TypeError(type(o).__name__)

    return json.dumps(value, default=default, indent=2) + "\n"
