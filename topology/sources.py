"""One entry point for "which topology": a preset name, a ``topo -m`` file or a JSON file.

>>> load_topology("workstation-2gpu-nvlink").size
2
"""

from __future__ import annotations

from pathlib import Path

from topology.model import Topology, TopologyError
from topology.parse_nvsmi import parse_topo_matrix
from topology.presets import PRESETS
from topology.serialize import loads

__all__ = ["load_topology"]


def load_topology(spec: str) -> Topology:
    """Resolve ``spec`` to a topology.

    Parameters
    ----------
    spec : str
        A preset name (see ``topology.presets.PRESETS``), or the path of a file holding
        either ``nvidia-smi topo -m`` output or the project's JSON form
        (``topology.serialize``). The file's kind is told by its content: JSON when its
        first non-blank character is ``{``. A ``topo -m`` file's topology is named after
        the file's stem; a JSON file keeps the name it carries.

    Raises
    ------
    TopologyError
        Naming the file and what is wrong with it, or, for a name that is neither a
        preset nor a file, listing the presets.

    Examples
    --------
    >>> load_topology("no-such-machine")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    topology.model.TopologyError: 'no-such-machine' is neither a preset nor a file; presets: ...
    """
    found = PRESETS.get(spec)
    if found is not None:
        return found.build()
    path = Path(spec)
    try:
        exists = bool(spec) and path.exists()
    except OSError as e:
        raise TopologyError(f"{spec}: cannot read: {e.strerror or e}") from None
    if not exists:
        raise TopologyError(
            f"{spec!r} is neither a preset nor a file; presets: {', '.join(sorted(PRESETS))}"
        )
    if not path.is_file():
        raise TopologyError(f"{spec}: not a regular file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise TopologyError(f"{spec}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise TopologyError(f"{spec}: cannot read: {e.strerror or e}") from None
    try:
        if text.lstrip().startswith("{"):
            return loads(text)
        return parse_topo_matrix(text, name=path.stem)
    except TopologyError as e:
        raise TopologyError(f"{spec}: {e}") from None
    except RecursionError:
        raise TopologyError(f"{spec}: JSON nested too deeply") from None
