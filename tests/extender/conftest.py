"""Fixtures of the extender tests (helpers live in helpers.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from .helpers import THREE_NODES


@pytest.fixture
def three_nodes() -> list[dict[str, Any]]:
    return copy.deepcopy(THREE_NODES)
