"""A binding that needs a capability its binder does not declare fails at start-up, naming it."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from pydantic import BaseModel

from binder import App, CapabilityError, plugins
from binder.spi import BinderType, Capabilities, hookimpl
from binders.log import LogBinder, LogOptions
from binders.log.engine import Broker

BARE = Capabilities(consumer_groups=False, native_partitions=False, anonymous_consumers=True)


class BareBinder(LogBinder):
    """The log engine, declaring only what a plain pub/sub backend could do."""

    capabilities = BARE


@dataclasses.dataclass(frozen=True)
class BareType:
    name: str = "bare"
    capabilities: Capabilities = BARE
    options: type[BaseModel] = LogOptions

    def create(self, name: str, options: BaseModel) -> BareBinder:
        assert isinstance(options, LogOptions)
        return BareBinder(name, options)


class BarePlugin:
    @hookimpl
    def binder_add_binder_types(self) -> Sequence[BinderType]:
        return [BareType()]


@pytest.fixture
def bare() -> Iterator[str]:
    plugin = BarePlugin()
    plugins.plugin_manager().register(plugin)
    broker = f"bare-{uuid.uuid4().hex}"
    yield broker
    plugins.plugin_manager().unregister(plugin)
    Broker.forget(broker)


def _app(broker: str, **binding: Any) -> App:
    app = App(
        config={
            "binder": {
                "binders": {"b": {"type": "bare", "broker": broker}},
                "bindings": {"sink-in-0": {"destination": "d", **binding}},
            }
        },
        environ={},
    )
    app.consumer(lambda value: None, name="sink")
    return app


async def _start(app: App) -> None:
    async with app:
        pass


def test_a_group_on_a_binder_without_groups_fails_naming_the_capability(bare: str) -> None:
    with pytest.raises(CapabilityError, match="consumer_groups") as caught:
        asyncio.run(_start(_app(bare, group="g")))
    assert caught.value.path == "binder.bindings.sink-in-0.group"


def test_static_partitions_need_native_partitions(bare: str) -> None:
    app = _app(bare, consumer={"instance-count": 2, "instance-index": 1})
    with pytest.raises(CapabilityError, match="native_partitions") as caught:
        asyncio.run(_start(app))
    assert caught.value.path == "binder.bindings.sink-in-0.consumer.instance-count"


def test_what_the_binder_can_do_still_starts(bare: str) -> None:
    asyncio.run(_start(_app(bare)))  # anonymous consumer: declared, so it starts
