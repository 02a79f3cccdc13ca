"""The public conformance suite on the ``log`` binder with a ``path``: the durable engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from binder.testing.conformance import *  # noqa: F403


@pytest.fixture
def binder_config(tmp_path: Path) -> dict[str, str]:
    """A fresh log directory per test; ``fsync: batch`` (the default) exercises group commit."""
    return {"type": "log", "path": str(tmp_path / "log")}
