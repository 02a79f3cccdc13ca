"""Binder-specific keys of a binding: beside the core's under ``consumer:`` and ``producer:``,
validated by the binding's binder type (its ``binding_options``), refused elsewhere."""

from __future__ import annotations

from typing import Any

import pytest

from binder import App
from binder.config import load_config
from binder.errors import ConfigError
from binder.plugins import binding_option_models, option_models
from binders.rabbit.options import QueueOptions


def _app(binder_type: str, consumer: dict[str, Any], environ: dict[str, str] | None = None) -> App:
    binding = {"destination": "d", "group": "g", "consumer": consumer}
    section = {"binders": {"b": {"type": binder_type}}, "bindings": {"f-in-0": binding}}
    return App(config={"binder": section}, environ=environ or {})


def test_the_binder_types_keys_are_validated_by_its_model() -> None:
    consumer = _app("rabbit", {"queue-type": "quorum", "prefetch": 50, "max-attempts": 2})
    options = consumer.config.bindings["f-in-0"].consumer
    assert options.max_attempts == 2
    assert isinstance(options.binder_options, QueueOptions)
    assert (options.binder_options.queue_type, options.binder_options.prefetch) == ("quorum", 50)


def test_a_binding_without_binder_keys_has_none() -> None:
    assert _app("rabbit", {}).config.bindings["f-in-0"].consumer.binder_options is None


@pytest.mark.parametrize(
    ("consumer", "path", "message"),
    [
        ({"queue-typ": "quorum"}, "consumer.queue-typ", "did you mean 'queue-type'"),
        ({"max-atempts": 2}, "consumer.max-atempts", "did you mean 'max-attempts'"),
        ({"queue-type": "lazy"}, "consumer.queue-type", "'classic' or 'quorum'"),
        ({"prefetch": 0}, "consumer.prefetch", "greater than or equal to 1"),
    ],
)
def test_a_wrong_binder_key_fails_at_load_naming_it(
    consumer: dict[str, Any], path: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _app("rabbit", consumer)
    assert info.value.path == f"binder.bindings.f-in-0.{path}"
    assert message in str(info.value)


def test_another_binders_key_is_an_unknown_key() -> None:
    with pytest.raises(ConfigError) as info:
        _app("log", {"queue-type": "quorum"})
    assert info.value.path == "binder.bindings.f-in-0.consumer.queue-type"
    assert "unknown key" in str(info.value)


def test_binder_keys_come_from_the_environment_too() -> None:
    variable = "BINDER_BINDINGS__F_IN_0__CONSUMER__QUEUE_TYPE"
    app = _app("rabbit", {}, {variable: "quorum"})
    options = app.config.bindings["f-in-0"].consumer.binder_options
    assert isinstance(options, QueueOptions) and options.queue_type == "quorum"


def test_producer_keys_are_validated_the_same_way() -> None:
    binding = {"destination": "d", "producer": {"queue-type": "quorum", "required-groups": ["g"]}}
    section = {"binders": {"b": {"type": "rabbit"}}, "bindings": {"orders": binding}}
    config = load_config({"binder": section}, {}, option_models(), binding_option_models())
    options = config.bindings["orders"].producer.binder_options
    assert isinstance(options, QueueOptions) and options.queue_type == "quorum"


def test_without_any_binder_types_the_keys_are_kept_as_written() -> None:
    section = {"bindings": {"f-in-0": {"consumer": {"queue-type": "quorum"}}}}
    config = load_config({"binder": section}, {})
    consumer = config.bindings["f-in-0"].consumer
    assert consumer.binder_options is None
    assert consumer.model_extra == {"queue-type": "quorum"}
