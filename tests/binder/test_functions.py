"""binder.functions: registration, signature inspection and ``function-definition``."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from binder import App, ConfigError, Message
from binder.functions import FunctionDef, FunctionRegistry, Pipeline, parse_definition


class Order(BaseModel):
    id: int


def _registry(*defs: FunctionDef) -> FunctionRegistry:
    registry = FunctionRegistry()
    for definition in defs:
        registry.add(definition)
    return registry


def _fn(name: str) -> FunctionDef:
    return FunctionDef.inspect(lambda x: x, "function", name)


def _consumer(name: str) -> FunctionDef:
    return FunctionDef.inspect(lambda x: None, "consumer", name)


def _supplier(name: str, interval: float | None = None) -> FunctionDef:
    return FunctionDef.inspect(lambda: 1, "supplier", name, interval=interval)


# -- decorators ------------------------------------------------------------------------------


def test_decorators_register_by_function_name_and_return_the_function() -> None:
    app = App()

    def upper(order: dict) -> dict:
        return order

    assert app.function(upper) is upper

    @app.consumer
    async def audit(msg: Message[dict]) -> None: ...

    @app.supplier(interval=0.25)
    def ticks() -> int:
        return 1

    assert app.functions.names() == ["upper", "audit", "ticks"]
    assert [d.kind for d in app.functions] == ["function", "consumer", "supplier"]
    assert app.functions.get("ticks").interval == 0.25  # type: ignore[union-attr]
    assert app.functions.get("ticks").param is None  # type: ignore[union-attr]
    assert len(app.functions) == 3


def test_decorator_with_explicit_name() -> None:
    app = App()

    @app.function(name="renamed")
    def original(x: Any) -> Any:
        return x

    assert app.functions.get("renamed") is not None
    assert app.functions.get("original") is None
    assert original(3) == 3


def test_registering_a_name_twice_is_config_error() -> None:
    app = App()
    app.function(lambda x: x, name="dup")
    with pytest.raises(ConfigError, match="'dup' is registered twice"):
        app.consumer(lambda x: None, name="dup")


@pytest.mark.parametrize("fn", [lambda: 1, lambda a, b: 1])
def test_function_needs_exactly_one_positional_parameter(fn: Any) -> None:
    with pytest.raises(ConfigError) as info:
        FunctionDef.inspect(fn, "function", "bad")
    assert "'bad' must take exactly one positional parameter" in str(info.value)
    assert info.value.path == "binder.function-definition"


def test_keyword_only_parameters_are_not_counted() -> None:
    def fn(x: int, *, extra: int = 0) -> int:
        return x

    definition = FunctionDef.inspect(fn, "function", None)
    assert definition.param is not None
    assert definition.param.target.type is int


# -- signature inspection --------------------------------------------------------------------


def _param(fn: Any) -> Any:
    param = FunctionDef.inspect(fn, "function", None).param
    assert param is not None
    return param


def test_bare_message_wants_message_of_any_payload() -> None:
    def fn(msg: Message) -> None: ...

    param = _param(fn)
    assert param.wants_message and not param.batch
    assert param.target.type is None


def test_parameterised_message_wants_message_of_model() -> None:
    def fn(msg: Message[Order]) -> None: ...

    param = _param(fn)
    assert param.wants_message
    assert param.target.type is Order
    assert param.target.adapt({"id": 1}) == Order(id=1)


def test_plain_annotation_wants_payload_of_that_type() -> None:
    def fn(order: Order) -> None: ...

    param = _param(fn)
    assert not param.wants_message and not param.batch
    assert param.target.type is Order


def test_missing_annotation_takes_payload_as_is() -> None:
    def fn(value):  # type: ignore[no-untyped-def]
        return value

    param = _param(fn)
    assert not param.wants_message
    assert param.target.type is None


def test_list_annotation_is_batch_capable_with_element_target() -> None:
    def fn(orders: list[Order]) -> None: ...

    param = _param(fn)
    assert param.batch and not param.wants_message
    assert param.target.type is Order
    assert param.whole is not None and param.whole.type == list[Order]


def test_list_of_messages_is_batch_of_whole_messages() -> None:
    def fn(msgs: list[Message[Order]]) -> None: ...

    param = _param(fn)
    assert param.batch and param.wants_message
    assert param.target.type is Order
    assert param.whole is None


def test_bare_list_is_a_list_payload_not_a_batch() -> None:
    def fn(items: list) -> None: ...

    param = _param(fn)
    assert not param.batch
    assert param.target.type is list


def test_unresolvable_annotation_takes_payload_as_is() -> None:
    def fn(value: NotDefinedAnywhere) -> None: ...  # type: ignore[name-defined]  # noqa: F821

    param = _param(fn)
    assert not param.wants_message
    assert param.target.type is None
    sentinel = object()
    assert param.target.adapt(sentinel) is sentinel


def test_sync_and_async_detection() -> None:
    def sync(x: Any) -> Any: ...

    async def coro(x: Any) -> Any: ...

    class AsyncCallable:
        async def __call__(self, x: Any) -> Any: ...

    assert not FunctionDef.inspect(sync, "function", None).is_async
    assert FunctionDef.inspect(coro, "function", None).is_async
    assert FunctionDef.inspect(AsyncCallable(), "function", "callable").is_async


# -- parse_definition ------------------------------------------------------------------------


def test_parse_definition_composes_and_separates() -> None:
    registry = _registry(_fn("a"), _fn("b"), _fn("c"))
    pipelines = parse_definition("a|b;c", registry)
    assert [p.name for p in pipelines] == ["ab", "c"]
    assert [s.name for s in pipelines[0].stages] == ["a", "b"]
    assert pipelines[0].input_binding == "ab-in-0"
    assert pipelines[0].output_binding == "ab-out-0"


def test_parse_definition_tolerates_spaces_and_empty_entries() -> None:
    registry = _registry(_fn("a"), _fn("b"), _fn("c"))
    assert [p.name for p in parse_definition(" a | b ; ;c ", registry)] == ["ab", "c"]


def test_parse_definition_none_activates_every_registered_function() -> None:
    registry = _registry(_fn("a"), _consumer("b"), _supplier("c"))
    assert [p.name for p in parse_definition(None, registry)] == ["a", "b", "c"]


def test_parse_definition_with_empty_registry_is_empty() -> None:
    assert parse_definition(None, FunctionRegistry()) == []


def test_parse_definition_unknown_name_names_the_key() -> None:
    registry = _registry(_fn("a"))
    with pytest.raises(ConfigError) as info:
        parse_definition("a|missing", registry)
    message = str(info.value)
    assert message.startswith("binder.function-definition:")
    assert "'missing'" in message and "registered: a" in message
    assert info.value.path == "binder.function-definition"
    assert info.value.value == "a|missing"


def test_parse_definition_unknown_name_with_nothing_registered() -> None:
    with pytest.raises(ConfigError, match="none registered"):
        parse_definition("x", FunctionRegistry())


def test_supplier_only_first() -> None:
    registry = _registry(_fn("a"), _supplier("s"))
    assert parse_definition("s|a", registry)[0].kind == "supplier"
    with pytest.raises(ConfigError, match="supplier 's' can only come first"):
        parse_definition("a|s", registry)


def test_consumer_only_last() -> None:
    registry = _registry(_fn("a"), _consumer("c"))
    assert parse_definition("a|c", registry)[0].kind == "consumer"
    with pytest.raises(ConfigError, match="consumer 'c' can only come last"):
        parse_definition("c|a", registry)


def test_supplier_into_consumer_has_neither_input_nor_output() -> None:
    registry = _registry(_supplier("s"), _consumer("c"))
    with pytest.raises(ConfigError, match="neither input nor output"):
        parse_definition("s|c", registry)


def test_same_pipeline_active_twice_is_error() -> None:
    registry = _registry(_fn("a"))
    with pytest.raises(ConfigError, match="'a' is active twice"):
        parse_definition("a;a", registry)


# -- Pipeline --------------------------------------------------------------------------------


def test_pipeline_kinds_and_ends() -> None:
    function = Pipeline("f", [_fn("f")])
    consumer = Pipeline("fc", [_fn("f"), _consumer("c")])
    supplier = Pipeline("sf", [_supplier("s"), _fn("f")])
    assert (function.kind, function.has_input, function.has_output) == ("function", True, True)
    assert (consumer.kind, consumer.has_input, consumer.has_output) == ("consumer", True, False)
    assert (supplier.kind, supplier.has_input, supplier.has_output) == ("supplier", False, True)


def test_pipeline_is_async_when_any_stage_is() -> None:
    async def later(x: Any) -> Any:
        return x

    sync = _fn("a")
    mixed = Pipeline("ab", [sync, FunctionDef.inspect(later, "function", "b")])
    assert not Pipeline("a", [sync]).is_async
    assert mixed.is_async


def test_pipeline_interval_comes_from_the_supplier_with_default() -> None:
    assert Pipeline("s", [_supplier("s", 0.5)]).interval == 0.5
    assert Pipeline("s", [_supplier("s")]).interval == 1.0
