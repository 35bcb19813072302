"""Every name the project shares across its parts, in one leaf module.

The extender writes what the plugin reads (annotation keys), both agree on the
GPUTopology object, and operators select on the node labels: one definition each,
here. This module imports nothing on purpose.
"""

from __future__ import annotations

__all__ = [
    "ALLOCATED_GPUS_ANNOTATION",
    "ASSIGNED_GPUS_ANNOTATION",
    "BEST_SET_PATIENCE_ANNOTATION",
    "DEFAULT_RESOURCE_NAME",
    "GPUTOPOLOGY_GROUP",
    "GPUTOPOLOGY_KIND",
    "GPUTOPOLOGY_PLURAL",
    "GPUTOPOLOGY_VERSION",
    "LABEL_FINGERPRINT",
    "LABEL_GPU_COUNT",
    "LABEL_GPU_MODEL",
    "LABEL_NVLINK",
    "LINK_POLICY_ANNOTATION",
    "LINK_POLICY_PREFERRED",
    "LINK_POLICY_REQUIRED",
    "LINK_POLICY_VALUES",
    "MAX_EXTENDER_PRIORITY",
    "MIN_EXTENDER_PRIORITY",
    "MIN_LINK_ANNOTATION",
    "TERMINAL_PHASES",
]

#: The extended resource kube-scheduler counts and the device plugin advertises.
DEFAULT_RESOURCE_NAME = "nvidia.com/gpu"

_PREFIX = "gputopo.io"

#: Written by users: the weakest acceptable link in the best ring through the set.
MIN_LINK_ANNOTATION = f"{_PREFIX}/min-link"
#: Written by users: ``required`` (filter) or ``preferred`` (score only, the default).
LINK_POLICY_ANNOTATION = f"{_PREFIX}/link-policy"
LINK_POLICY_REQUIRED = "required"
LINK_POLICY_PREFERRED = "preferred"
LINK_POLICY_VALUES = (LINK_POLICY_REQUIRED, LINK_POLICY_PREFERRED)
#: Written by users: how long a multi-GPU pod whose link policy is not ``required`` may
#: wait for the best set its node type offers (``"0"``: not at all; ``"30m"``, ``"1h"``,
#: or seconds); without it, the extender's ``--best-set-patience``.
BEST_SET_PATIENCE_ANNOTATION = f"{_PREFIX}/best-set-patience"

#: Written by the extender at bind: {container name: [GPU UUID, ...]}.
ASSIGNED_GPUS_ANNOTATION = f"{_PREFIX}/assigned-gpus"
#: Written by the device plugin after Allocate, from the kubelet's own record.
ALLOCATED_GPUS_ANNOTATION = f"{_PREFIX}/allocated-gpus"

#: The cluster-scoped object the plugin publishes per node (name = node name).
GPUTOPOLOGY_GROUP = _PREFIX
GPUTOPOLOGY_VERSION = "v1alpha1"
GPUTOPOLOGY_KIND = "GPUTopology"
GPUTOPOLOGY_PLURAL = "gputopologies"

#: Node labels for humans and selectors.
LABEL_GPU_COUNT = f"{_PREFIX}/gpu-count"
LABEL_GPU_MODEL = f"{_PREFIX}/gpu-model"
LABEL_NVLINK = f"{_PREFIX}/nvlink"
LABEL_FINGERPRINT = f"{_PREFIX}/fingerprint"

#: kube-scheduler extender score range (k8s.io/kube-scheduler/extender/v1).
MIN_EXTENDER_PRIORITY = 0
MAX_EXTENDER_PRIORITY = 10

#: A pod in one of these phases holds no GPUs any more.
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
