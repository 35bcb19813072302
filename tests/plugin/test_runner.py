"""Registration with the kubelet: refused, then the kubelet is back."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from .conftest import FAST, HANG_GUARD_S, RefusingKubelet, run_plugin

#: Far longer than any test may take: a registration that waits for it fails the test.
HOUR = 3600.0


@pytest.fixture
def refusing_kubelet(short_tmp: Path) -> Iterator[RefusingKubelet]:
    k = RefusingKubelet(short_tmp, refusals=1)
    k.start()
    try:
        yield k
    finally:
        k.stop()


def test_registers_as_soon_as_the_restarted_kubelet_answers(
    refusing_kubelet: RefusingKubelet,
) -> None:
    """Register is refused; the kubelet restarts (a new kubelet.sock): the plugin registers
    with it at once instead of sitting out its retry interval (an hour here)."""
    plugin = run_plugin(refusing_kubelet, timings=replace(FAST, register_retry=HOUR))
    try:
        assert refusing_kubelet.refused.wait(HANG_GUARD_S)
        refusing_kubelet.restart()
        req = refusing_kubelet.next_registration()
        assert (req.resource_name, req.endpoint) == ("nvidia.com/gpu", plugin.endpoint)
        assert plugin.app.runner.wait_registered(1, HANG_GUARD_S)
        channel, stub = plugin.stub()  # serving on the fresh socket
        with channel:
            from plugin.api import deviceplugin_pb2 as pb

            assert stub.GetDevicePluginOptions(pb.Empty(), timeout=HANG_GUARD_S)
    finally:
        plugin.stop()
    assert not plugin.thread.is_alive()


def test_a_kubelet_that_appears_later_is_registered_with(short_tmp: Path) -> None:
    """No kubelet.sock at start: the plugin serves, waits, and registers when it appears."""
    kubelet = RefusingKubelet(short_tmp, refusals=0)
    plugin = run_plugin(kubelet, timings=replace(FAST, register_retry=HOUR))
    try:
        kubelet.start()
        assert kubelet.next_registration().resource_name == "nvidia.com/gpu"
    finally:
        plugin.stop()
        kubelet.stop()
