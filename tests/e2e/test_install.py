"""What an operator installs, on the real API server of the end-to-end suite.

* ``kubectl apply --server-side -k manifests/`` and ``helm template | kubectl apply
  --server-side`` install (the built kubectl and helm); every object is there, valid, and
  the RBAC grants exactly the table of tests/install/test_rbac.py, as the real
  authorizer answers (SubjectAccessReview, what ``kubectl auth can-i`` asks).
* The CRD serves the objects the real device plugins published (printer columns, short
  name) and refuses broken ones with the reason.
* ``gputopo cluster nodes|show`` and ``gputopo explain`` (and ``kubectl gputopo``) give
  the extender's own answers on this cluster: the same free GPUs as the running
  extender's /topology, the same reasons as its /filter.

The session's cluster already runs the extender and the plugin as processes, so the
installed Deployments and DaemonSet run nothing here (the fake CRI runs no container,
and no default scheduler places their pods): the checks are on the objects. What is
installed is deleted at the end, except the CRD, which the session's cluster uses.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.harness import REPO, ApiStatus, LocalCluster, wait_for
from tests.e2e.pods import (
    assigned,
    create,
    delete_all,
    describe,
    extender_view,
    failed_scheduling_messages,
    gpu_pod,
    wait_allocated,
)
from tests.install import render
from tests.install.manifests import NAMESPACE, Obj
from tests.install.test_rbac import EXTENDER, PLUGIN, USES, Use
from topology.handoff import gputopology_object
from topology.presets import PRESETS

pytestmark = pytest.mark.e2e

GPUTOPOLOGIES = "/apis/gputopo.io/v1alpha1/gputopologies"
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
CHART_NAMESPACE = "gputopo-chart"
_names = itertools.count()


# -- installing -------------------------------------------------------------------------
def _path(o: Obj) -> str:
    """The object's API path (the kinds the install has)."""
    group, _, version = o["apiVersion"].rpartition("/")
    plural = {"Namespace": "namespaces", "ServiceAccount": "serviceaccounts",
              "ConfigMap": "configmaps", "Service": "services", "Deployment": "deployments",
              "DaemonSet": "daemonsets", "ClusterRole": "clusterroles",
              "ClusterRoleBinding": "clusterrolebindings", "Role": "roles",
              "RoleBinding": "rolebindings", "NetworkPolicy": "networkpolicies",
              "CustomResourceDefinition": "customresourcedefinitions"}[o["kind"]]
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    ns = o["metadata"].get("namespace")
    return f"{base}/namespaces/{ns}/{plural}/{o['metadata']['name']}" if ns else \
        f"{base}/{plural}/{o['metadata']['name']}"


def _exists(cluster: LocalCluster, o: Obj) -> dict[str, Any] | None:
    try:
        return dict(cluster.api("GET", _path(o)))
    except ApiStatus as e:
        if e.status == 404:
            return None
        raise


def _uninstall(cluster: LocalCluster, objs: list[Obj]) -> None:
    """Delete what was installed, except the CRD (the session's cluster uses it)."""
    for o in reversed(objs):
        if o["kind"] == "CustomResourceDefinition":
            continue
        try:
            cluster.api("DELETE", _path(o), {"propagationPolicy": "Background"})
        except ApiStatus as e:
            if e.status != 404:
                raise
    def gone(o: Obj) -> bool:
        return _exists(cluster, o) is None

    for o in objs:
        if o["kind"] != "CustomResourceDefinition":
            wait_for(f"{o['kind']} {o['metadata']['name']} deleted",
                     functools.partial(gone, o), timeout=120, on_timeout=cluster.diagnostics)


def _apply(cluster: LocalCluster, *args: str, stdin: str | None = None) -> str:
    return cluster.kubectl("apply", "--server-side", *args, input=stdin).stdout


def _observed(cluster: LocalCluster, o: Obj, generation: int) -> bool:
    live = _exists(cluster, o) or {}
    return bool(live.get("status", {}).get("observedGeneration") == generation)


