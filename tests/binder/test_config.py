"""Tests of binder.config: models, defaults, env overrides, error reports, rendering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ConfigDict

from binder.config import (
    BinderSection,
    ConsumerOptions,
    load_config,
    load_yaml,
    normalize_binding_name,
    render_effective,
)
from binder.errors import ConfigError


class KafkaOptions(BaseModel):
    """A tiny stand-in for a binder's options model."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=lambda name: name.replace("_", "-"), populate_by_name=True
    )

    bootstrap_servers: str = "localhost:9092"
    sasl_plain_password: str | None = None


class LogOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str | None = None


TYPES: dict[str, type[BaseModel]] = {"kafka": KafkaOptions, "log": LogOptions}


def load(section: dict[str, Any] | None, **environ: str) -> BinderSection:
    """Load ``{"binder": section}`` with exactly ``environ`` as the environment."""
    doc = None if section is None else {"binder": section}
    return load_config(doc, environ, TYPES)


def config_error(section: dict[str, Any] | None, **environ: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(section, **environ)
    return info.value


# --- defaults ---------------------------------------------------------------------------


def test_empty_config_has_one_local_log_binder() -> None:
    section = load(None)
    assert list(section.binders) == ["local"]
    assert section.binders["local"].type == "log"
    assert isinstance(section.binders["local"].options, LogOptions)
    assert section.default_binder == "local"
    assert section.bindings == {}
    assert section.function_definition is None


def test_consumer_defaults() -> None:
    consumer = ConsumerOptions()
    assert (consumer.concurrency, consumer.max_attempts) == (1, 3)
    assert (consumer.back_off_initial_interval, consumer.back_off_max_interval) == (1.0, 10.0)
    assert consumer.back_off_multiplier == 2.0
    assert consumer.dead_letter and consumer.default_retryable
    assert consumer.retryable_exceptions == {}
    assert (consumer.instance_index, consumer.instance_count) == (0, 1)
    assert (consumer.batch_mode, consumer.batch_size, consumer.start_offset) == (False, 100, None)


def test_binding_defaults_resolve_destination_and_binder() -> None:
    section = load({"bindings": {"orders-in-0": {"group": "billing"}}})
    binding = section.bindings["orders-in-0"]
    assert binding.destination == "orders-in-0"
    assert binding.binder == "local"
    assert binding.content_type == "application/json"
    assert binding.producer.partition_count == 1
    assert binding.producer.key_expression is None


def test_the_only_binder_is_the_default() -> None:
    section = load({"binders": {"kafka": {"type": "kafka"}}})
    assert section.default_binder == "kafka"


def test_binding_lookup_ignores_case_and_dash_or_underscore() -> None:
    section = load({"bindings": {"uppercase-in-0": {"group": "g"}}})
    assert section.binding("UPPERCASE_IN_0") is section.bindings["uppercase-in-0"]
    assert section.binding("uppercase-out-0") is None
    assert normalize_binding_name("Orders_In_0") == "orders-in-0"


def test_binder_options_are_kept_raw_without_binder_types() -> None:
    doc = {"binder": {"binders": {"x": {"type": "custom", "anything": 1}}}}
    section = load_config(doc, {})
    assert section.binders["x"].options == {"anything": 1}


# --- durations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (2, 2.0),
        (0.1, 0.1),
        ("1.5", 1.5),
        ("250ms", 0.25),
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("500us", 0.0005),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    section = load({"bindings": {"b": {"consumer": {"back-off-initial-interval": text}}}})
    interval = section.bindings["b"].consumer.back_off_initial_interval
    assert interval == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["-1s", -1, "soon", "5 parsecs", True])
def test_bad_duration_names_key_and_value(text: object) -> None:
    error = config_error({"bindings": {"b": {"consumer": {"back-off-max-interval": text}}}})
    assert error.path == "binder.bindings.b.consumer.back-off-max-interval"
    assert error.value == text
    assert f"(got {text!r})" in str(error)


# --- environment ------------------------------------------------------------------------


def test_env_override_lands_on_binding_spelled_with_dashes() -> None:
    section = load(
        {"bindings": {"uppercase-in-0": {"destination": "orders"}}},
        BINDER_BINDINGS__UPPERCASE_IN_0__GROUP="billing",
    )
    assert list(section.bindings) == ["uppercase-in-0"]
    assert section.bindings["uppercase-in-0"].group == "billing"
    assert section.bindings["uppercase-in-0"].destination == "orders"


