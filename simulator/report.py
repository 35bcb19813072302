"""The comparison as a terminal table, as Markdown, and as a self-contained HTML report."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from simulator.compare import Comparison
from simulator.metrics import Metrics, PolicyMetrics, sizes_of

__all__ = ["duration", "markdown_table", "size_table", "table", "write_html"]

_DAY: Final = 86_400.0


def duration(seconds: float | None) -> str:
    """A delay for people: ``45s``, ``12m``, ``5.3h``, ``7.67d``.

    >>> duration(45), duration(720), duration(19_080), duration(662_814)
    ('45s', '12m', '5.3h', '7.67d')
    """
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < _DAY:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / _DAY:.2f}d"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


_COLUMNS: Final[tuple[tuple[str, Callable[[Metrics], str]], ...]] = (
    ("best set", lambda m: _pct(m.best_set_share)),
    ("ring bw", lambda m: _ratio(m.mean_ring_bandwidth_ratio)),
    ("wait mean", lambda m: duration(m.mean_queueing_delay_s)),
    ("wait p50", lambda m: duration(m.p50_queueing_delay_s)),
    ("wait p99", lambda m: duration(m.p99_queueing_delay_s)),
    ("GPU util", lambda m: _pct(m.gpu_utilisation)),
    ("useful util", lambda m: _pct(m.useful_utilisation)),
    ("frag wait", lambda m: _pct(m.fragmentation)),
    ("failed binds", lambda m: "-" if m.failed_binds is None else str(m.failed_binds)),
    ("JCT mean", lambda m: duration(m.mean_jct_s)),
    ("JCT p99", lambda m: duration(m.p99_jct_s)),
    ("jobs", lambda m: str(m.jobs)),
    ("unrunnable", lambda m: "-" if m.unrunnable is None else str(m.unrunnable)),
)


def _rows(metrics: Sequence[PolicyMetrics]) -> tuple[list[str], list[list[str]]]:
    header = ["policy", *(name for name, _ in _COLUMNS)]
    rows = [[m.policy, *(f(m.overall) for _, f in _COLUMNS)] for m in metrics]
    return header, rows


def _size_rows(metrics: Sequence[PolicyMetrics]) -> tuple[list[str], list[list[str]]]:
    header = ["GPUs", "jobs", *(f"{m.policy} best / wait" for m in metrics)]
    rows = []
    for k in sizes_of(metrics):
        cells = []
        jobs = 0
        for m in metrics:
            s = m.by_size.get(k)
            if s is None:
                cells.append("-")
                continue
            jobs = max(jobs, s.jobs)
            best = "" if s.best_set_share is None else f"{_pct(s.best_set_share)} / "
            cells.append(f"{best}{duration(s.mean_queueing_delay_s)}")
        rows.append([str(k), str(jobs), *cells])
    return header, rows


def _text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def table(comparison: Comparison) -> str:
    """The comparison for a terminal: the overall figures, then per job size."""
    c = comparison
    head = (f"{c.workload.source}: {len(c.workload.jobs)} jobs on {c.cluster.describe()}, "
            f"seed {c.settings.seed}")
    patience = sorted({r.best_set_patience_s for r in c.runs
                       if r.best_set_patience_s is not None})
    if patience:
        head += ", the extender's best-set patience " + ", ".join(
            duration(p) if p < math.inf else "unlimited" for p in patience)
    return "\n".join([
        head, "", _text(*_rows(c.metrics)), "",
        "per job size (best-set share of multi-GPU jobs / mean queueing delay):",
        _text(*_size_rows(c.metrics)),
    ])


def _md(header: list[str], rows: list[list[str]]) -> str:
    align = ["---", *("---:" for _ in header[1:])]
    return "\n".join("| " + " | ".join(r) + " |" for r in [header, align, *rows])


def markdown_table(comparison: Comparison) -> str:
    """The overall table as Markdown (README, benchmark output)."""
    return _md(*_rows(comparison.metrics))


def size_table(comparison: Comparison) -> str:
    """The per-size table as Markdown."""
    return _md(*_size_rows(comparison.metrics))


# -- HTML ---------------------------------------------------------------------------------
def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figures(c: Comparison) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[tuple[str, str]] = []

    def cdf(title: str, xlabel: str, values: Callable[[int], list[float]], log: bool) -> None:
        fig, ax = plt.subplots(figsize=(7.5, 4))
        for i, run in enumerate(c.runs):
            v = np.sort(np.asarray(values(i), dtype=np.float64))
            if v.size == 0:
                continue
            if log:
                v = np.maximum(v, 1.0)
            ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", label=run.policy)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("share of jobs (CDF)")
        ax.grid(True, alpha=0.3)
        ax.legend()
        ax.set_title(title)
        out.append((title, _png(fig)))
        plt.close(fig)

    cdf("Ring bandwidth / best ring (multi-GPU jobs)", "ratio",
        lambda i: [r.ring_ratio for r in c.runs[i].records if r.ring_ratio is not None],
        log=False)
    cdf("Queueing delay", "seconds (log; 0 shown as 1)",
        lambda i: [r.wait_s for r in c.runs[i].records], log=True)
    cdf("Job completion time", "seconds (log)",
        lambda i: [r.jct_s for r in c.runs[i].records], log=True)

    fig, ax = plt.subplots(figsize=(7.5, 4))
    for run in c.runs:
        if not run.timeline or run.capacity <= 0:
            continue
        t = np.array([p[0] for p in run.timeline]) / _DAY
        held = np.array([p[1] for p in run.timeline]) / run.capacity
        ax.step(t, held, where="post", label=run.policy, linewidth=0.8)
    ax.set_xlabel("days")
    ax.set_ylabel("GPUs held by jobs")
    ax.set_ylim(0, 1.05)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title("Utilisation over time")
    out.append(("Utilisation over time", _png(fig)))
    plt.close(fig)
    return out


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


_STYLE: Final = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:72em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em}
td:not(:first-child){text-align:right}th{background:#f3f3f3}img{max-width:100%}
code{background:#f3f3f3;padding:0 .2em}
"""


def write_html(comparison: Comparison, directory: str | Path) -> Path:
    """``DIR/index.html``: the tables and the plots, every image inlined."""
    c = comparison
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    figures = "".join(f'<h3>{html.escape(t)}</h3><img alt="{html.escape(t)}" src="{src}">'
                      for t, src in _figures(c))
    s = c.settings
    unrunnable = "".join(
        f"<li>{html.escape(r.policy)}: {len(r.unrunnable) + len(r.never_ran)}</li>"
        for r in c.runs)
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>gputopo simulate: {html.escape(c.workload.source)}</title><style>{_STYLE}</style></head>
<body><h1>Placement comparison</h1>
<p>{html.escape(c.workload.source)}: {len(c.workload.jobs)} jobs on
{html.escape(c.cluster.describe())}. Seed {s.seed}, bind lag up to {s.bind_lag} cycles,
communication share {s.comm.low:g}..{s.comm.high:g}, min-link
<code>{html.escape(str(s.min_link))}</code> ({html.escape(str(s.link_policy))}).</p>
<h2>Overall</h2>{_html_table(*_rows(c.metrics))}
<h2>Per job size</h2><p>Best-set share of multi-GPU jobs / mean queueing delay.</p>
{_html_table(*_size_rows(c.metrics))}
<h2>Jobs that could never run</h2><ul>{unrunnable}</ul>
<h2>Distributions</h2>{figures}
<p>Definitions: docs/simulator.md.</p></body></html>
"""
    path = d / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
