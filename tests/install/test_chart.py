"""The Helm chart: lint-clean, and its default render is the kustomization's objects.

helm and kubectl are the ones built from their Go modules (see tests/install/render.py);
CI builds both before ``make test``. Installing both renders on the real API server is
tests/e2e/test_install.py.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
import yaml

from tests.install import render
from tests.install.manifests import CHART, MANIFESTS, Obj, one


@pytest.fixture(scope="module")
def helm_bin() -> Path:
    return render.helm()


@pytest.fixture(scope="module")
def kubectl_bin() -> Path:
    return render.kubectl()


def _diff(a: Obj, b: Obj) -> str:
    return "".join(difflib.unified_diff(
        yaml.safe_dump(a, sort_keys=True).splitlines(keepends=True),
        yaml.safe_dump(b, sort_keys=True).splitlines(keepends=True),
        "kubectl kustomize manifests/", "helm template"))


def test_the_chart_lints_clean(helm_bin: Path) -> None:
    for settings in ([], ["scheduler.mode=main", "networkPolicy.enabled=false"],
                     ["tls.enabled=true", "resourceName=example.com/gpu"]):
        argv = [helm_bin, "lint", CHART, "--strict"]
        for s in settings:
            argv += ["--set", s]
        out = render._run(argv)
        assert "0 chart(s) failed" in out, out


def test_default_render_equals_the_kustomization(helm_bin: Path, kubectl_bin: Path) -> None:
    _, kobjs = render.kustomize(kubectl_bin)
    _, hobjs = render.helm_template(helm_bin)
    k = render.normalised(kobjs)
    h = render.normalised(hobjs)
    assert sorted(k) == sorted(h), (
        f"only in the kustomization: {sorted(set(k) - set(h))}; "
        f"only in the chart: {sorted(set(h) - set(k))}")
    for key in k:
        assert k[key] == h[key], f"{key} differs:\n{_diff(k[key], h[key])}"
    # What the normalisation set aside: the Namespace, and only it.
    assert {o["kind"] for o in kobjs} - {o["kind"] for o in hobjs} == {"Namespace"}


def test_the_kustomization_is_its_files(kubectl_bin: Path) -> None:
    """kubectl kustomize changes nothing: tests that read the files read what installs."""
    from tests.install.manifests import installed

    _, objs = render.kustomize(kubectl_bin)
    assert render.normalised(objs) == render.normalised(installed())


def test_the_chart_crd_is_the_manifest_crd() -> None:
    assert (CHART / "crds" / "gputopology.yaml").read_text() == \
        (MANIFESTS / "crd-gputopology.yaml").read_text()


def test_main_mode_installs_no_scheduler_and_admits_the_given_sources(helm_bin: Path) -> None:
    peer = "networkPolicy.extraFrom[0].ipBlock.cidr=10.0.0.0/24"
    _, objs = render.helm_template(helm_bin, "scheduler.mode=main", peer)
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert not any(n.startswith("gputopo-scheduler") for _, n in names), names
    policy = one(objs, "NetworkPolicy", "gputopo-extender")
    assert policy["spec"]["ingress"][0]["from"] == [{"ipBlock": {"cidr": "10.0.0.0/24"}}]


def test_main_mode_without_sources_refuses_to_render_an_open_policy(helm_bin: Path) -> None:
    with pytest.raises(AssertionError, match=r"networkPolicy\.extraFrom"):
        render.helm_template(helm_bin, "scheduler.mode=main")


def test_filter_top_scored_drops_prioritize_from_the_scheduler(helm_bin: Path) -> None:
    _, objs = render.helm_template(helm_bin, "extender.filterTopScored=true")
    (c,) = one(objs, "Deployment", "gputopo-extender")["spec"]["template"]["spec"]["containers"]
    assert "--filter-top-scored" in c["args"]
    cfg = yaml.safe_load(one(objs, "ConfigMap", "gputopo-scheduler-config")["data"]["config.yaml"])
    (entry,) = cfg["extenders"]
    assert "prioritizeVerb" not in entry
    assert entry["filterVerb"] == "filter" and entry["bindVerb"] == "bind"
    _, default = render.helm_template(helm_bin)
    (c,) = one(default, "Deployment", "gputopo-extender")["spec"]["template"]["spec"][
        "containers"]
    assert "--filter-top-scored" not in c["args"]


def test_tls_and_resource_name_reach_every_component(helm_bin: Path) -> None:
    _, objs = render.helm_template(helm_bin, "tls.enabled=true", "tls.secretName=my-tls",
                                   "resourceName=example.com/gpu", namespace="gpus")
    ext = one(objs, "Deployment", "gputopo-extender")["spec"]["template"]["spec"]
    (c,) = ext["containers"]
    assert "--tls-cert-file=/etc/gputopo-extender/tls/tls.crt" in c["args"]
    assert "--resource-name=example.com/gpu" in c["args"]
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert {v["name"]: v for v in ext["volumes"]}["tls"]["secret"]["secretName"] == "my-tls"
    plugin = one(objs, "DaemonSet", "gputopo-device-plugin")
    assert "--resource-name=example.com/gpu" in \
        plugin["spec"]["template"]["spec"]["containers"][0]["args"]
    cfg = yaml.safe_load(one(objs, "ConfigMap", "gputopo-scheduler-config")["data"]["config.yaml"])
    (entry,) = cfg["extenders"]
    assert entry["urlPrefix"] == "https://gputopo-extender.gpus.svc:8888"
    assert entry["enableHTTPS"] is True
    assert entry["tlsConfig"]["serverName"] == "gputopo-extender.gpus.svc"
    assert entry["managedResources"] == [{"name": "example.com/gpu",
                                          "ignoredByScheduler": False}]
    assert cfg["leaderElection"]["resourceNamespace"] == "gpus"
    sched = one(objs, "Deployment", "gputopo-scheduler")["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in sched["containers"][0]["volumeMounts"]}
    assert entry["tlsConfig"]["caFile"].rsplit("/", 1)[0] in mounts