def test_env_overrides_yaml_value() -> None:
    section = load({"default-binder": "local"}, BINDER_DEFAULT_BINDER="kafka", **_two_binders())
    assert section.default_binder == "kafka"


def _two_binders() -> dict[str, str]:
    return {"BINDER_BINDERS__LOCAL__TYPE": "log", "BINDER_BINDERS__KAFKA": "{type: kafka}"}


def test_env_only_config() -> None:
    section = load(
        None,
        BINDER_BINDERS__KAFKA="{type: kafka, bootstrap-servers: 'k:9092'}",
        BINDER_BINDINGS__ORDERS_IN_0__GROUP="billing",
    )
    assert section.default_binder == "kafka"
    assert section.binders["kafka"].options == KafkaOptions(bootstrap_servers="k:9092")
    assert section.bindings["orders-in-0"].group == "billing"


def test_env_values_are_parsed_as_yaml() -> None:
    prefix = "BINDER_BINDINGS__ORDERS_IN_0__"
    section = load(
        None,
        **{
            f"{prefix}CONSUMER__MAX_ATTEMPTS": "5",
            f"{prefix}CONSUMER__DEAD_LETTER": "false",
            f"{prefix}PRODUCER__REQUIRED_GROUPS": "[a, b]",
            f"{prefix}DESTINATION": "2024",
        },
    )
    binding = section.bindings["orders-in-0"]
    assert binding.consumer.max_attempts == 5
    assert binding.consumer.dead_letter is False
    assert binding.producer.required_groups == ["a", "b"]
    assert binding.destination == "2024"


def test_test_harness_variables_are_ignored() -> None:
    section = load(None, BINDER_TEST_BINDER="kafka")
    assert section.default_binder == "local"


def test_env_unknown_key_names_path_and_variable() -> None:
    variable = "BINDER_BINDINGS__ORDERS_IN_0__CONSUMER__MAX_ATEMPTS"
    error = config_error({"bindings": {"orders-in-0": {}}}, **{variable: "5"})
    assert error.path == "binder.bindings.orders-in-0.consumer.max-atempts"
    assert "unknown key" in str(error)
    assert "did you mean 'max-attempts'" in str(error)
    assert variable in str(error)


# --- errors -----------------------------------------------------------------------------


def test_yaml_unknown_key_names_path_and_suggests() -> None:
    error = config_error({"bindings": {"orders-in-0": {"consumer": {"max-atempts": 5}}}})
    assert error.path == "binder.bindings.orders-in-0.consumer.max-atempts"
    assert str(error).startswith(f"{error.path}: unknown key, did you mean 'max-attempts'? (got 5)")


def test_unknown_top_level_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"binders": {}}, {})
    assert info.value.path == "binders"
    assert "did you mean 'binder'" in str(info.value)


def test_wrong_type_names_path_and_value() -> None:
    error = config_error({"bindings": {"orders-in-0": {"consumer": {"max-attempts": "ten"}}}})
    assert error.path == "binder.bindings.orders-in-0.consumer.max-attempts"
    assert error.value == "ten"
    assert "(got 'ten')" in str(error)


def test_every_problem_is_listed_in_one_error() -> None:
    consumer = {"max-attempts": 0, "concurrency": 0}
    error = config_error({"bindings": {"a": {"consumer": consumer}, "b": {"group": []}}})
    lines = str(error).splitlines()
    assert lines[0].startswith("binder.bindings.a.consumer.concurrency: ")
    assert lines[1].startswith("binder.bindings.a.consumer.max-attempts: ")
    assert lines[2].startswith("binder.bindings.b.group: ")
    assert len(lines) == 3


def test_unknown_binder_type_lists_known_types() -> None:
    error = config_error({"binders": {"k": {"type": "kafkaa"}}})
    assert error.path == "binder.binders.k.type"
    assert error.value == "kafkaa"
    assert "kafka, log" in str(error)


def test_binder_options_errors_are_prefixed_with_the_binder_path() -> None:
    error = config_error({"binders": {"k": {"type": "kafka", "bootstrap-server": "x"}}})
    assert error.path == "binder.binders.k.bootstrap-server"
    assert "did you mean 'bootstrap-servers'" in str(error)


