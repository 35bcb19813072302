"""What ``kubectl apply -k manifests/`` installs, read without kubectl.

``manifests/kustomization.yaml`` lists plain resources (no patches, no generators, no
``namespace:``), so its objects are exactly the documents of the files it names, in
order. The end-to-end suite checks the same against the real ``kubectl kustomize``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
CHART = MANIFESTS / "helm" / "gpu-topology-scheduler"
NAMESPACE = "gputopo-system"

Obj = dict[str, Any]


def docs(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomization() -> Obj:
    (k,) = docs(MANIFESTS / "kustomization.yaml")
    return k


def installed() -> list[Obj]:
    """Every object of the kustomization, in order."""
    out: list[Obj] = []
    for name in kustomization()["resources"]:
        out.extend(docs(MANIFESTS / name))
    return out


def one(objs: list[Obj], kind: str, name: str) -> Obj:
    (found,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return found
