"""The CRD and DaemonSet manifests agree with topology/names.py and with the plugin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from plugin.config import DEFAULT_KUBELET_DIR, build_parser
from plugin.podresources import DEFAULT_POD_RESOURCES_SOCKET
from topology.names import (
    GPUTOPOLOGY_GROUP,
    GPUTOPOLOGY_KIND,
    GPUTOPOLOGY_PLURAL,
    GPUTOPOLOGY_VERSION,
)

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def test_crd_matches_the_shared_names() -> None:
    crd = _one(_docs("crd-gputopology.yaml"), "CustomResourceDefinition")
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{GPUTOPOLOGY_PLURAL}.{GPUTOPOLOGY_GROUP}"
    assert spec["group"] == GPUTOPOLOGY_GROUP
    assert spec["scope"] == "Cluster"
    assert spec["names"]["kind"] == GPUTOPOLOGY_KIND
    assert spec["names"]["plural"] == GPUTOPOLOGY_PLURAL
    (version,) = spec["versions"]
    assert version["name"] == GPUTOPOLOGY_VERSION and version["served"] and version["storage"]
    props = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert props["nodeName"]["type"] == "string"
    # Every top-level key of the object the plugin publishes is in the schema.
    from topology.handoff import gputopology_object
    from topology.presets import preset

    obj = gputopology_object("n1", preset("dgx1-v100"))
    assert set(obj["spec"]) <= set(props)
    assert set(obj["spec"]["topology"]) <= set(props["topology"]["properties"])
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["GPUs", "Model", "NVLink", "Fingerprint", "Age"]
    assert spec["names"]["shortNames"]


def test_daemonset_identity_and_mounts() -> None:
    docs = _docs("device-plugin-rbac.yaml")
    sa = _one(docs, "ServiceAccount")
    binding = _one(docs, "ClusterRoleBinding")
    assert binding["subjects"][0]["name"] == sa["metadata"]["name"]
    ds = _one(_docs("device-plugin-daemonset.yaml"), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"]
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/gputopo/gpu-topology-scheduler:0.1.0"
    assert c["command"] == ["gputopo-device-plugin"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    hostpaths = {v["hostPath"]["path"] for v in pod["volumes"]}
    for path in (DEFAULT_KUBELET_DIR, DEFAULT_POD_RESOURCES_SOCKET.parent):
        assert str(path) in mounts and str(path) in hostpaths
    # Every flag in args is one the command knows.
    known = {a for action in build_parser()._actions for a in action.option_strings}
    assert {a.split("=")[0] for a in c["args"]} <= known
