"""The ``log`` binder with a ``path``: options, capabilities, one broker per directory."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from binder import App, ConfigError, Message, plugins
from binders.log.binder import DURABLE_CAPABILITIES, LogBinder, durable_broker_name
from binders.log.engine import Broker
from binders.log.engine.durable import DurableStorage, StorageSettings
from binders.log.options import LogOptions


def _app(path: Path | str, bindings: dict[str, Any] | None = None, **options: Any) -> App:
    binder = {"type": "log", "path": str(path), **options}
    config = {"binder": {"binders": {"local": binder}, "bindings": bindings or {}}}
    return App(config=config, environ={})


def test_a_path_adds_persistence_to_the_capabilities() -> None:
    assert LogBinder("b", LogOptions(path="x")).capabilities == DURABLE_CAPABILITIES
    assert not LogBinder("b", LogOptions()).capabilities.persistence
    kind = plugins.binder_types()["log"]
    assert kind.variants["path"].persistence  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retention-bytes": 100, "retention-hard-bytes": 10}, "must not be below"),
        ({"fsync": "sometimes"}, "fsync"),
        ({"segment-bytes": 1 << 40}, "segment-bytes"),
        ({"topics": {"t": {"retention-day": 1}}}, "retention-day"),
        ({"default-partition-count": 0}, "default-partition-count"),
    ],
)
def test_bad_durable_options_fail_naming_the_key(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _app(tmp_path, **options)


def test_an_empty_path_is_refused() -> None:
    with pytest.raises(ConfigError, match="path"):
        _app("")


def test_in_memory_retention_is_refused_with_a_path(tmp_path: Path) -> None:
    async def start() -> None:
        async with _app(tmp_path, **{"max-records-per-partition": 5}) as app:
            await app.send("t", b"x")  # binders start when first needed

    with pytest.raises(ConfigError, match="max-records-per-partition"):
        asyncio.run(start())


def test_apps_on_one_path_share_a_broker_closed_by_the_last(tmp_path: Path) -> None:
    async def scenario() -> None:
        first, second = _app(tmp_path / "log"), _app(tmp_path / "log" / ".." / "log")
        async with first:
            async with second:
                await first.send("t", b"from-first")
                await second.send("t", b"from-second")
                broker = Broker.named(durable_broker_name(tmp_path / "log"))
                assert broker.end_offsets("t") == {0: 2}
            assert not broker.closed  # the first app still uses it
        assert broker.closed

    asyncio.run(scenario())
    DurableStorage(tmp_path / "log", StorageSettings()).close()  # the directory lock was released


def test_other_settings_on_an_open_path_are_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _app(tmp_path, fsync="batch") as first:
            await first.send("t", b"x")
            async with _app(tmp_path, fsync="never") as second:
                await second.send("t", b"x")

    with pytest.raises(ConfigError, match="other settings"):
        asyncio.run(scenario())


def test_a_restarted_app_resumes_its_group_without_redelivery(tmp_path: Path) -> None:
    seen: list[int] = []
    bindings = {"sink-in-0": {"destination": "orders", "group": "g"}}

    def make() -> App:
        app = _app(tmp_path, bindings)

        @app.consumer
        def sink(message: Message[dict]) -> None:
            seen.append(message.payload["id"])

        return app

    async def run(first: int, last: int) -> None:
        async with make() as app:
            for i in range(first, last):
                await app.send("orders", {"id": i})
            async with asyncio.timeout(10):
                while len(seen) < last:
                    await asyncio.sleep(0.01)

    asyncio.run(run(0, 50))
    asyncio.run(run(50, 80))
    assert seen == list(range(80))