def test_binding_naming_unknown_binder() -> None:
    error = config_error({"bindings": {"orders-in-0": {"binder": "rabbit"}}})
    assert error.path == "binder.bindings.orders-in-0.binder"
    assert error.value == "rabbit"


def test_unknown_default_binder() -> None:
    error = config_error({"default-binder": "rabbit"})
    assert error.path == "binder.default-binder"
    assert error.value == "rabbit"


def test_several_binders_without_default() -> None:
    error = config_error({"binders": {"a": {"type": "log"}, "b": {"type": "kafka"}}})
    assert error.path == "binder.default-binder"
    assert "(a, b)" in str(error)


def test_instance_index_must_be_below_instance_count() -> None:
    consumer = {"instance-index": 2, "instance-count": 2}
    error = config_error({"bindings": {"b": {"consumer": consumer}}})
    assert error.path == "binder.bindings.b.consumer.instance-index"
    assert error.value == 2


def test_clashing_binding_names() -> None:
    error = config_error({"bindings": {"orders-in-0": {}, "ORDERS_IN_0": {}}})
    assert error.path == "binder.bindings.ORDERS_IN_0"


def test_bad_function_definition() -> None:
    error = config_error({"function-definition": "uppercase||enrich"})
    assert error.path == "binder.function-definition"


# --- partition key expressions ----------------------------------------------------------


def test_key_expression_is_compiled_at_load() -> None:
    producer = {"partition-key-expression": "payload.customer_id", "partition-count": 4}
    section = load({"bindings": {"out": {"producer": producer}}})
    assert section.bindings["out"].producer.key_expression is not None


def test_bad_key_expression_names_path_and_value() -> None:
    producer = {"partition-key-expression": "payload.__class__"}
    error = config_error({"bindings": {"out": {"producer": producer}}})
    assert error.path == "binder.bindings.out.producer.partition-key-expression"
    assert error.value == "payload.__class__"


# --- files ------------------------------------------------------------------------------


def test_load_yaml_reads_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "application.yml"
    path.write_text("binder:\n  bindings:\n    orders-in-0: {group: billing}\n")
    section = load_config(load_yaml(path), {})
    assert section.bindings["orders-in-0"].group == "billing"


def test_load_yaml_empty_file_is_empty_config(tmp_path: Path) -> None:
    path = tmp_path / "application.yml"
    path.write_text("")
    assert load_yaml(path) == {}


@pytest.mark.parametrize(
    "content",
    [None, "binder: [unclosed\n", "- a list\n"],
    ids=["missing", "syntax", "not-a-mapping"],
)
def test_bad_yaml_file_names_the_file(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "application.yml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert str(path) in str(info.value)


# --- rendering --------------------------------------------------------------------------


def test_render_masks_secrets() -> None:
    section = load_config(
        {
            "binder": {
                "binders": {
                    "rabbit": {"type": "rabbit", "url": "amqp://guest:guest@localhost:5672/"},
                    "kafka": {"type": "kafka", "sasl-plain-password": "hunter2", "api-key": "k"},
                },
                "default-binder": "kafka",
                "bindings": {"password-reset-in-0": {"group": "g"}},
            }
        },
        {},
    )
    text = render_effective(section)
    assert "amqp://guest:***@localhost:5672/" in text
    assert "hunter2" not in text
    rendered = yaml.safe_load(text)["binder"]
    assert rendered["binders"]["kafka"]["sasl-plain-password"] == "***"
    assert rendered["binders"]["kafka"]["api-key"] == "***"
    assert rendered["bindings"]["password-reset-in-0"]["group"] == "g"


def test_render_includes_defaults_and_options_and_loads_back() -> None:
    section = load({"binders": {"kafka": {"type": "kafka"}}, "bindings": {"b": {}}})
    rendered = yaml.safe_load(render_effective(section))
    assert rendered["binder"]["binders"]["kafka"] == {
        "type": "kafka",
        "bootstrap-servers": "localhost:9092",
        "sasl-plain-password": None,
    }
    assert rendered["binder"]["bindings"]["b"]["consumer"]["max-attempts"] == 3
    assert load_config(rendered, {}, TYPES) == section


def test_error_messages_mask_secret_values() -> None:
    error = config_error({"binders": {"kafka": {"type": "kafka", "sasl-plain-password": 42}}})
    assert error.path == "binder.binders.kafka.sasl-plain-password"
    assert "42" not in str(error)
