"""Configuration, the cluster file, the command line, and the manifests."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from extender.app import ConfigError, build_app
from extender.config import ExtenderConfig, validate
from extender.filesource import ClusterFileError, file_cluster, parse_cluster
from extender.main import main, parse_args
from extender.request import GpuRequest
from extender.views import users

from .helpers import RECORDED, memory_cluster, serve_command, stop_command

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
EXAMPLES = ROOT / "examples"


def test_validate_lists_every_problem_with_its_path() -> None:
    cfg = ExtenderConfig(port=70000, cluster_file="/nope.yaml", kubeconfig="/nope",
                         tls_cert_file="/c.pem", max_body_bytes=10,
                         resource_names=("gpu",), path_prefix="scheduler/",
                         log_level="LOUD", state_file="/no/such/dir/s.json",
                         header_timeout_s=0, max_connections=0, large_bodies=0)
    paths = {e.path for e in validate(cfg)}
    assert paths >= {"port", "source", "cluster_file", "kubeconfig", "tls_cert_file", "tls",
                     "max_body_bytes", "resource_names[0]", "path_prefix", "log_level",
                     "state_file", "header_timeout_s", "max_connections", "large_bodies"}
    no_tls = ExtenderConfig(in_cluster=True, client_ca_file=__file__)
    assert [e.path for e in validate(no_tls)] == ["client_ca_file"]
    assert [e.path for e in validate(ExtenderConfig(in_cluster=True, public_views=True))] == [
        "public_views"]
    assert not validate(ExtenderConfig(in_cluster=True))
    lease = ExtenderConfig(in_cluster=True, lease_duration_s=5, renew_deadline_s=10)
    assert [e.path for e in validate(lease)] == ["lease"]


def test_build_app_refuses_a_bad_config() -> None:
    with pytest.raises(ConfigError, match="max_body_bytes"):
        build_app(ExtenderConfig(max_body_bytes=1), memory_cluster([]))


def test_parse_args_defaults_to_in_cluster() -> None:
    cfg = parse_args(["--port", "9999"])
    assert cfg.in_cluster and cfg.port == 9999 and cfg.source == "kubernetes"
    # without TLS only this machine can connect unless --host says otherwise
    assert cfg.host == "127.0.0.1"
    assert parse_args(["--tls-cert-file", "c", "--tls-key-file", "k"]).host == "0.0.0.0"
    assert parse_args(["--host", "0.0.0.0"]).host == "0.0.0.0"
    # cluster-file mode keeps binds next to the file unless told otherwise
    assert parse_args(["--cluster-file", "/x/c.yaml"]).state_path == Path("/x/c.state.json")
    assert parse_args(["--cluster-file", "c.yaml", "--no-state-file"]).state_path is None
    assert parse_args(["--cluster-file", "c.yaml", "--state-file", "/s.json"]).state_path == (
        Path("/s.json"))
    cfg = parse_args(["--cluster-file", "x.yaml", "--resource-name", "a.io/gpu",
                      "--path-prefix", "/scheduler", "--max-body-bytes", "2048"])
    assert not cfg.in_cluster and cfg.resource_names == ("a.io/gpu",)
    assert cfg.path_prefix == "/scheduler" and cfg.max_body_bytes == 2048


def test_main_reports_config_errors_and_exits_2(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    assert main(["--cluster-file", str(tmp_path / "missing.yaml")]) == 2
    assert "cluster_file" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n- {name: a, topology: no-such-preset}\n- {name: b}\n")
    assert main(["--cluster-file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "nodes[0].topology" in err and "nodes[1].topology" in err


def test_cluster_file_errors_are_all_reported() -> None:
    with pytest.raises(ClusterFileError) as e:
        parse_cluster({"nodes": [
            {"name": "a", "topology": "hgx-h100", "used": [0, 9, 0]},
            {"name": "a", "topology": "hgx-h100"},
            "x",
        ], "pods": [{"namespace": "n", "name": "p", "node": "zz", "gpus": {"c": [0]}}]})
    text = str(e.value)
    for part in ("nodes[0].used[1]: 9 is not a GPU index 0..7", "nodes[0].used[2]: GPU 0",
                 "nodes[1].name: node 'a' is listed twice", "nodes[2]: expected an object",
                 "pods[0].node: 'zz'"):
        assert part in text
    with pytest.raises(ClusterFileError, match="'nodes' list"):
        parse_cluster([1, 2])


async def test_example_cluster_file_loads() -> None:
    cluster = file_cluster(EXAMPLES / "cluster.yaml")
    await cluster.start()
    s = cluster.state
    assert set(s.nodes) == {"gpu-node-1", "gpu-node-2", "gpu-node-3"}
    assert users(s, "gpu-node-1") == {0: "cluster-file", 3: "cluster-file",
                                     4: "ml/trainer-0", 5: "ml/trainer-0"}


def test_topology_path_in_a_cluster_file_is_relative_to_it(tmp_path: Path) -> None:
    from topology.presets import preset
    from topology.serialize import dumps

    (tmp_path / "topo").mkdir()
    (tmp_path / "topo" / "m.json").write_text(dumps(preset("gb200-4gpu")))
    (tmp_path / "c.yaml").write_text("nodes: [{name: a, topology: topo/m.json}]")
    cluster = file_cluster(tmp_path / "c.yaml")
    assert cluster.topologies["a"].size == 4


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _post(url: str, body: Any) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_command_serves_a_cluster_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc, port, log = serve_command(
        "--cluster-file", str(EXAMPLES / "cluster.yaml"),
        "--path-prefix", "/scheduler", "--state-file", str(tmp_path / "state.json"))
    try:
        status, body = _get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200 and body["nodes"] == 3
        if RECORDED.is_dir():
            data = (RECORDED / "node-cache-capable.filter.request.json").read_bytes()
        else:
            data = json.dumps({"Pod": {
                "metadata": {"namespace": "default", "name": "p", "uid": "u"},
                "spec": {"containers": [{"name": "m", "resources": {
                    "limits": {"nvidia.com/gpu": "4"}}}]}},
                "NodeNames": ["gpu-node-1", "gpu-node-2", "gpu-node-3"]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/scheduler/filter", data=data,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            answer = json.loads(r.read())
        # gpu-node-1 (DGX-1, GPUs 1,2,6,7 free) has only a SYS ring of 4, the HGX H100 its
        # best: with the default patience the pod waits for a best set, which gpu-node-3 has.
        assert answer["NodeNames"] == ["gpu-node-3"]
        assert answer["FailedAndUnresolvableNodes"]["gpu-node-1"] == (
            "waiting up to 4h for the best set this node type offers (NV1 ring of 4); "
            "best free here now: SYS")
    finally:
        out = stop_command(proc)
    assert proc.returncode == 0, out
    assert "msg=serving host=127.0.0.1" in log
    assert "without client authentication" not in log + out  # loopback: no warning


def test_binds_survive_kill_9_in_cluster_file_mode(tmp_path: Path) -> None:
    """The state file is written before bind answers; after kill -9 the GPUs stay held,
    and a retried bind succeeds only where the pod still holds them."""
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("nodes: [{name: n1, topology: hgx-h100}]\n")

    def pod(name: str, gpus: int) -> dict[str, Any]:
        return {"metadata": {"namespace": "ml", "name": name, "uid": f"uid-{name}"},
                "spec": {"containers": [{"name": "main", "resources": {
                    "limits": {"nvidia.com/gpu": str(gpus)}}}]}}

    def bind(port: int, name: str, node: str = "n1") -> str:
        return str(_post(f"http://127.0.0.1:{port}/bind", {
            "PodName": name, "PodNamespace": "ml", "PodUID": f"uid-{name}", "Node": node,
        })["Error"])

    proc, port, _ = serve_command("--cluster-file", str(cluster))
    try:
        base = f"http://127.0.0.1:{port}"
        for name, n in (("a", 6), ("b", 8)):
            assert _post(f"{base}/filter", {"Pod": pod(name, n), "NodeNames": ["n1"]})[
                "NodeNames"] == ["n1"]
        assert bind(port, "a") == ""
    finally:
        stop_command(proc, signal.SIGKILL)
    state = json.loads((tmp_path / "cluster.state.json").read_text())
    assert [h["uid"] for h in state["holdings"]] == ["uid-a"]

    proc, port, log = serve_command("--cluster-file", str(cluster))
    try:
        base = f"http://127.0.0.1:{port}"
        _, view = _get(f"{base}/topology/n1")
        assert len(view["free"]) == 2 and view["pods"][0]["pod"] == "ml/a"
        # what a knows of its GPUs survived; 8 more cannot be had
        _post(f"{base}/filter", {"Pod": pod("b", 8), "NodeNames": ["n1"]})
        assert "can no longer take the pod" in bind(port, "b")
        # the scheduler's retry of a's bind: a still holds its GPUs there
        assert bind(port, "a") == ""
        assert "already holds GPUs on n1" in bind(port, "a", "n2")
    finally:
        stop_command(proc)
    assert "holdings=1" in log


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_scheduler_config_matches_the_protocol_and_the_service() -> None:
    (cm,) = _docs(MANIFESTS / "scheduler-config.yaml")
    conf = yaml.safe_load(cm["data"]["config.yaml"])
    assert conf["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert conf["percentageOfNodesToScore"] == 100
    assert [p["schedulerName"] for p in conf["profiles"]] == ["gputopo-scheduler"]
    (ext,) = conf["extenders"]
    assert ext["nodeCacheCapable"] is True and ext["weight"] > 0
    assert {ext[k] for k in ("filterVerb", "prioritizeVerb", "bindVerb", "preemptVerb")} == {
        "filter", "prioritize", "bind", "preempt"}
    assert ext["managedResources"] == [{"name": "nvidia.com/gpu", "ignoredByScheduler": False}]
    assert ext["httpTimeout"].endswith("s")
    docs = {d["kind"]: d for d in _docs(MANIFESTS / "extender-deployment.yaml")}
    svc = docs["Service"]
    port = svc["spec"]["ports"][0]["port"]
    assert ext["urlPrefix"] == (f"http://{svc['metadata']['name']}."
                                f"{svc['metadata']['namespace']}.svc:{port}")
    dep = docs["Deployment"]
    assert dep["spec"]["replicas"] == 2
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    args = parse_args(c["args"])
    assert args.in_cluster and args.port == c["ports"][0]["containerPort"]
    assert args.lease_name == "gputopo-extender"  # the Lease its Role names (tests/test_rbac.py)
    sched = {d["kind"]: d for d in _docs(MANIFESTS / "scheduler-deployment.yaml")}
    cmd = sched["Deployment"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--config=/etc/gputopo-scheduler/config.yaml" in cmd


def test_network_policy_admits_only_the_scheduler_to_the_extender_port() -> None:
    (policy,) = _docs(MANIFESTS / "extender-networkpolicy.yaml")
    docs = {d["kind"]: d for d in _docs(MANIFESTS / "extender-deployment.yaml")}
    sched = {d["kind"]: d for d in _docs(MANIFESTS / "scheduler-deployment.yaml")}
    dep, sched_dep = docs["Deployment"], sched["Deployment"]
    assert policy["kind"] == "NetworkPolicy"
    assert policy["metadata"]["namespace"] == dep["metadata"]["namespace"]
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= labels.items()
    (rule,) = spec["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}  # pods of this namespace only
    assert peer["podSelector"]["matchLabels"].items() <= (
        sched_dep["spec"]["template"]["metadata"]["labels"].items())
    assert sched_dep["metadata"]["namespace"] == policy["metadata"]["namespace"]
    port = dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert rule["ports"] == [{"protocol": "TCP", "port": port}]


@pytest.mark.parametrize(("name", "total", "required", "min_link"), [
    ("pod-4gpu-nvlink-required.yaml", 4, True, "NV1"),
    ("pod-2gpu-preferred.yaml", 2, False, "NV1"),
    ("pod-1gpu.yaml", 1, False, None)])
def test_example_pods(name: str, total: int, required: bool, min_link: str | None) -> None:
    (pod,) = _docs(MANIFESTS / "examples" / name)
    assert pod["spec"]["schedulerName"] == "gputopo-scheduler"
    r = GpuRequest.from_pod(pod)
    assert r.total == total and r.required == required
    assert (None if r.min_link is None else str(r.min_link)) == min_link


def test_main_scheduler_snippet_has_the_same_extender_entry() -> None:
    """The documented snippet for the cluster's main scheduler cannot drift from the
    second scheduler's configuration (the one the end-to-end suite runs)."""
    (cm,) = _docs(MANIFESTS / "scheduler-config.yaml")
    second = yaml.safe_load(cm["data"]["config.yaml"])
    (main_cfg,) = _docs(EXAMPLES / "main-scheduler-config.yaml")
    assert main_cfg["kind"] == "KubeSchedulerConfiguration"
    assert "profiles" not in main_cfg  # the cluster's own profiles stay as they are
    assert main_cfg["extenders"] == second["extenders"]
    assert main_cfg["percentageOfNodesToScore"] == second["percentageOfNodesToScore"] == 100
