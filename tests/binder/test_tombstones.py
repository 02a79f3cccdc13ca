"""Tombstones: the TOMBSTONE sentinel on send, the rule for a received record without a value."""

from __future__ import annotations

import asyncio
import copy
import pickle
import queue
from typing import Any, Optional

import pytest

from binder import TOMBSTONE, App, ConversionError, Message
from binder.converters import ConverterRegistry
from binder.functions import FunctionDef, Pipeline
from binder.invoke import Invoker
from binder.spi import InboundRecord

TIMEOUT = 5.0


def test_the_sentinel_is_one_object_with_a_clear_repr() -> None:
    assert repr(TOMBSTONE) == "TOMBSTONE"
    assert copy.deepcopy(TOMBSTONE) is TOMBSTONE
    assert pickle.loads(pickle.dumps(TOMBSTONE)) is TOMBSTONE
    assert type(TOMBSTONE)() is TOMBSTONE


def _payload(fn: Any) -> Any:
    invoker = Invoker(
        Pipeline("f", [FunctionDef.inspect(fn, "consumer", None)]),
        ConverterRegistry(),
        "application/json",
        batch=False,
    )
    return invoker.argument(InboundRecord("users", 0, 0, None, b"u-1"), 1)


def _optional(payload: Optional[dict]) -> None: ...  # noqa: UP045 - the typing form too
def _union(payload: dict | None) -> None: ...
def _untyped(payload) -> None: ...  # type: ignore[no-untyped-def]
def _message(message: Message[dict]) -> None: ...
def _plain(payload: dict) -> None: ...
def _raw(payload: bytes) -> None: ...


@pytest.mark.parametrize("fn", [_optional, _union, _untyped])
def test_a_tombstone_is_none_for_a_parameter_that_accepts_none(fn: Any) -> None:
    assert _payload(fn) is None


def test_a_message_parameter_gets_a_tombstone_with_payload_none_and_its_key() -> None:
    message = _payload(_message)
    assert message.payload is None
    assert message.key == "u-1"


@pytest.mark.parametrize("fn", [_plain, _raw])
def test_a_tombstone_for_a_parameter_refusing_none_is_a_conversion_error(fn: Any) -> None:
    with pytest.raises(ConversionError, match=r"tombstone.*does not accept None"):
        _payload(fn)


def _app(binder: dict[str, Any] | None = None) -> App:
    section: dict[str, Any] = {"bindings": {"forget-out-0": {"destination": "users"}}}
    if binder is not None:
        section |= {"binders": {"main": binder}, "default-binder": "main"}
    return App(config={"binder": section}, environ={})


def test_a_function_returning_tombstone_sends_a_record_without_a_value() -> None:
    app = _app()

    @app.function
    def forget(user: dict) -> Message[Any]:
        return Message(TOMBSTONE, key=user["id"])

    with app.test() as t:
        t.send("forget-in-0", {"id": "u-1"})
        out = t.receive("users", timeout=TIMEOUT)
    assert out is not None
    assert (out.payload, out.key) == (TOMBSTONE, "u-1")
    assert "contentType" not in out.headers, "a tombstone has no content"


def test_a_received_tombstone_reaches_optional_and_a_dict_function_dead_letters_it() -> None:
    bindings = {
        "keep-in-0": {"destination": "users", "group": "k"},
        "strict-in-0": {"destination": "users", "group": "s"},
    }
    app = App(config={"binder": {"bindings": bindings}}, environ={})
    seen: queue.Queue[Any] = queue.Queue()

    @app.consumer
    def keep(payload: dict | None) -> None:
        seen.put(payload)

    @app.consumer
    def strict(payload: dict) -> None:
        raise AssertionError("never called with a tombstone")

    with app.test() as t:
        t.send("users", TOMBSTONE, key="u-2")
        letter = t.receive("users.s.dlq", timeout=TIMEOUT)
        received = seen.get(timeout=TIMEOUT)
    assert received is None
    assert letter is not None
    assert (letter.payload, letter.key) == (TOMBSTONE, "u-2"), "the letter keeps no value"
    assert "tombstone" in letter.headers["x-exception-message"]


def test_the_durable_log_refuses_a_tombstone_naming_the_binder(tmp_path: Any) -> None:
    app = _app({"type": "log", "path": str(tmp_path)})

    async def send() -> None:
        async with app:
            await app.send("users", TOMBSTONE, key="u-1")

    with pytest.raises(ConversionError, match=r"binder 'main' cannot send a tombstone"):
        asyncio.run(send())
