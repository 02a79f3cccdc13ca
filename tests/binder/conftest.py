"""What the CLI tests share: a configuration file naming one real binder of a given type."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from binders.kafka.testing import FAST_GROUPS


@pytest.fixture
def cli_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[str], tuple[dict[str, Any], Path, str]]:
    """``make(kind)``: the options of a ``kind`` binder (``log`` under ``tmp_path``; ``redis``,
    ``rabbit``, ``kafka`` on the test run's servers, through their fixtures), written as the
    one binder ``under-test`` of ``tmp_path / "app.yml"``. It returns ``(options, that file,
    a prefix for destination names)``: the prefix is ``rabbit_prefix`` on RabbitMQ, whose
    fixture deletes what is named so after the test, and empty elsewhere."""

    def make(kind: str) -> tuple[dict[str, Any], Path, str]:
        prefix = ""
        if kind == "log":
            options: dict[str, Any] = {"type": "log", "path": str(tmp_path / "log")}
        elif kind == "redis":
            options = {"type": "redis", "url": request.getfixturevalue("redis_url")}
            options["key-prefix"] = request.getfixturevalue("key_prefix")
        elif kind == "rabbit":
            options = {"type": "rabbit", "url": request.getfixturevalue("rabbit_url")}
            prefix = request.getfixturevalue("rabbit_prefix")
        elif kind == "kafka":
            servers = request.getfixturevalue("kafka_bootstrap_servers")
            options = {"type": "kafka", "bootstrap-servers": servers, **FAST_GROUPS}
        else:
            raise ValueError(f"no binder type {kind!r}")
        config = tmp_path / "app.yml"
        config.write_text(yaml.safe_dump({"binder": {"binders": {"under-test": options}}}))
        return options, config, prefix

    return make
