"""``gputopo-device-plugin`` as a real process (``python -m plugin.main``)."""

from __future__ import annotations

import ctypes.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from plugin.api import deviceplugin_pb2 as pb
from topology.handoff import stable_gpu_uuid
from topology.presets import preset

from .conftest import HANG_GUARD_S, FakeKubelet, stream_to_queue

ROOT = Path(__file__).resolve().parents[2]
U = [stable_gpu_uuid(i) for i in range(8)]


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NODE_NAME", None)
    return subprocess.Popen(
        [sys.executable, "-m", "plugin.main", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NODE_NAME", None)
    return subprocess.run([sys.executable, "-m", "plugin.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=HANG_GUARD_S)


def test_standalone_fake_topology_process(kubelet: FakeKubelet) -> None:
    proc = _spawn("--standalone", "--fake-topology", "dgx1-v100",
                  "--kubelet-dir", str(kubelet.directory))
    try:
        req = kubelet.next_registration()
        assert (req.version, req.resource_name) == ("v1beta1", "nvidia.com/gpu")
        assert req.options.get_preferred_allocation_available
        channel, stub = kubelet.plugin_stub(req.endpoint)
        with channel:
            devices = stream_to_queue(stub.ListAndWatch(pb.Empty())).get(timeout=HANG_GUARD_S)
            assert [d.ID for d in devices.devices] == U
            resp = stub.GetPreferredAllocation(pb.PreferredAllocationRequest(
                container_requests=[pb.ContainerPreferredAllocationRequest(
                    available_deviceIDs=U, allocation_size=2)]))
            i, j = (U.index(u) for u in resp.container_responses[0].deviceIDs)
            assert str(preset("dgx1-v100").link(i, j)) == "NV2"
            alloc = stub.Allocate(pb.AllocateRequest(container_requests=[
                pb.ContainerAllocateRequest(devices_ids=[U[i], U[j]])]))
            assert alloc.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == \
                f"{U[i]},{U[j]}"
        kubelet.restart()
        assert kubelet.next_registration() == req
        sock = kubelet.directory / req.endpoint
        assert sock.exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 0, err
    assert not sock.exists()
    assert "Traceback" not in err
    lines = err.splitlines()
    # Structured lines that name the GPUs.
    assert any('msg="registered with kubelet"' in ln and "resource=nvidia.com/gpu" in ln
               for ln in lines), err
    assert any('msg=allocate' in ln and f"gpus={U[i]},{U[j]}" in ln for ln in lines), err
    assert any('msg="preferred allocation"' in ln and "source=allocator" in ln
               for ln in lines), err


def test_json_logs(kubelet: FakeKubelet) -> None:
    import json

    proc = _spawn("--standalone", "--fake-topology", "pcie-4gpu-nvlink-pairs",
                  "--kubelet-dir", str(kubelet.directory), "--log-format", "json")
    try:
        kubelet.next_registration()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in err.splitlines()]
    found = next(r for r in records if r["msg"] == "gpus discovered")
    assert found["gpus"] == 4 and found["uuids"].startswith(U[0])


@pytest.mark.skipif(ctypes.util.find_library("nvidia-ml") is not None,
                    reason="this machine has libnvidia-ml: NVML would start")
def test_no_nvml_is_one_clear_line_and_exit_3(short_tmp: Path) -> None:
    done = _run("--standalone", "--kubelet-dir", str(short_tmp))
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    errors = [ln for ln in done.stderr.splitlines() if "level=error" in ln]
    assert len(errors) == 1 and "NVML" in errors[0], done.stderr


def test_bad_flags_exit_2_naming_the_flag(short_tmp: Path) -> None:
    done = _run("--fake-topology", "dgx1-v100", "--kubelet-dir", str(short_tmp),
                "--ignored-xids", "13,x")
    assert done.returncode == 2
    assert "--node-name" in done.stderr and "--ignored-xids" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_fake_topology_exit_5(short_tmp: Path) -> None:
    done = _run("--standalone", "--fake-topology", "no-such-machine",
                "--kubelet-dir", str(short_tmp))
    assert done.returncode == 5
    assert "no-such-machine" in done.stderr and "Traceback" not in done.stderr


def test_dev_kubelet_admits_against_the_plugin_process(short_tmp: Path) -> None:
    plugin = _spawn("--standalone", "--fake-topology", "dgx1-v100",
                    "--kubelet-dir", str(short_tmp))
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-m", "plugin.devkubelet", "--kubelet-dir", str(short_tmp),
             "--admit", "2", "--admit", "4", "--once"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    finally:
        plugin.send_signal(signal.SIGTERM)
        plugin.communicate(timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    assert "registered nvidia.com/gpu" in done.stdout
    admitted = [ln for ln in done.stdout.splitlines() if "admitted" in ln]
    assert len(admitted) == 2
    pair = [U.index(u.strip()) for u in admitted[0].split("): ", 1)[1].split(",")]
    assert str(preset("dgx1-v100").link(*pair)) == "NV2"
