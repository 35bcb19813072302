"""The cluster-file mode's memory across restarts: the GPUs its binds handed out.

A small JSON file (schema ``gputopo.io/extender-state/v1``), by default next to the
cluster file (``cluster.yaml`` -> ``cluster.state.json``)::

    {"schema": "gputopo.io/extender-state/v1",
     "holdings": [{"namespace": "ml", "name": "trainer-0", "uid": "...",
                   "node": "gpu-node-1", "gpus": {"main": ["GPU-...", "GPU-..."]}}]}

:func:`save` writes it atomically (a temporary file in the same directory, flushed and
fsynced, renamed over the old one, then the directory fsynced), so after a crash the
file holds either the old holdings or the new ones, never a torn mix; a bind answers
only after its holding is on disk. :func:`load` reads it back at start.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from extender.request import PodRef
from extender.state import Holding

__all__ = ["SCHEMA", "StateFileError", "default_path", "load", "save"]

SCHEMA: Final = "gputopo.io/extender-state/v1"


class StateFileError(ValueError):
    """The state file cannot be read or written; the message names the file."""


def default_path(cluster_file: str | Path) -> Path:
    """``cluster.yaml`` -> ``cluster.state.json``, in the same directory."""
    p = Path(cluster_file)
    return p.with_name(f"{p.stem}.state.json")


def save(path: Path, holdings: Iterable[Holding]) -> None:
    """Write ``holdings`` to ``path`` atomically (see the module docstring). Blocking."""
    doc = {"schema": SCHEMA, "holdings": [
        {"namespace": h.pod.namespace, "name": h.pod.name, "uid": h.pod.uid, "node": h.node,
         "gpus": {c: list(ids) for c, ids in h.sets}}
        for h in sorted(holdings, key=lambda h: h.pod.uid)]}
    data = json.dumps(doc, indent=1).encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: Path) -> list[Holding]:
    """The holdings in ``path``; none when it does not exist yet."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise StateFileError(f"{path}: cannot read the state file: {e}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise StateFileError(f"{path}: not a state file (schema {SCHEMA})")
    out: list[Holding] = []
    for i, h in enumerate(data.get("holdings") or []):
        out.append(_holding(h, f"{path}: holdings[{i}]"))
    return out


def _holding(h: Any, where: str) -> Holding:
    ok = isinstance(h, dict) and all(isinstance(h.get(k), str) and h.get(k)
                                     for k in ("namespace", "name", "uid", "node"))
    gpus = h.get("gpus") if isinstance(h, dict) else None
    if not ok or not isinstance(gpus, dict) or not all(
            isinstance(ids, list) and all(isinstance(i, str) for i in ids)
            for ids in gpus.values()):
        raise StateFileError(f"{where}: expected namespace, name, uid, node and "
                             "gpus {container: [GPU id]}")
    return Holding(
        pod=PodRef(namespace=h["namespace"], name=h["name"], uid=h["uid"]), node=h["node"],
        sets=tuple(sorted((str(c), tuple(ids)) for c, ids in gpus.items())), source="bind",
    )
