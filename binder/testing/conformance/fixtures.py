"""The fixtures every scenario takes; the hook-in file provides only ``binder_config``.

``binder_config`` is the binder's options mapping as it would appear under
``binder.binders.<name>`` in YAML, ``type`` included (``{"type": "log", "broker":
"b-1"}``). Everything else is derived here: the binder type and its
capabilities from the plugin registry, a fresh destination and group per test,
and the :class:`~binder.testing.conformance.support.Conformance` helper that
deletes what the test declared once it ends.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from binder.spi import BinderType, Capabilities
from binder.testing.conformance.support import (
    Conformance,
    binder_type_of,
    run,
    unique_group,
    unique_name,
)

__all__ = ["binder_type", "capabilities", "conformance", "dest", "group"]


@pytest.fixture
def binder_type(binder_config: Mapping[str, Any]) -> BinderType:
    """The registered binder type that ``binder_config["type"]`` names."""
    return binder_type_of(binder_config)


@pytest.fixture
def capabilities(conformance: Conformance) -> Capabilities:
    """What the binder under test declares it can do, in the configured variant."""
    return conformance.capabilities


@pytest.fixture
def dest(request: pytest.FixtureRequest) -> str:
    """A destination name no other test uses: ``cf-<test name>-<random>``."""
    return unique_name(request, "cf")


@pytest.fixture
def group() -> str:
    """A consumer group name no other test uses."""
    return unique_group()


@pytest.fixture
def conformance(binder_config: Mapping[str, Any]) -> Iterator[Conformance]:
    """The binder under test; every destination the test declared is deleted afterwards."""
    suite = Conformance(binder_config)
    yield suite
    run(suite.cleanup())
