"""The examples in plugin/ docstrings hold (pyproject's testpaths covers only topology/)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import plugin

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(plugin.__path__, "plugin.")
    if not m.name.startswith("plugin.api.") or m.name == "plugin.api.generate"
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
