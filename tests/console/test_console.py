"""``gputopo cluster nodes|show``, ``gputopo explain`` and ``kubectl gputopo``, offline.

On the example cluster file and on API objects made as the plugin and the extender make
them. The same commands against the real API server are in tests/e2e/test_install.py.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from console.main import kubectl_main, main, topology_commands
from console.render import explanation_text
from console.source import build_state
from console.views import explain, node_summaries
from extender.filter import decide
from extender.request import GpuRequest
from topology.handoff import encode_gpu_sets, gputopology_object, stable_gpu_uuid
from topology.names import (
    ASSIGNED_GPUS_ANNOTATION,
    BEST_SET_PATIENCE_ANNOTATION,
    LINK_POLICY_ANNOTATION,
    MIN_LINK_ANNOTATION,
)
from topology.presets import preset

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = str(ROOT / "examples" / "cluster.yaml")
POD_4_REQUIRED = str(ROOT / "manifests" / "examples" / "pod-4gpu-nvlink-required.yaml")


def run(argv: list[str], *, kubectl: bool = False) -> tuple[int, str]:
    out = io.StringIO()
    rc = (kubectl_main if kubectl else main)(argv, out=out)
    return rc, out.getvalue()


def lines_of(text: str) -> dict[str, str]:
    """Table lines by their first word (node name), whitespace collapsed."""
    out = {}
    for line in text.splitlines():
        words = line.split()
        if words:
            out[words[0]] = " ".join(words)
    return out


class TestNodes:
    def test_one_line_per_gpu_node_with_the_best_free_set_per_size(self) -> None:
        rc, text = run(["cluster", "nodes", "--cluster-file", CLUSTER])
        assert rc == 0
        rows = lines_of(text)
        # gpu-node-1 (DGX-1): GPUs 0,3 used by the file, 4,5 by ml/trainer-0: free 1,2,6,7.
        # Best pair 1-2 is NV2; 1,2,6,7 have no NVLink ring (6 and 7 reach 1 and 2 by SYS
        # only); 8 do not fit.
        assert rows["gpu-node-1"] == ("gpu-node-1 Tesla V100-SXM2-16GB 4/8 "
                                      "2: NV2, 4: SYS ring, 8: none")
        # gpu-node-3 (HGX H100, NVSwitch): all free, every pair NV18.
        assert rows["gpu-node-3"].endswith("8/8 2: NV18, 4: NV18 ring, 8: NV18 ring")
        assert list(rows) == ["NODE", "gpu-node-1", "gpu-node-2", "gpu-node-3"]

    def test_sizes_and_json(self) -> None:
        rc, text = run(["cluster", "nodes", "--cluster-file", CLUSTER, "--sizes", "1,3",
                        "--json"])
        assert rc == 0
        nodes = {n["name"]: n for n in json.loads(text)["nodes"]}
        # gpu-node-2: free 5,6,7 (SYS between all): 1 fits (no links), 3 as a SYS ring.
        assert nodes["gpu-node-2"]["free"] == [5, 6, 7]
        assert [(b["size"], b["fits"], b["ring_link"]) for b in nodes["gpu-node-2"]["best"]] \
            == [(1, True, None), (3, True, "SYS")]

    def test_bad_sizes_exit_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        rc, _ = run(["cluster", "nodes", "--cluster-file", CLUSTER, "--sizes", "two"])
        assert rc == 2 and "--sizes: 'two'" in capsys.readouterr().err


class TestShow:
    def test_matrix_marks_used_gpus_and_names_their_pods(self) -> None:
        rc, text = run(["cluster", "show", "gpu-node-1", "--cluster-file", CLUSTER])
        assert rc == 0
        assert text.startswith("gpu-node-1: Tesla V100-SXM2-16GB, 8 GPUs, 4 free (1,2,6,7)")
        marked = [line.split("\t")[0] for line in text.splitlines()
                  if line.startswith("GPU") and "\t" in line]
        assert marked == ["GPU0*", "GPU1", "GPU2", "GPU3*", "GPU4*", "GPU5*", "GPU6", "GPU7"]
        rows = lines_of(text)
        assert rows["GPU4"] == f"GPU4 {stable_gpu_uuid(4)} used ml/trainer-0 main cluster file"
        assert rows["GPU6"] == f"GPU6 {stable_gpu_uuid(6)} free"

    @pytest.mark.parametrize(("fmt", "needle"), [
        ("dot", 'used by ml/trainer-0", fillcolor="#e0e0e0"'),
        ("svg", "GPU4: used by ml/trainer-0"),
    ])
    def test_dot_and_svg_draw_used_gpus(self, fmt: str, needle: str) -> None:
        rc, text = run(["cluster", "show", "gpu-node-1", "--cluster-file", CLUSTER,
                        "--format", fmt])
        assert rc == 0 and needle in text

    def test_unknown_node_exit_1(self, capsys: pytest.CaptureFixture[str]) -> None:
        rc, _ = run(["cluster", "show", "nope", "--cluster-file", CLUSTER])
        assert rc == 1
        assert "no GPU node 'nope' (GPU nodes: gpu-node-1, gpu-node-2, gpu-node-3)" in \
            capsys.readouterr().err


class TestExplainOnAFile:
    def test_a_pod_manifest_judged_in_the_filters_own_words(self) -> None:
        rc, text = run(["explain", "-f", POD_4_REQUIRED, "--cluster-file", CLUSTER])
        assert rc == 0
        assert text.startswith("Pod default/allreduce-4gpu: main=4 min-link=NV1 required\n"
                               "Not bound (phase Pending).\n1 GPU node(s) can take it now")
        rows = lines_of(text)
        # The reasons are exactly extender.filter.decide's on the same state.
        from console.source import FileSource

        state = FileSource(CLUSTER).snapshot().state
        import yaml

        pod = yaml.safe_load(Path(POD_4_REQUIRED).read_text())
        out = decide(state, GpuRequest.from_pod(pod), sorted(state.nodes))
        assert out.failed == {"gpu-node-1": "4 free GPUs (1,2,6,7): no NVLink ring of 4"}
        assert out.unresolvable == {"gpu-node-2": "3 free GPUs (5,6,7): 4 requested"}
        assert rows["gpu-node-1"] == "gpu-node-1 fails " + out.failed["gpu-node-1"]
        assert rows["gpu-node-2"] == ("gpu-node-2 fails, even with every GPU free "
                                      + out.unresolvable["gpu-node-2"])
        assert rows["gpu-node-3"].startswith("gpu-node-3 fits score ")
        assert "main: GPUs 0,1,2,3 ring NV18" in rows["gpu-node-3"]

    def test_a_pod_of_the_file_by_name(self) -> None:
        rc, text = run(["explain", "ml/trainer-0", "--cluster-file", CLUSTER])
        assert rc == 0
        assert "Bound to gpu-node-1 (phase Running)." in text
        assert ("main: GPUs 4,5: ring bottleneck NV1 (NVLink all the way), 25 GB/s between "
                "them, NUMA 1") in text

    def test_unknown_pod_exit_1(self, capsys: pytest.CaptureFixture[str]) -> None:
        rc, _ = run(["explain", "ml/nope", "--cluster-file", CLUSTER])
        assert rc == 1 and "no pod ml/nope" in capsys.readouterr().err

    def test_pod_and_file_together_exit_2(self) -> None:
        rc, _ = run(["explain", "a", "-f", POD_4_REQUIRED, "--cluster-file", CLUSTER])
        assert rc == 2


def _pod(name: str, gpus: int, *, node: str | None = None, sets: list[int] | None = None,
         annotations: dict[str, str] | None = None) -> dict[str, Any]:
    ann = dict(annotations or {})
    if sets is not None:
        ann[ASSIGNED_GPUS_ANNOTATION] = encode_gpu_sets(
            {"main": [stable_gpu_uuid(i) for i in sets]})
    return {
        "metadata": {"namespace": "ml", "name": name, "uid": f"uid-{name}", "annotations": ann},
        "spec": {"nodeName": node, "containers": [
            {"name": "main", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
        "status": {"phase": "Running" if node else "Pending"},
    }


class TestExplainOnApiObjects:
    """The state built from objects exactly as the plugin and the extender write them."""

    @staticmethod
    def state_with(*pods: dict[str, Any]) -> Any:
        topologies = [gputopology_object("gpu-a", preset("dgx1-v100")),
                      gputopology_object("gpu-b", preset("pcie-8gpu-sys"))]
        state, unreadable = build_state(topologies, [p for p in pods if p["spec"]["nodeName"]])
        assert not unreadable
        return state

    def test_a_bound_pod_its_set_and_where_the_extender_would_put_it_now(self) -> None:
        train = _pod("train", 4, node="gpu-a", sets=[0, 1, 2, 3], annotations={
            MIN_LINK_ANNOTATION: "nvlink", LINK_POLICY_ANNOTATION: "required"})
        other = _pod("other", 2, node="gpu-a", sets=[4, 5])
        state = self.state_with(train, other)
        e = explain(state, pod=train, ref="ml/train")
        assert e is not None and e.node == "gpu-a" and e.holding_source == "assigned"
        text = explanation_text(e)
        assert "assigned by the extender at bind: main: GPUs 0,1,2,3" in text
        assert "main: GPUs 0,1,2,3: ring bottleneck NV1 (NVLink all the way)" in text
        # Its own GPUs given back, gpu-a's best NVLink quad is 0-3 again (4,5 are taken).
        assert e.same_set_now is True
        rows = lines_of(text)
        assert rows["gpu-b"].startswith("gpu-b fails, even with every GPU free")
        assert "no NVLink ring of 4" in rows["gpu-b"]

    def test_a_pod_with_a_bad_annotation_gets_the_filters_error(self) -> None:
        pod = _pod("bad", 2, annotations={MIN_LINK_ANNOTATION: "fast"})
        e = explain(self.state_with(), pod=pod, ref="ml/bad")
        assert e is not None
        text = explanation_text(e)
        assert "The extender refuses it: Pod.metadata.annotations[gputopo.io/min-link]: " \
               "unknown link class 'fast'" in text

    def test_events_are_kube_schedulers_failed_scheduling_messages(self) -> None:
        pod = _pod("big", 16)
        events = [{"reason": "Scheduled", "message": "ignored"},
                  {"reason": "FailedScheduling", "count": 3,
                   "message": "0/2 nodes are available: 2 8 free GPUs (0,1,2,3,4,5,6,7): "
                              "16 requested."}]
        e = explain(self.state_with(), pod=pod, ref="ml/big", events=events)
        assert e is not None and not e.fitting
        text = explanation_text(e)
        assert "No GPU node can take it now." in text
        assert text.rstrip().endswith("16 requested. (x3)")

    def test_a_pod_that_would_wait_for_its_best_set(self) -> None:
        """gpu-a (DGX-1) has only GPUs 3 and 7 free: an NV1 pair, not its best (NV2).
        gpu-b (all SYS) gives a pair its best (SYS) while it has GPUs free."""
        held = _pod("held", 6, node="gpu-a", sets=[0, 1, 2, 4, 5, 6])
        pair = _pod("pair", 2)
        text = explanation_text(explain(self.state_with(held), pod=pair, ref="ml/pair"))
        rows = lines_of(text)
        assert rows["gpu-a"].startswith("gpu-a fits, not its best set score ")
        assert rows["gpu-b"].startswith("gpu-b fits score ")
        assert "While some give it the best set its node type offers, the extender " \
               "fails those that do not:" in text
        full = _pod("full", 8, node="gpu-b", sets=list(range(8)))
        waiting = explain(self.state_with(held, full), pod=pair, ref="ml/pair")
        assert waiting is not None and waiting.waits_for_best_set
        assert ("1 GPU node(s) could take it now, none with the best set its node type "
                "offers: the extender passes it over for that set for up to the "
                "extender's --best-set-patience (default 4h)") in explanation_text(waiting)
        own = _pod("own", 2, annotations={BEST_SET_PATIENCE_ANNOTATION: "30m"})
        text = explanation_text(explain(self.state_with(held, full), pod=own, ref="ml/own"))
        assert "main=2 best-set-patience=30m" in text
        assert "for up to its gputopo.io/best-set-patience, 30m" in text
        never = _pod("never", 2, annotations={BEST_SET_PATIENCE_ANNOTATION: "0"})
        e = explain(self.state_with(held, full), pod=never, ref="ml/never")
        assert e is not None and not e.waits_for_best_set
        assert "1 GPU node(s) can take it now" in explanation_text(e)

    def test_nodes_of_the_same_state(self) -> None:
        state = self.state_with(_pod("x", 2, node="gpu-a", sets=[0, 3]))
        (a, b) = node_summaries(state)
        assert (a.name, a.free, [str(x) for x in a.best]) == (
            "gpu-a", (1, 2, 4, 5, 6, 7), ["2: NV2", "4: NV1 ring", "8: none"])
        assert [str(x) for x in b.best] == ["2: SYS", "4: SYS ring", "8: SYS ring"]


class TestDispatch:
    def test_every_topology_subcommand_still_answers(self) -> None:
        assert set(topology_commands()) == {"parse", "show", "presets", "allocate", "simulate"}
        rc, text = run(["presets"])
        assert rc == 0 and text.startswith("dgx1-v100")
        rc, text = run(["allocate", "--topology", "dgx1-v100", "--size", "2", "--json"])
        assert rc == 0 and json.loads(text)["ring_link"] == "NV2"

    def test_kubectl_plugin_names(self) -> None:
        rc, text = run(["nodes", "--cluster-file", CLUSTER], kubectl=True)
        assert rc == 0 and "gpu-node-3" in text
        rc, text = run(["show", "gpu-node-2", "--cluster-file", CLUSTER], kubectl=True)
        assert rc == 0 and text.startswith("gpu-node-2:")

    def test_unreadable_kubeconfig_exit_3(self, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
        missing = tmp_path / "nope.kubeconfig"
        rc, _ = run(["cluster", "nodes", "--kubeconfig", str(missing)])
        assert rc == 3
        assert "cannot read the cluster: cannot load Kubernetes credentials" in \
            capsys.readouterr().err

    @pytest.mark.parametrize("script", ["gputopo", "kubectl-gputopo"])
    def test_console_scripts_are_installed(self, script: str) -> None:
        exe = Path(sys.executable).parent / script
        proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True,
                              check=False)
        assert proc.returncode == 0 and "explain" in proc.stdout