def _check_installed(cluster: LocalCluster, objs: list[Obj], namespace: str) -> None:
    for o in objs:
        live = _exists(cluster, o)
        assert live is not None, f"{o['kind']} {o['metadata']['name']} not installed"
        if o["kind"] in ("Deployment", "DaemonSet"):
            # Valid and taken up by its controller (it runs nothing here).
            want = o["spec"]["template"]["spec"]
            got = live["spec"]["template"]["spec"]
            assert got["serviceAccountName"] == want["serviceAccountName"]
            assert got["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            wait_for(f"{o['kind']} {o['metadata']['name']} observed by its controller",
                     functools.partial(_observed, cluster, o, live["metadata"]["generation"]),
                     timeout=60, on_timeout=cluster.diagnostics)
    ext = next(o for o in objs if o["kind"] == "Deployment"
               and o["metadata"]["name"] == "gputopo-extender")
    live = _exists(cluster, ext)
    assert live is not None
    assert live["spec"]["replicas"] == 2 and live["spec"]["strategy"]["type"] == "Recreate"
    (c,) = live["spec"]["template"]["spec"]["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert live["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert live["metadata"]["namespace"] == namespace


# -- RBAC as the real authorizer answers -------------------------------------------------
def _allowed(cluster: LocalCluster, namespace: str, account: str, *, verb: str,
             group: str, resource: str, name: str = "", ns: str = "") -> bool:
    resource, _, subresource = resource.partition("/")
    review = {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {
            "user": f"system:serviceaccount:{namespace}:{account}",
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}",
                       "system:authenticated"],
            "resourceAttributes": {"verb": verb, "group": group, "resource": resource,
                                   "subresource": subresource, "name": name,
                                   "namespace": ns},
        },
    }
    answer = cluster.api("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
    return bool(answer["status"].get("allowed"))


def _check_rbac(cluster: LocalCluster, namespace: str) -> None:
    """Every row of the table is allowed; for the extender and the plugin, every other
    verb on the same resources is denied (the scheduler also has upstream's roles)."""
    def ns_of(u: Use) -> str:
        return namespace if u.namespace else ""

    denied_wrongly = [str(u) for u in USES if not _allowed(
        cluster, namespace, u.account, verb=u.verb, group=u.group, resource=u.resource,
        name=u.names[0] if u.names else "", ns=ns_of(u))]
    assert not denied_wrongly, f"the API server denies what the table grants: {denied_wrongly}"
    allowed_wrongly = []
    for account in (EXTENDER, PLUGIN):
        rows = [u for u in USES if u.account == account]
        for group, resource in {(u.group, u.resource) for u in rows}:
            mine = [u for u in rows if (u.group, u.resource) == (group, resource)]
            ns = ns_of(mine[0])
            for verb in VERBS:
                granted = [u for u in mine if u.verb == verb]
                if granted and not any(u.names for u in granted):
                    continue  # granted for any name
                if _allowed(cluster, namespace, account, verb=verb, group=group,
                            resource=resource, name="someone-else", ns=ns):
                    allowed_wrongly.append(f"{account}: {verb} {group or 'core'}/{resource}")
        for verb, group, resource in (("get", "", "secrets"), ("create", "", "events"),
                                      ("list", "", "nodes")):
            if _allowed(cluster, namespace, account, verb=verb, group=group,
                        resource=resource):
                allowed_wrongly.append(f"{account}: {verb} {group or 'core'}/{resource}")
    assert not allowed_wrongly, f"allowed, but not in the table: {allowed_wrongly}"


# -- the install tests -------------------------------------------------------------------
@pytest.fixture(scope="module")
def kubectl_bin() -> Path:
    return render.kubectl()


@pytest.fixture(scope="module")
def helm_bin() -> Path:
    return render.helm()


def test_the_manifests_install_server_side(cluster: LocalCluster, kubectl_bin: Path) -> None:
    _, objs = render.kustomize(kubectl_bin)
    try:
        out = _apply(cluster, "-k", str(REPO / "manifests"))
        assert "gputopologies.gputopo.io serverside-applied" in out, out
        _check_installed(cluster, objs, NAMESPACE)
        _check_rbac(cluster, NAMESPACE)
        # Applying again changes nothing and conflicts with nothing.
        _apply(cluster, "-k", str(REPO / "manifests"))
    finally:
        _uninstall(cluster, objs)


def test_the_chart_installs_server_side(cluster: LocalCluster, helm_bin: Path) -> None:
    text, objs = render.helm_template(helm_bin, namespace=CHART_NAMESPACE)
    namespace = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": CHART_NAMESPACE}}  # helm's --create-namespace
    try:
        _apply(cluster, "-f", "-", stdin=yaml.safe_dump(namespace))
        out = _apply(cluster, "-f", "-", stdin=text)
        assert "deployment.apps/gputopo-extender serverside-applied" in out, out
        _check_installed(cluster, objs, CHART_NAMESPACE)
        _check_rbac(cluster, CHART_NAMESPACE)
        # The other modes render objects the real API server takes as well.
        for settings in (("scheduler.mode=main",
                          "networkPolicy.extraFrom[0].ipBlock.cidr=10.0.0.0/24"),
                         ("tls.enabled=true", "resourceName=example.com/gpu")):
            variant, _ = render.helm_template(helm_bin, *settings, namespace=CHART_NAMESPACE)
            cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-",
                            input=variant)
    finally:
        _uninstall(cluster, [namespace, *objs])


