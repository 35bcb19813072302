"""The kubelet-call rules written out plainly, as the oracle of the property tests."""

from __future__ import annotations

from collections.abc import Collection, Sequence

__all__ = ["allocate_ok", "preferred_refusal"]


def preferred_refusal(
    available: Sequence[str], must: Sequence[str], size: int, node: Collection[str]
) -> str | None:
    """The field GetPreferredAllocation is refused on (None: it answers ``size`` GPUs)."""
    if size < 1:
        return "allocation_size"
    if len(set(available)) < len(available):
        return "available_deviceIDs"
    if len(set(must)) < len(must) or not set(must) <= set(available) or not set(must) <= set(node):
        return "must_include_deviceIDs"
    if size < len(must) or size > len(set(available) & set(node)):
        return "allocation_size"
    return None


def allocate_ok(ids: Sequence[str], healthy: Collection[str]) -> bool:
    """Whether Allocate gives a container ``ids`` (all healthy GPUs of the node, once)."""
    return bool(ids) and len(set(ids)) == len(ids) and set(ids) <= set(healthy)
