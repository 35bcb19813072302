"""GpuRequest.from_pod: counts per container, the init-container rule, annotations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from extender.request import ContainerRequest, GpuRequest, RequestError
from topology.links import Link


def pod(containers: list[dict[str, Any]], init: list[dict[str, Any]] | None = None,
        annotations: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": containers}
    if init is not None:
        spec["initContainers"] = init
    return {"metadata": {"name": "p", "annotations": annotations or {}}, "spec": spec}


def c(name: str, limits: dict[str, Any] | None = None, requests: dict[str, Any] | None = None,
      **extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if limits is not None:
        res["limits"] = limits
    if requests is not None:
        res["requests"] = requests
    return {"name": name, "resources": res, **extra}


G = "nvidia.com/gpu"


@dataclass(frozen=True, kw_only=True)
class Case:
    name: str
    pod: dict[str, Any]
    containers: tuple[ContainerRequest, ...] = ()
    total: int = 0
    min_link: Link | None = None
    required: bool = False
    error: str | None = None
    resources: tuple[str, ...] = field(default=(G,))


CASES = [
    Case(name="limits only", pod=pod([c("main", {G: "4"})]),
         containers=(ContainerRequest(name="main", count=4),), total=4),
    Case(name="requests only (limits default to them)", pod=pod([c("main", None, {G: 2})]),
         containers=(ContainerRequest(name="main", count=2),), total=2),
    Case(name="requests equal limits", pod=pod([c("main", {G: "2"}, {G: "2", "cpu": "1"})]),
         containers=(ContainerRequest(name="main", count=2),), total=2),
    Case(name="no GPUs at all", pod=pod([c("main", {"cpu": "1"})]), total=0),
    Case(name="zero GPUs is no request", pod=pod([c("main", {G: "0"})]), total=0),
    # two app containers run together: 3 + 1 disjoint GPUs
    Case(name="two app containers add up",
         pod=pod([c("a", {G: "3"}), c("b", {G: "1"})]),
         containers=(ContainerRequest(name="a", count=3), ContainerRequest(name="b", count=1)),
         total=4),
    # an init container runs before them: max(2, 3) = 3
    Case(name="init container overlaps the app containers",
         pod=pod([c("main", {G: "3"})], init=[c("setup", {G: "2"})]),
         containers=(ContainerRequest(name="setup", count=2, shared=True),
                     ContainerRequest(name="main", count=3)), total=3),
    # a larger init container: max(4, 2) = 4
    Case(name="larger init container sets the total",
         pod=pod([c("main", {G: "2"})], init=[c("setup", {G: "4"})]),
         containers=(ContainerRequest(name="setup", count=4, shared=True),
                     ContainerRequest(name="main", count=2)), total=4),
    # a sidecar (restartPolicy Always) runs beside the app: 1 + 2 = 3
    Case(name="sidecar init container counts as an app container",
         pod=pod([c("main", {G: "2"})], init=[c("side", {G: "1"}, restartPolicy="Always")]),
         containers=(ContainerRequest(name="side", count=1),
                     ContainerRequest(name="main", count=2)), total=3),
    Case(name="other resource names are summed",
         pod=pod([c("main", {G: "1", "example.com/gpu": "2"})]),
         containers=(ContainerRequest(name="main", count=3),), total=3,
         resources=(G, "example.com/gpu")),
    Case(name="min-link nvlink, required",
         pod=pod([c("main", {G: "4"})], annotations={
             "gputopo.io/min-link": "NVLink", "gputopo.io/link-policy": "Required"}),
         containers=(ContainerRequest(name="main", count=4),), total=4,
         min_link=Link.nvlink(1), required=True),
    Case(name="min-link NV2 preferred by default",
         pod=pod([c("main", {G: "2"})], annotations={"gputopo.io/min-link": "nv2"}),
         containers=(ContainerRequest(name="main", count=2),), total=2,
         min_link=Link.nvlink(2)),
    Case(name="bad min-link names key, value and allowed values",
         pod=pod([c("main", {G: "2"})], annotations={"gputopo.io/min-link": "fast"}),
         error="Pod.metadata.annotations[gputopo.io/min-link]: unknown link class 'fast'; "
               "allowed: nvlink"),
    Case(name="bad link-policy names key, value and allowed values",
         pod=pod([c("main", {G: "2"})], annotations={
             "gputopo.io/min-link": "pix", "gputopo.io/link-policy": "must"}),
         error="Pod.metadata.annotations[gputopo.io/link-policy]: invalid value 'must'; "
               "allowed: required, preferred"),
    Case(name="required without min-link",
         pod=pod([c("main", {G: "2"})], annotations={"gputopo.io/link-policy": "required"}),
         error="needs gputopo.io/min-link"),
    Case(name="fractional GPUs", pod=pod([c("main", {G: "1.5"})]),
         error="Pod.spec.containers[0].resources.limits[nvidia.com/gpu]: '1.5' is not a whole "
               "number of GPUs"),
    Case(name="requests and limits differ", pod=pod([c("main", {G: "2"}, {G: "1"})]),
         error="Pod.spec.containers[0].resources: nvidia.com/gpu requests (1) and limits (2) "
               "differ"),
    # Kubernetes' own rules, decided once here (issue 7: these broke bind and the page)
    Case(name="a quantity of 5,000 digits is out of range, never converted",
         pod=pod([c("main", {G: "9" * 5000})]),
         error="Pod.spec.containers[0].resources.limits[nvidia.com/gpu]: '9999"),
    Case(name="a JSON integer quantity out of range", pod=pod([c("main", None, {G: 10**30})]),
         error="Pod.spec.containers[0].resources.requests[nvidia.com/gpu]: "),
    Case(name="quantities are canonical: no sign, no leading zero, no blanks",
         pod=pod([c("main", {G: "+04"})]), error="is not a whole number of GPUs in canonical"),
    Case(name="a boolean is not a quantity", pod=pod([c("main", {G: True})]),
         error="True is not a whole number"),
    Case(name="container names are unique across init and app containers",
         pod=pod([c("main", {G: "2"}), c("side", {G: "1"})], init=[c("main", {G: "2"})]),
         error="Pod.spec.containers[0].name: duplicate container name 'main' "
               "(also Pod.spec.initContainers[0].name)"),
    Case(name="two app containers of the same name",
         pod=pod([c("main", {G: "2"}), c("main", {G: "2"})]),
         error="Pod.spec.containers[1].name: duplicate container name 'main'"),
    Case(name="container names are DNS-1123 labels", pod=pod([c("Main_1", {G: "1"})]),
         error="Pod.spec.containers[0].name: 'Main_1' is not a DNS-1123 label"),
    Case(name="null annotations are no annotations", pod={
        "metadata": {"annotations": None}, "spec": {"containers": [c("main", {G: "2"})]}},
         containers=(ContainerRequest(name="main", count=2),), total=2),
    Case(name="annotation values are strings",
         pod=pod([c("main", {G: "1"})], annotations={"note": 5}),
         error="Pod.metadata.annotations[note]: expected a string, got a number"),
    Case(name="annotation keys are qualified names",
         pod=pod([c("main", {G: "1"})], annotations={"a b": "x"}),
         error="Pod.metadata.annotations: key 'a b' is not a qualified name"),
    Case(name="annotations are at most 256 KiB in all",
         pod=pod([c("main", {G: "1"})], annotations={"big": "x" * (256 * 1024)}),
         error="Pod.metadata.annotations: 262147 bytes in all, over the 262144"),
    Case(name="containers not a list", pod={"metadata": {}, "spec": {"containers": {}}},
         error="Pod.spec.containers: expected a list"),
    Case(name="container without a name", pod=pod([{"resources": {"limits": {G: "1"}}}]),
         error="Pod.spec.containers[0].name: expected a container name, got None"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_from_pod(case: Case) -> None:
    if case.error is not None:
        with pytest.raises(RequestError) as e:
            GpuRequest.from_pod(case.pod, case.resources)
        assert case.error in str(e.value)
        return
    r = GpuRequest.from_pod(case.pod, case.resources)
    assert r.containers == case.containers
    assert r.total == case.total
    assert r.min_link == case.min_link
    assert r.required == case.required
    assert r.empty == (case.total == 0)


def test_shape_is_shared_by_pods_that_place_alike() -> None:
    a = GpuRequest.from_pod(pod([c("x", {G: "4"})]))
    b = GpuRequest.from_pod({"metadata": {"name": "other"},
                             "spec": {"containers": [c("y", {G: 4})]}})
    assert a.shape == b.shape
    assert a.shape != GpuRequest.from_pod(pod([c("x", {G: "2"})])).shape
