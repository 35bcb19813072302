"""Publishing the node's topology, and the command's configuration checks."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from plugin.config import from_args
from plugin.publish import Publisher, label_value, node_labels
from topology.handoff import topology_from_gputopology
from topology.names import (
    GPUTOPOLOGY_GROUP,
    GPUTOPOLOGY_KIND,
    GPUTOPOLOGY_VERSION,
    LABEL_FINGERPRINT,
    LABEL_GPU_COUNT,
    LABEL_GPU_MODEL,
    LABEL_NVLINK,
)
from topology.presets import preset

from .conftest import HANG_GUARD_S
from .fakes import InMemoryCluster


def test_publisher_creates_object_owned_by_the_node_and_labels_it() -> None:
    cluster = InMemoryCluster()
    uid = cluster.add_node("gpu-1")
    t = preset("hgx-h100")
    pub = Publisher(cluster, "gpu-1", t, interval=3600, retry_interval=0.01)
    assert pub.publish_once() == "created"
    assert pub.publish_once() == "unchanged"
    obj = cluster.get_gputopology("gpu-1")
    assert obj is not None
    assert obj["apiVersion"] == f"{GPUTOPOLOGY_GROUP}/{GPUTOPOLOGY_VERSION}"
    assert obj["kind"] == GPUTOPOLOGY_KIND
    assert obj["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": "gpu-1", "uid": uid}]
    assert topology_from_gputopology(obj) == ("gpu-1", t)
    labels = cluster.node_labels("gpu-1")
    assert labels[LABEL_GPU_COUNT] == "8"
    assert labels[LABEL_NVLINK] == "true"
    assert labels[LABEL_FINGERPRINT] == t.fingerprint
    assert labels[LABEL_GPU_MODEL] == label_value(t.model or "")


def test_publisher_retries_until_the_node_exists() -> None:
    cluster = InMemoryCluster()
    pub = Publisher(cluster, "late", preset("dgx1-v100"), interval=3600, retry_interval=0.01)
    stop = threading.Event()
    thread = threading.Thread(target=pub.run, args=(stop,), daemon=True)
    thread.start()
    try:
        # The node is not there yet: the publisher keeps trying, and has not published.
        assert cluster.changes.wait_for(lambda: cluster.missing_node_lookups >= 2)
        assert not pub.published.is_set()
        cluster.add_node("late")
        assert pub.published.wait(HANG_GUARD_S)
    finally:
        stop.set()
        thread.join(HANG_GUARD_S)
    assert cluster.get_gputopology("late") is not None


@pytest.mark.parametrize(("model", "want"), [
    ("Tesla V100-SXM2-16GB", "Tesla-V100-SXM2-16GB"),
    ("NVIDIA H100 80GB HBM3", "NVIDIA-H100-80GB-HBM3"),
    ("x" * 80, "x" * 63),
    ("(weird) name!", "weird-name"),
])
def test_label_values_are_valid(model: str, want: str) -> None:
    assert label_value(model) == want


def test_labels_without_nvlink_or_common_model() -> None:
    labels = node_labels(preset("pcie-8gpu-sys"))
    assert labels[LABEL_NVLINK] == "false"


def test_node_name_from_env_and_defaults() -> None:
    cfg, errors = from_args(["--fake-topology", "dgx1-v100"], env={"NODE_NAME": "n1"})
    assert errors == [] and cfg is not None
    assert cfg.node_name == "n1"
    assert cfg.resource_name == "nvidia.com/gpu"
    assert cfg.kubelet_dir == Path("/var/lib/kubelet/device-plugins")
    assert cfg.pod_resources_socket == Path("/var/lib/kubelet/pod-resources/kubelet.sock")
    assert cfg.ignored_xids == {13, 31, 43, 45, 68, 109}
    assert cfg.pod_cache_wait_seconds == 0.5
    flagged, _ = from_args(["--node-name", "n2"], env={"NODE_NAME": "n1"})
    assert flagged is not None and flagged.node_name == "n2"


def test_every_config_error_is_reported_with_its_flag() -> None:
    cfg, errors = from_args(
        ["--resource-name", "gpu", "--metrics-port", "70000", "--ignored-xids", "a"], env={})
    assert cfg is None
    text = "\n".join(errors)
    for flag in ("--node-name", "--resource-name", "--metrics-port", "--ignored-xids"):
        assert flag in text


@pytest.mark.parametrize("wait", ["-0.1", "5.5", "nan"])
def test_the_pod_cache_wait_is_bounded(wait: str) -> None:
    """The kubelet has no time-out on the call: a wait beyond 5 s is refused at start."""
    cfg, errors = from_args(["--node-name", "n", "--pod-cache-wait-seconds", wait], env={})
    assert cfg is None and errors[0].startswith("--pod-cache-wait-seconds: ")
    ok, _ = from_args(["--node-name", "n", "--pod-cache-wait-seconds", "0"], env={})
    assert ok is not None and ok.pod_cache_wait_seconds == 0


def test_standalone_needs_no_node_name() -> None:
    cfg, errors = from_args(["--standalone"], env={})
    assert errors == [] and cfg is not None and cfg.node_name
