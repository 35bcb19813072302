"""Fixtures shared by every test package: a real API server for the contract suites.

``real_kubeconfig`` is ``GPUTOPO_TEST_KUBECONFIG`` when set (any cluster will do), else a
control plane of the end-to-end harness started once per session: etcd, kube-apiserver,
kube-controller-manager (service accounts, garbage collection) and the project's CRD,
built from the k8s.io/kubernetes Go module (tests/e2e/cluster/build). Skipped, with the
reason, only where those cannot be had; with ``GPUTOPO_E2E_REQUIRED=1`` (CI) it fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import ClusterSpec, E2EUnavailable, LocalCluster, Tools, find_tools


def tools_or_skip() -> Tools:
    try:
        return find_tools()
    except E2EUnavailable as e:
        if os.environ.get("GPUTOPO_E2E_REQUIRED") == "1":
            pytest.fail(f"the real Kubernetes components are required "
                        f"(GPUTOPO_E2E_REQUIRED=1) but: {e}")
        pytest.skip(f"needs the real Kubernetes components: {e}")


@pytest.fixture(scope="session")
def real_kubeconfig() -> Iterator[str]:
    given = os.environ.get("GPUTOPO_TEST_KUBECONFIG")
    if given:
        yield given
        return
    tools = tools_or_skip()
    workdir = Path(tempfile.mkdtemp(prefix="gtapi-", dir="/tmp"))
    spec = ClusterSpec(extender=False, scheduler=False, controller_manager=True)
    cluster = LocalCluster(spec=spec, workdir=workdir, tools=tools).up()
    try:
        yield str(cluster.kubeconfig)
    finally:
        cluster.down()
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)
