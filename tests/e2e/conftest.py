"""The real cluster for the end-to-end suite: started once per session, stopped at the end.

Skipped, with the reason, only where what it needs cannot be had (Go, etcd, root). With
``GPUTOPO_E2E_REQUIRED=1`` (CI) a missing piece fails the run instead of skipping
(see ``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import tools_or_skip
from tests.e2e.harness import ClusterSpec, LocalCluster, NodeSpec, Tools

#: gpu-a: the only node with NVLink rings of 4 and 8; gpu-b: every pair SYS; gpu-c: one
#: NVLink pair (0-1) and two GPUs outside it (2-3, NODE): the orphans a 1-GPU pod takes.
NODES = (
    NodeSpec(name="gpu-a", preset="dgx1-v100"),
    NodeSpec(name="gpu-b", preset="pcie-8gpu-sys"),
    NodeSpec(name="gpu-c", preset="pcie-4gpu-nvlink-pairs"),
)


@pytest.fixture(scope="session")
def e2e_tools() -> Tools:
    return tools_or_skip()


@pytest.fixture(scope="session")
def cluster(e2e_tools: Tools) -> Iterator[LocalCluster]:
    # Short path: unix socket paths are limited to 108 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="gte2e-", dir="/tmp"))
    c = LocalCluster(spec=ClusterSpec(nodes=NODES), workdir=workdir, tools=e2e_tools).up()
    failed = False
    try:
        yield c
    except BaseException:
        failed = True
        raise
    finally:
        c.down()
        keep = os.environ.get("GPUTOPO_E2E_KEEP") == "1" or failed
        if not keep:
            with contextlib.suppress(OSError):
                shutil.rmtree(workdir)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing e2e test carries the tail of every component's log."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call" and report.failed:
        c = item.funcargs.get("cluster") if hasattr(item, "funcargs") else None
        if isinstance(c, LocalCluster):
            report.sections.append(("component logs", c.diagnostics(25)))
