"""The plugin's configuration: parsed from flags (and NODE_NAME) once, validated at start.

Nothing reads ``os.environ`` after ``from_args``; every error is reported at once with
the flag it came from.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from plugin.catchup import DEFAULT_MAX_WAIT_S
from plugin.health import DEFAULT_IGNORED_XIDS, parse_xids
from plugin.log import LOG_FORMATS
from plugin.podresources import DEFAULT_POD_RESOURCES_SOCKET
from topology.names import DEFAULT_RESOURCE_NAME

__all__ = ["DEFAULT_KUBELET_DIR", "PluginConfig", "build_parser", "from_args", "validate"]

DEFAULT_KUBELET_DIR: Final = Path("/var/lib/kubelet/device-plugins")
#: The kubelet has no time-out on GetPreferredAllocation and admits one pod at a time.
MAX_POD_CACHE_WAIT_S: Final = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginConfig:
    node_name: str
    resource_name: str = DEFAULT_RESOURCE_NAME
    kubelet_dir: Path = DEFAULT_KUBELET_DIR
    pod_resources_socket: Path = DEFAULT_POD_RESOURCES_SOCKET
    fake_topology: str | None = None
    kubeconfig: str | None = None
    standalone: bool = False
    metrics_port: int = 0
    pass_device_specs: bool = False
    dev_root: Path = Path("/dev")
    ignored_xids: frozenset[int] = DEFAULT_IGNORED_XIDS
    xid_recovery_seconds: float = 300.0
    health_interval_seconds: float = 10.0
    reconcile_interval_seconds: float = 30.0
    publish_interval_seconds: float = 300.0
    pod_cache_wait_seconds: float = DEFAULT_MAX_WAIT_S
    log_format: Literal["kv", "json"] = "kv"
    log_level: str = "INFO"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gputopo-device-plugin",
        description="Kubelet device plugin that hands out well-connected GPU sets.",
    )
    p.add_argument("--node-name", help="this node's name (default: env NODE_NAME, "
                   "else the hostname with --standalone)")
    p.add_argument("--resource-name", default=DEFAULT_RESOURCE_NAME,
                   help="extended resource to advertise (default: %(default)s)")
    p.add_argument("--kubelet-dir", type=Path, default=DEFAULT_KUBELET_DIR,
                   help="kubelet device-plugin directory (default: %(default)s)")
    p.add_argument("--pod-resources-socket", type=Path, default=DEFAULT_POD_RESOURCES_SOCKET,
                   help="kubelet PodResources socket (default: %(default)s)")
    p.add_argument("--fake-topology", metavar="TOPOLOGY",
                   help="use a fake NVML built from a preset name, a `nvidia-smi topo -m` "
                   "file or a topology JSON file instead of the GPUs of this machine")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster service account)")
    p.add_argument("--standalone", action="store_true",
                   help="no API server: no pod lookup, no publishing, no reconciliation")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="serve Prometheus metrics on this port (0: off)")
    p.add_argument("--pass-device-specs", action="store_true",
                   help="hand containers /dev/nvidiaN and the control/UVM device nodes")
    p.add_argument("--dev-root", type=Path, default=Path("/dev"),
                   help="where this process sees the host's /dev, to check which NVIDIA "
                   "device nodes exist (default: %(default)s)")
    p.add_argument("--ignored-xids", default=",".join(map(str, sorted(DEFAULT_IGNORED_XIDS))),
                   help="XIDs that do not mark a GPU unhealthy, comma-separated, or 'none' "
                   "(default: %(default)s)")
    p.add_argument("--xid-recovery-seconds", type=float, default=300.0,
                   help="a GPU unhealthy from an XID is Healthy again after this many quiet "
                   "seconds if NVML still answers (0: never; default: %(default)s)")
    p.add_argument("--health-interval-seconds", type=float, default=10.0,
                   help="how often each GPU is probed through NVML (default: %(default)s)")
    p.add_argument("--reconcile-interval-seconds", type=float, default=30.0,
                   help="how often allocated-gpus records are checked against the kubelet's "
                   "(default: %(default)s)")
    p.add_argument("--publish-interval-seconds", type=float, default=300.0,
                   help="how often the GPUTopology object and node labels are re-asserted "
                   "(default: %(default)s)")
    p.add_argument("--pod-cache-wait-seconds", type=float, default=DEFAULT_MAX_WAIT_S,
                   help="longest a GetPreferredAllocation call waits for the pod cache to "
                   "deliver a pod the kubelet already has (0: never wait; at most "
                   f"{MAX_POD_CACHE_WAIT_S:g}; default: %(default)s)")
    p.add_argument("--log-format", choices=LOG_FORMATS, default="kv")
    p.add_argument("--log-level", default="INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def from_args(
    argv: Sequence[str] | None, env: Mapping[str, str] = os.environ
) -> tuple[PluginConfig | None, list[str]]:
    """The config, or ``None`` and every problem (flag: what is wrong)."""
    args = build_parser().parse_args(argv)
    errors: list[str] = []
    try:
        xids = parse_xids(args.ignored_xids)
    except ValueError as e:
        errors.append(f"--ignored-xids: {e}")
        xids = DEFAULT_IGNORED_XIDS
    node = args.node_name or env.get("NODE_NAME") or (
        socket.gethostname() if args.standalone else "")
    cfg = PluginConfig(
        node_name=node,
        resource_name=args.resource_name,
        kubelet_dir=args.kubelet_dir,
        pod_resources_socket=args.pod_resources_socket,
        fake_topology=args.fake_topology,
        kubeconfig=args.kubeconfig,
        standalone=args.standalone,
        metrics_port=args.metrics_port,
        pass_device_specs=args.pass_device_specs,
        dev_root=args.dev_root,
        ignored_xids=xids,
        xid_recovery_seconds=args.xid_recovery_seconds,
        health_interval_seconds=args.health_interval_seconds,
        reconcile_interval_seconds=args.reconcile_interval_seconds,
        publish_interval_seconds=args.publish_interval_seconds,
        pod_cache_wait_seconds=args.pod_cache_wait_seconds,
        log_format=args.log_format,
        log_level=args.log_level,
    )
    errors += validate(cfg)
    return (None, errors) if errors else (cfg, [])


def validate(cfg: PluginConfig) -> list[str]:
    errors: list[str] = []
    if not cfg.node_name:
        errors.append("--node-name: required (or set NODE_NAME) unless --standalone")
    name = cfg.resource_name
    if name.count("/") != 1 or not all(name.split("/")):
        errors.append(f"--resource-name: {name!r} must look like vendor.com/resource")
    if not 0 <= cfg.metrics_port <= 65535:
        errors.append(f"--metrics-port: {cfg.metrics_port} is not a port (0..65535)")
    for flag, value, low in (
        ("--xid-recovery-seconds", cfg.xid_recovery_seconds, 0.0),
        ("--health-interval-seconds", cfg.health_interval_seconds, 0.01),
        ("--reconcile-interval-seconds", cfg.reconcile_interval_seconds, 0.01),
        ("--publish-interval-seconds", cfg.publish_interval_seconds, 0.01),
    ):
        if value < low:
            errors.append(f"{flag}: {value} must be at least {low}")
    if not 0 <= cfg.pod_cache_wait_seconds <= MAX_POD_CACHE_WAIT_S:
        errors.append(f"--pod-cache-wait-seconds: {cfg.pod_cache_wait_seconds} must be "
                      f"between 0 and {MAX_POD_CACHE_WAIT_S:g} (the kubelet waits that long "
                      "on each pod it admits)")
    if cfg.standalone and cfg.kubeconfig:
        errors.append("--kubeconfig: not used with --standalone (no API server)")
    return errors
