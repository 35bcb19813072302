"""The install as the tools render it: ``kubectl kustomize manifests/`` and
``helm template`` of the chart, with the kubectl and helm built from their Go modules
(tests/e2e/cluster/build, tests/e2e/tools/helm/build; cached, warm in seconds).

The two renders are compared as parsed objects, after three documented normalisations:

* the Namespace object: the kustomization creates ``gputopo-system``; the chart leaves
  the namespace to helm (``helm install --namespace gputopo-system --create-namespace``);
* ConfigMap values that are YAML documents (``config.yaml``) are compared parsed, so
  comments and layout do not count;
* pod-template annotations ``checksum/*``: the chart rolls the scheduler when its
  configuration changes, which a plain manifest cannot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.install.manifests import CHART, MANIFESTS, NAMESPACE, ROOT, Obj

__all__ = ["Key", "by_key", "helm", "helm_template", "kubectl", "kustomize", "normalised"]

CLUSTER_BUILD = ROOT / "tests" / "e2e" / "cluster" / "build"
HELM_BUILD = ROOT / "tests" / "e2e" / "tools" / "helm" / "build"
RELEASE = "gputopo"

Key = tuple[str, str, str, str]


def _built(script: Path, tool: str) -> Path:
    """The tool from its cached build (building it once); skipped, with the reason, where
    Go is missing, unless the suite is required (CI: GPUTOPO_E2E_REQUIRED=1)."""
    required = os.environ.get("GPUTOPO_E2E_REQUIRED") == "1"
    why = None
    if shutil.which("go") is None:
        why = f"{tool} is built from its Go module, and Go is not installed"
    else:
        proc = subprocess.run([str(script)], capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            return Path(proc.stdout.strip().splitlines()[-1]) / tool
        why = f"building {tool} failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}"
    if required:
        pytest.fail(f"GPUTOPO_E2E_REQUIRED=1 but: {why}")
    pytest.skip(why)


def kubectl() -> Path:
    return _built(CLUSTER_BUILD, "kubectl")


def helm() -> Path:
    return _built(HELM_BUILD, "helm")


def _run(argv: Sequence[str | Path]) -> str:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} failed (rc={proc.returncode}):\n"
                             f"{proc.stderr}{proc.stdout}")
    return proc.stdout


def _objects(text: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(text) if d]


def kustomize(kubectl_bin: Path) -> tuple[str, list[Obj]]:
    text = _run([kubectl_bin, "kustomize", MANIFESTS])
    return text, _objects(text)


def helm_template(helm_bin: Path, *settings: str, namespace: str = NAMESPACE
                  ) -> tuple[str, list[Obj]]:
    argv: list[str | Path] = [helm_bin, "template", RELEASE, CHART, "--namespace", namespace,
                              "--include-crds"]
    for s in settings:
        argv += ["--set", s]
    text = _run(argv)
    return text, _objects(text)


def key(o: Obj) -> Key:
    meta = o["metadata"]
    return (o["apiVersion"], o["kind"], meta.get("namespace", ""), meta["name"])


def by_key(objs: list[Obj]) -> dict[Key, Obj]:
    out: dict[Key, Obj] = {}
    for o in objs:
        assert key(o) not in out, f"{key(o)} rendered twice"
        out[key(o)] = o
    return out


def normalised(objs: list[Obj]) -> dict[Key, Any]:
    """The objects as compared (see the module docstring)."""
    out: dict[Key, Any] = {}
    for o in objs:
        if o["kind"] == "Namespace":
            continue
        o = yaml.safe_load(yaml.safe_dump(o))  # a deep copy
        if o["kind"] == "ConfigMap":
            o["data"] = {k: yaml.safe_load(v) if k.endswith(".yaml") else v
                         for k, v in (o.get("data") or {}).items()}
        template = (o.get("spec") or {}).get("template") or {}
        ann = (template.get("metadata") or {}).get("annotations")
        if ann:
            for k in [k for k in ann if k.startswith("checksum/")]:
                del ann[k]
            if not ann:
                del template["metadata"]["annotations"]
        out[key(o)] = o
    return out