# -- the CRD -------------------------------------------------------------------------------
def test_the_crd_serves_what_the_plugins_published(cluster: LocalCluster) -> None:
    out = cluster.kubectl("get", "gputopo", "-o", "wide").stdout  # the short name
    header, *rows = out.strip().splitlines()
    assert header.split() == ["NAME", "GPUS", "MODEL", "NVLINK", "FINGERPRINT", "AGE"]
    lines = {r.split()[0]: r for r in rows}
    assert set(lines) >= set(cluster.nodes)
    # gpu-a is a DGX-1: 8 V100 with NV1 and NV2 links; gpu-b has no NVLink at all.
    assert lines["gpu-a"].split()[1] == "8" and "NV1,NV2" in lines["gpu-a"]
    assert "Tesla V100-SXM2-16GB" in lines["gpu-a"]
    assert lines["gpu-b"].split()[1] == "8" and " none " in lines["gpu-b"]


def _dry_run(cluster: LocalCluster, obj: Obj) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-",
                           input=json.dumps(obj), check=False)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_crd_accepts_every_topology_the_plugin_can_publish(
        cluster: LocalCluster, name: str) -> None:
    proc = _dry_run(cluster, gputopology_object(f"node-{name}", PRESETS[name].build(),
                                                node_uid="0000"))
    assert proc.returncode == 0, proc.stderr


def _broken(change: Any) -> Obj:
    obj = gputopology_object("broken", PRESETS["dgx1-v100"].build())
    change(obj["spec"])
    return obj


@pytest.mark.parametrize(("change", "reason"), [
    (lambda s: s["topology"]["links"].pop(), "links must have one row per GPU"),
    (lambda s: s["topology"]["links"][2].pop(), "every row of links must have one cell per GPU"),
    (lambda s: s["topology"]["links"][0].__setitem__(1, "SYS"), "links must be symmetric"),
    (lambda s: s["topology"]["links"][3].__setitem__(3, "NV1"), "X on the diagonal"),
    (lambda s: s["topology"]["links"][0].__setitem__(1, "FAST"), "should match"),
    (lambda s: s["topology"]["gpus"].reverse(), "gpus must be listed in index order"),
    (lambda s: s.__setitem__("gpuCount", 4), "gpuCount must equal the number of GPUs"),
    (lambda s: s["topology"].__setitem__("schema", "gputopo.io/topology/v2"),
     'Unsupported value: "gputopo.io/topology/v2"'),
    (lambda s: s.__setitem__("nodeName", "elsewhere"), "spec.nodeName must equal metadata.name"),
    (lambda s: s.pop("topology"), "spec.topology: Required value"),
], ids=["rows", "cells", "asymmetric", "diagonal", "link-class", "order", "gpu-count",
        "schema", "node-name", "no-topology"])
def test_the_crd_refuses_a_broken_topology(cluster: LocalCluster, change: Any,
                                           reason: str) -> None:
    proc = _dry_run(cluster, _broken(change))
    assert proc.returncode != 0, proc.stdout
    assert reason in proc.stderr, proc.stderr
    assert "broken" not in {o["metadata"]["name"]
                            for o in cluster.api("GET", GPUTOPOLOGIES)["items"]}


# -- the operator tools on the real cluster --------------------------------------------
@pytest.fixture
def ns(cluster: LocalCluster) -> Iterator[str]:
    name = f"e2e-tools-{next(_names)}"
    cluster.ensure_namespace(name)
    yield name
    delete_all(cluster, name)


def gputopo(cluster: LocalCluster, *args: str, kubectl: bool = False) -> str:
    """The installed command, as an operator runs it (a kubeconfig, no repository)."""
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}",
           "KUBECONFIG": str(cluster.kubeconfig)}
    argv = [cluster.tools["kubectl"], "gputopo", *args] if kubectl else \
        [str(bindir / "gputopo"), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd="/",
                          timeout=120, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)}: rc={proc.returncode}\n{proc.stderr}"
    return proc.stdout


def _rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in text.splitlines() if line.split()}


def _extender_free(cluster: LocalCluster) -> dict[str, int]:
    return {n["name"]: len(n["free"]) for n in extender_view(cluster)["nodes"]}


def _tools_free(cluster: LocalCluster) -> dict[str, int]:
    nodes = json.loads(gputopo(cluster, "cluster", "nodes", "--json"))["nodes"]
    return {n["name"]: len(n["free"]) for n in nodes}


