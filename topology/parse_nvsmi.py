"""Parse the matrix that ``nvidia-smi topo -m`` prints into a ``Topology``.

Real outputs are untidy, and all of these are accepted:

* tabs or runs of spaces between cells, `` X `` cells padded with spaces, trailing
  blanks, a ``# source:`` comment or the ``nvidia-smi topo -m`` command line before the
  matrix, and anything after it (the ``Legend:`` section, complete, truncated or absent);
* NIC columns and rows, named ``mlx5_0`` or ``NIC0``; a ``NIC Legend:`` section
  (``NIC0: mlx5_0``) gives NICs their device names. NIC rows carry no affinity columns
  and are optional: a NIC's links to the GPUs are read from the GPU rows, and NIC rows,
  when present, must agree with them;
* the multi-word columns ``CPU Affinity``, ``NUMA Affinity`` and ``GPU NUMA ID``, in
  any subset, with ``N/A`` values and *empty* cells: containers and VMs print nothing
  where the CPU and NUMA affinity would be (two tabs in a row, or only spaces in a
  copy from a terminal). Such a cell is empty, not lost: the row is still read as its
  header says;
* the old ``SOC`` cell, read as ``SYS``.

How a row is read: ``nvidia-smi`` writes each cell followed by a tab (and a second tab
after ``NUMA Affinity``), and a terminal turns tabs into spaces up to the next multiple
of 8. So cells are found by tab stops, not by splitting on blanks: a gap that reaches
*k* tab stops holds *k - 1* empty cells. The header's column positions do not help
here, since ``nvidia-smi`` does not align a cell under its (wider) header. Link cells
are never empty; in the affinity columns, empty cells beyond the header's count are
that second tab and are dropped from the right, and missing trailing cells are empty.

What each GPU gets:

* ``index`` from its row, ``cpu_affinity`` from ``CPU Affinity`` (``None`` for ``N/A``,
  an empty cell, or when the column is missing);
* ``numa_node`` from ``NUMA Affinity`` when that cell is one integer (``None`` for
  ``N/A``, an empty cell, or a range such as ``0-1``). Older drivers print no NUMA
  column at all; then NUMA ids are *inferred* from the distinct ``CPU Affinity``
  strings, numbered 0, 1, ... in order of first appearance (a GPU whose affinity is
  ``N/A`` or empty gets ``None``). This matches the machines seen so far, where each
  socket's GPUs share one affinity string, but the ids are only labels for the groups,
  not the kernel's node numbers.
  ``GPU NUMA ID`` (the GPU's own memory node on coherent systems) is read and checked
  for shape, but not stored.

Anything else raises ``TopologyError`` (and only that) with a message that names the
row, column or pair at fault: a matrix cut short, a row with too few or too many cells,
a row out of order, a diagonal that is not ``X``, an asymmetric pair, an unknown cell.

>>> t = parse_topo_matrix('''
...         GPU0    GPU1    mlx5_0  CPU Affinity    NUMA Affinity
... GPU0     X      NV2     PIX     0-11            0
... GPU1    NV2      X      SYS     12-23           1
... mlx5_0  PIX     SYS      X
... ''')
>>> t.size, str(t.link(0, 1)), t.gpus[1].numa_node, t.nics[0].name
(2, 'NV2', 1, 'mlx5_0')

In a container, the affinity cells are empty and ``GPU NUMA ID`` is still there:

>>> t = parse_topo_matrix('\\tGPU0\\tGPU1\\tCPU Affinity\\tNUMA Affinity\\tGPU NUMA ID\\n'
...                       'GPU0\\t X \\tNV4\\t\\t\\t\\tN/A\\nGPU1\\tNV4\\t X \\t\\t\\t\\tN/A\\n')
>>> [(g.cpu_affinity, g.numa_node) for g in t.gpus]
[(None, None), (None, None)]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from topology.links import Link
from topology.model import Gpu, Nic, Topology, TopologyError

__all__ = ["parse_topo_matrix"]

#: The affinity columns ``nvidia-smi`` prints after the device columns.
CPU_AFFINITY: Final = "CPU Affinity"
NUMA_AFFINITY: Final = "NUMA Affinity"
GPU_NUMA_ID: Final = "GPU NUMA ID"
_AFFINITY_COLUMNS: Final = (CPU_AFFINITY, NUMA_AFFINITY, GPU_NUMA_ID)

_GPU_NAME = re.compile(r"GPU([0-9]+)", re.ASCII)
_DEVICE_LIKE = re.compile(r"(?:GPU|NIC)[0-9]+|mlx[0-9]*_\S+", re.ASCII)
_LEGEND_START = re.compile(r"^\s*(?:NIC\s+)?Legend\s*:", re.IGNORECASE)
_NIC_LEGEND_START = re.compile(r"^\s*NIC\s+Legend\s*:", re.IGNORECASE)
_NIC_LEGEND_LINE = re.compile(r"^\s*(NIC[0-9]+)\s*:\s*(\S(?:.*\S)?)\s*$", re.ASCII)
_INT = re.compile(r"[0-9]+", re.ASCII)
_SELF = "X"
_NA = "N/A"
#: Where a terminal puts tab stops (and where ``nvidia-smi``'s cells start).
_TAB = 8
_TOKEN = re.compile(r"\S+")
#: Longest cell text quoted back in an error message.
_QUOTE_MAX = 40


@dataclass(frozen=True, slots=True)
class _Header:
    gpus: tuple[str, ...]
    nics: tuple[str, ...]
    affinity: tuple[str, ...]

    @property
    def devices(self) -> tuple[str, ...]:
        return self.gpus + self.nics


def parse_topo_matrix(text: str, *, name: str | None = None) -> Topology:
    """Build a ``Topology`` from ``nvidia-smi topo -m`` output.

    Parameters
    ----------
    text : str
        The command's output, with or without a preamble and legend.
    name : str, optional
        Stored as ``Topology.name``.

    Returns
    -------
    Topology
        GPUs with index, NUMA node and CPU affinity; NICs with their links to the GPUs.

    Raises
    ------
    TopologyError
        For any text that is not a complete, consistent matrix; the message names
        the row, column or pair at fault.

    Examples
    --------
    >>> t = parse_topo_matrix("\\tGPU0\\tGPU1\\tCPU Affinity\\nGPU0\\t X \\tSOC\\t0-7\\n"
    ...                       "GPU1\\tSOC\\t X \\t8-15\\n")
    >>> str(t.link(0, 1)), [g.numa_node for g in t.gpus]
    ('SYS', [0, 1])
    >>> parse_topo_matrix("GPU0 GPU1\\nGPU0 X NV1\\nGPU1 NV2 X")
    Traceback (most recent call last):
    ...
    topology.model.TopologyError: asymmetric link: GPU0-GPU1 is NV1 but GPU1-GPU0 is NV2
    """
    if not isinstance(text, str):
        raise TopologyError(f"expected the text of `nvidia-smi topo -m`, got {type(text).__name__}")
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise TopologyError("empty input: expected the output of `nvidia-smi topo -m`")
    at = _find_header(lines)
    header = _parse_header(lines[at].split())
    rows, trailer = _collect_rows(lines[at + 1:], header)
    legend = _nic_legend(trailer)

    n = len(header.gpus)
    links = [[_parse_cell(rows[g], g, col, j) for j, col in enumerate(header.gpus)]
             for g in header.gpus]

    nics = []
    for k, nic in enumerate(header.nics):
        col = n + k
        nic_links = [_parse_link(rows[g], g, nic, col) for g in header.gpus]
        if nic in rows:
            for j, g in enumerate(header.gpus):
                back = _parse_link(rows[nic], nic, g, j)
                if back != nic_links[j]:
                    raise TopologyError(
                        f"asymmetric link: {g}-{nic} is {nic_links[j]} but {nic}-{g} is {back}"
                    )
            for j, other in enumerate(header.nics):
                _parse_cell(rows[nic], nic, other, n + j)
        nics.append(Nic(name=legend.get(nic, nic), links=tuple(nic_links)))

    gpus = _gpus(header, rows)
    # Topology checks the GPU matrix's symmetry, naming the pair.
    return Topology(
        gpus=gpus,
        links=tuple(tuple(row) for row in links),
        nics=tuple(nics),
        name=name,
    )


def _quote(cell: str) -> str:
    return repr(cell if len(cell) <= _QUOTE_MAX else cell[:_QUOTE_MAX] + "...")


def _find_header(lines: Sequence[str]) -> int:
    """The header is the first line that starts with ``GPU0`` not followed by ``X``."""
    for at, line in enumerate(lines):
        tokens = line.split()
        if tokens and tokens[0] == "GPU0" and (len(tokens) == 1 or tokens[1] != _SELF):
            return at
    raise TopologyError(
        "no GPU header line found: expected a line of column names starting with GPU0, "
        "as `nvidia-smi topo -m` prints it"
    )


def _parse_header(tokens: Sequence[str]) -> _Header:
    devices: list[str] = []
    affinity: list[str] = []
    at = 0
    while at < len(tokens):
        column = _affinity_column(tokens, at)
        if column is not None:
            if column in affinity:
                raise TopologyError(f"header: column {column!r} appears twice")
            affinity.append(column)
            at += len(column.split())
            continue
        token = tokens[at]
        if affinity:
            raise TopologyError(
                f"header: unexpected column {_quote(token)} after the affinity columns"
            )
        if token in devices:
            raise TopologyError(f"header: column {_quote(token)} appears twice")
        devices.append(token)
        at += 1

    gpus: list[str] = []
    for position, token in enumerate(devices):
        if _GPU_NAME.fullmatch(token):
            expected = f"GPU{len(gpus)}"
            if position != len(gpus) or token != expected:
                raise TopologyError(
                    f"header: column {position + 1} is {token}; expected "
                    f"{expected if position == len(gpus) else 'GPU columns first'}"
                )
            gpus.append(token)
    return _Header(
        gpus=tuple(gpus), nics=tuple(devices[len(gpus):]), affinity=tuple(affinity)
    )


def _affinity_column(tokens: Sequence[str], at: int) -> str | None:
    for column in _AFFINITY_COLUMNS:
        words = column.split()
        if [t.lower() for t in tokens[at:at + len(words)]] == [w.lower() for w in words]:
            return column
    return None


def _collect_rows(
    lines: Sequence[str], header: _Header
) -> tuple[dict[str, list[str]], Sequence[str]]:
    """Rows by device name, checked for order and cell count; then the lines after."""
    gpu_count = len(header.gpus)
    rows: dict[str, list[str]] = {}
    expected = list(header.devices)
    end = len(lines)
    for at, line in enumerate(lines):
        tokens = line.split()
        if not tokens:
            continue
        head = tokens[0]
        if _LEGEND_START.match(line):
            end = at
            break
        if head not in header.devices:
            if _GPU_NAME.fullmatch(head):
                raise TopologyError(
                    f"row {head} is not in the header, which names GPU0..GPU{gpu_count - 1}"
                )
            if _DEVICE_LIKE.fullmatch(head):
                raise TopologyError(f"row {_quote(head)} is not a column of the header")
            end = at
            break
        if head in rows:
            raise TopologyError(f"row {head} appears twice")
        while expected and expected[0] != head and expected[0] not in header.gpus:
            expected.pop(0)  # NIC rows are optional, but keep their order
        if not expected or expected[0] != head:
            raise TopologyError(
                f"row {head} out of order: expected "
                f"{expected[0] if expected else 'no more rows'} next"
            )
        expected.pop(0)
        rows[head] = _row_cells(line, head, header)

    if gpu_count == 0:
        raise TopologyError("header names no GPU columns")
    got = [g for g in header.gpus if g in rows]
    if len(got) < gpu_count:
        missing = header.gpus[len(got):]
        span = missing[0] if len(missing) == 1 else f"{missing[0]}..{missing[-1]}"
        where = f"rows stop after {got[-1]}" if got else "no GPU rows follow it"
        raise TopologyError(
            f"matrix cut short: header names {gpu_count} GPUs but {where} ({span} missing)"
        )
    return rows, lines[end:]


def _row_cells(line: str, head: str, header: _Header) -> list[str]:
    """The cells of one row after its name, one per header column (affinity may be "").

    Link cells are the first non-blank words. The affinity cells are placed by tab stops
    (see the module docstring), so an empty CPU or NUMA cell keeps its column.
    """
    text = line.expandtabs(_TAB)
    spans = [(m.start(), m.end(), m.group()) for m in _TOKEN.finditer(text)]
    words = spans[1:]  # spans[0] is the row's name
    width = len(header.devices)
    affinity = len(header.affinity) if head in header.gpus else 0
    wanted = width + affinity

    def wrong_count(got: int) -> TopologyError:
        what = f"{width} link cells"
        if affinity:
            what += " + " + ", ".join(header.affinity)
        return TopologyError(
            f"row {head} has too {'few' if got < wanted else 'many'} cells: "
            f"expected {wanted} ({what}), got {got}"
        )

    if len(words) < width or (len(words) > width and not affinity):
        raise wrong_count(len(words))
    cells = [w for _, _, w in words[:width]]
    if not affinity:
        return cells
    if len(words) < wanted and not all(_is_link_cell(c) for c in cells):
        # An affinity value where a link should be: a link cell is missing, not empty.
        raise wrong_count(len(words))
    end = spans[width][1]  # where the last link cell (or the name) ends
    found: list[str] = []
    for start, stop, word in words[width:]:
        stops = start // _TAB - end // _TAB  # tab stops in (end, start]
        found += [""] * (max(stops, 1) - 1) + [word]
        end = stop
    # Surplus empty cells are nvidia-smi's second tab after NUMA Affinity.
    for k in range(len(found) - 1, -1, -1):
        if len(found) <= affinity:
            break
        if not found[k]:
            del found[k]
    if len(found) > affinity:
        raise wrong_count(len(words))
    return cells + found + [""] * (affinity - len(found))


def _is_link_cell(cell: str) -> bool:
    if cell == _SELF:
        return True
    try:
        Link.parse(cell)
    except ValueError:
        return False
    return True


def _parse_cell(cells: Sequence[str], row: str, column: str, j: int) -> Link | None:
    """The link in ``row`` under ``column`` (position ``j``); ``None`` on the diagonal."""
    if row == column:
        if cells[j] != _SELF:
            raise TopologyError(
                f"row {row}, column {column}: diagonal is {_quote(cells[j])}, not X"
            )
        return None
    return _parse_link(cells, row, column, j)


def _parse_link(cells: Sequence[str], row: str, column: str, j: int) -> Link:
    """The link in ``row`` under ``column`` (position ``j``), off the diagonal."""
    cell = cells[j]
    if cell == _SELF:
        raise TopologyError(f"row {row}, column {column}: X off the diagonal")
    try:
        return Link.parse(cell)
    except ValueError:
        raise TopologyError(f"row {row}, column {column}: unknown link {_quote(cell)}") from None


def _nic_legend(trailer: Sequence[str]) -> dict[str, str]:
    """``NIC0: mlx5_0`` lines after a ``NIC Legend:`` line."""
    legend: dict[str, str] = {}
    inside = False
    for line in trailer:
        if _NIC_LEGEND_START.match(line):
            inside = True
        elif _LEGEND_START.match(line):
            inside = False
        elif inside and (m := _NIC_LEGEND_LINE.match(line)):
            legend.setdefault(m.group(1), m.group(2))
    return legend


def _gpus(header: _Header, rows: dict[str, list[str]]) -> tuple[Gpu, ...]:
    width = len(header.devices)
    values = [
        dict(zip(header.affinity, rows[g][width:], strict=True)) for g in header.gpus
    ]
    cpu: list[str | None] = [
        None if (c := v.get(CPU_AFFINITY, _NA)) in (_NA, "") else c for v in values
    ]
    numa: list[int | None]
    if NUMA_AFFINITY in header.affinity:
        numa = [_numa_cell(g, v[NUMA_AFFINITY]) for g, v in zip(header.gpus, values, strict=True)]
    else:
        groups: dict[str, int] = {}
        numa = [None if c is None else groups.setdefault(c, len(groups)) for c in cpu]
    for g, v in zip(header.gpus, values, strict=True):
        gpu_numa = v.get(GPU_NUMA_ID, _NA)
        if gpu_numa not in (_NA, "") and not _INT.fullmatch(gpu_numa):
            raise TopologyError(f"row {g}, column {GPU_NUMA_ID}: expected a number or N/A, "
                                f"got {_quote(gpu_numa)}")
    return tuple(
        Gpu(index=i, numa_node=numa[i], cpu_affinity=cpu[i]) for i in range(len(header.gpus))
    )


def _numa_cell(row: str, cell: str) -> int | None:
    """One integer is a node; ``N/A`` or a range (``0-1``, ``0,2``) is no single node."""
    if _INT.fullmatch(cell):
        return int(cell)
    if cell in (_NA, "") or re.fullmatch(r"[0-9]+(?:[-,][0-9]+)+", cell, re.ASCII):
        return None
    raise TopologyError(
        f"row {row}, column {NUMA_AFFINITY}: expected a node number or N/A, got {_quote(cell)}"
    )