def test_nodes_show_and_explain_a_bound_pod(cluster: LocalCluster, ns: str) -> None:
    cluster.wait_extender_ready()
    create(cluster, ns, gpu_pod("pair", 2, min_link="nvlink", required=True))
    pod = wait_allocated(cluster, ns, "pair")
    node = pod["spec"]["nodeName"]
    held = sorted(int(u.rsplit("-", 1)[1]) for u in (assigned(pod) or {})["main"])
    # nodes: free GPUs as the running extender counts them (its /topology), once both
    # have seen the pod.
    wait_for("gputopo cluster nodes to agree with the extender's /topology",
             lambda: _tools_free(cluster) == _extender_free(cluster), timeout=60,
             on_timeout=lambda: f"{gputopo(cluster, 'cluster', 'nodes')}\n"
                                f"{_extender_free(cluster)}")
    nodes = gputopo(cluster, "cluster", "nodes")
    assert nodes.splitlines()[0].split() == ["NODE", "MODEL", "FREE/GPUS", "BEST", "FREE",
                                             "SET", "PER", "SIZE"]
    free = _extender_free(cluster)
    for name in cluster.nodes:
        line = " ".join(_rows(nodes)[name])
        assert f" {free[name]}/" in line, line
    # gpu-b (all SYS) offers SYS sets only; gpu-c's NVLink pair is NV12.
    assert " ".join(_rows(nodes)["gpu-b"]).endswith("2: SYS, 4: SYS ring, 8: SYS ring")
    # The kubectl plugin says the same.
    assert gputopo(cluster, "nodes", kubectl=True) == nodes
    # show: the pod's GPUs are marked and named.
    shown = gputopo(cluster, "cluster", "show", node)
    marked = [line.split("\t")[0] for line in shown.splitlines()
              if line.startswith("GPU") and "\t" in line]
    assert [int(m[3:-1]) for m in marked if m.endswith("*")] == held
    rows = _rows(shown)
    for i in held:
        assert rows[f"GPU{i}"][2:5] == ["used", f"{ns}/pair", "main"], shown
    # explain: its node, its records, and the extender's verdicts now.
    text = gputopo(cluster, "explain", f"{ns}/pair")
    assert text.startswith(f"Pod {ns}/pair: main=2 min-link=NV1 required\n"
                           f"Bound to {node} (phase "), text
    gpus = ",".join(map(str, held))
    assert f"assigned by the extender at bind: main: GPUs {gpus}" in text
    assert f"allocated by the kubelet (recorded by the plugin): main: GPUs {gpus}" in text
    assert f"main: GPUs {gpus}: ring bottleneck NV" in text
    assert "(NVLink all the way)" in text
    # gpu-b has no NVLink pair at all: the filter's unresolvable reason.
    assert " ".join(_rows(text)["gpu-b"]) == (
        "gpu-b fails, even with every GPU free 8 free GPUs (0,1,2,3,4,5,6,7): no NVLink pair")
    assert gputopo(cluster, "explain", "pair", "-n", ns, kubectl=True) == text


def _filter(cluster: LocalCluster, pod: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps({"Pod": pod, "Nodes": None, "NodeNames": sorted(cluster.nodes)})
    req = urllib.request.Request(f"{cluster.extender_url}/filter", data=body.encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return dict(json.loads(resp.read()))


def test_explain_an_impossible_pod_in_the_extenders_words(cluster: LocalCluster,
                                                          ns: str) -> None:
    cluster.wait_extender_ready()
    create(cluster, ns, gpu_pod("impossible", 4, min_link="NV2", required=True))
    wait_for("a FailedScheduling event", lambda: failed_scheduling_messages(
        cluster, ns, "impossible") or None, timeout=60,
        on_timeout=lambda: describe(cluster, ns, "impossible"))
    live = _filter(cluster, cluster.pod(ns, "impossible"))
    assert not live["NodeNames"], live
    reasons = {**live["FailedNodes"], **live["FailedAndUnresolvableNodes"]}

    def says_the_same() -> str | None:
        text = gputopo(cluster, "explain", f"{ns}/impossible")
        rows = {line.split()[0]: line for line in text.splitlines() if line.strip()}
        same = all(rows.get(n, "").strip().endswith(r) for n, r in reasons.items())
        return text if same else None

    text = wait_for("explain to give the running extender's /filter reasons", says_the_same,
                    timeout=60, on_timeout=lambda: str(reasons))
    assert "Not bound (phase Pending).\nNo GPU node can take it now." in text
    assert any("no NV2-or-better ring of 4" in r for r in reasons.values()), reasons
    assert "kube-scheduler's FailedScheduling events (newest last):" in text
    assert "no NV2-or-better ring of 4" in text.split("FailedScheduling events")[1]
