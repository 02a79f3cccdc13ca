"""Inputs are refused or accepted in time linear in their size; YAML is read strictly.

The time bounds are generous (the quadratic and exponential versions took from 10 s to
forever on the same inputs), so a slow machine does not make them flaky.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from binder import App, ConfigError
from binder._exceptions import unknown_exception_names
from binder._settings_env import masked, parse_env_value
from binder.cli import main
from binder.config import load_config, load_yaml

ROOT = Path(__file__).resolve().parents[2]
FAST = 2.0  # seconds


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    try:
        result: Any = call()
    except Exception as exc:
        result = exc
    return time.perf_counter() - started, result


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "application.yml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _bomb_yaml(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        refs = ", ".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return "\n".join(lines) + f"\nbinder: {{bindings: {{x: {{destination: *a{levels - 1}}}}}}}\n"


def _shared_bomb(levels: int = 30) -> list[Any]:
    """A value that is tiny in memory and 9**levels items long when expanded."""
    value: list[Any] = ["lol"] * 9
    for _ in range(levels):
        value = [value] * 9
    return value


# --- long values ------------------------------------------------------------------------


def test_a_200000_character_key_expression_is_refused_fast() -> None:
    text = "payload." + "a" * 200_000
    doc = {"binder": {"bindings": {"a-out-0": {"producer": {"partition-key-expression": text}}}}}
    elapsed, error = _timed(lambda: load_config(doc, {}))
    assert isinstance(error, ConfigError)
    assert "longer than 500 characters" in str(error)
    assert len(str(error)) < 1000, "the value is cut before it is shown"
    assert elapsed < FAST


def test_check_of_a_100000_character_destination_is_fast(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _yaml(tmp_path, f"binder: {{bindings: {{a-out-0: {{destination: {'x' * 100_000}}}}}}}")
    elapsed, code = _timed(lambda: main(["check", str(path)]))
    assert code == 0, capsys.readouterr().err
    assert "x" * 100_000 in capsys.readouterr().out
    assert elapsed < FAST


@pytest.mark.parametrize(
    "text",
    [
        "a" * 200_000,
        "http:" * 40_000,
        "a://:" + "b" * 200_000,
        "a://" * 50_000,
        "x+y.z-" * 40_000,
        "s://u:" * 40_000,
    ],
    ids=["letters", "schemes-without-slashes", "no-at", "many-schemes", "scheme-chars", "users"],
)
def test_masking_urls_is_linear(text: str) -> None:
    elapsed, _ = _timed(lambda: masked(text))
    assert elapsed < FAST / 4


def test_masking_still_masks_url_passwords() -> None:
    text = "see 1http://u:p@h, x+y://a:b@c, ftp://nopass@h and http://u:p@h:80/x@y"
    assert masked(text) == (
        "see 1http://u:***@h, x+y://a:***@c, ftp://nopass@h and http://u:***@h:80/x@y"
    )


def test_an_error_shows_a_bounded_value_of_a_shared_structure() -> None:
    doc = {"binder": {"bindings": {"x": {"destination": _shared_bomb()}}}}
    elapsed, error = _timed(lambda: load_config(doc, {}))
    assert isinstance(error, ConfigError)
    assert "binder.bindings.x.destination" in str(error)
    assert "[[['lol'" in str(error) and len(str(error)) < 300
    assert elapsed < FAST


def test_a_cut_error_value_still_masks_a_url_password() -> None:
    url = "amqp://guest:" + "s3cret" * 30 + "@localhost/"
    doc = {"binder": {"bindings": {"x": {"destination": [url] * 3}}}}
    with pytest.raises(ConfigError) as caught:
        load_config(doc, {})
    assert "s3cret" not in str(caught.value) and "guest:***" in str(caught.value)


# --- aliases ----------------------------------------------------------------------------


def test_a_yaml_alias_bomb_is_refused_by_check_in_a_subprocess(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yml"
    path.write_text(_bomb_yaml(), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "binder", "check", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert "aliases expand the document by more than" in done.stderr
    assert "bomb.yml" in done.stderr
    assert time.perf_counter() - started < 15  # a fresh interpreter included


def test_an_alias_bomb_is_refused_fast(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yml"
    path.write_text(_bomb_yaml(levels=40), encoding="utf-8")
    elapsed, error = _timed(lambda: load_yaml(path))
    assert isinstance(error, ConfigError) and "aliases expand" in str(error)
    assert elapsed < FAST


def test_aliases_and_merge_keys_of_ordinary_size_are_allowed(tmp_path: Path) -> None:
    path = _yaml(
        tmp_path,
        """
        common: &common {max-attempts: 5, back-off-initial-interval: 0.1}
        binder:
          bindings:
            a-in-0: {destination: a, consumer: *common}
            b-in-0:
              destination: b
              consumer:
                <<: *common
                max-attempts: 2
        """,
    )
    doc = load_yaml(path)
    assert doc["binder"]["bindings"]["a-in-0"]["consumer"]["max-attempts"] == 5
    assert doc["binder"]["bindings"]["b-in-0"]["consumer"] == {
        "max-attempts": 2,
        "back-off-initial-interval": 0.1,
    }


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "binder: &loop {bindings: *loop}\n")
    with pytest.raises(ConfigError, match="alias refers to its own anchor"):
        load_yaml(path)


def test_nesting_too_deep_is_refused_fast(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "binder: " + "[" * 100_000 + "]" * 100_000 + "\n")
    elapsed, error = _timed(lambda: load_yaml(path))
    assert isinstance(error, ConfigError) and "nested deeper than" in str(error)
    assert elapsed < FAST


def test_an_environment_value_is_read_by_the_same_strict_loader() -> None:
    bomb = "[" + ", ".join(["&a [1, 1, 1, 1, 1, 1, 1, 1, 1]"] + ["*a"] * 8) + "]"
    assert parse_env_value(bomb) == [[1] * 9] * 9  # small: accepted
    assert parse_env_value("{a: 1, a: 2}") == "{a: 1, a: 2}"  # refused: kept as text


# --- duplicate keys ---------------------------------------------------------------------


def test_a_duplicate_key_is_an_error_naming_the_key_and_its_lines(tmp_path: Path) -> None:
    path = _yaml(
        tmp_path,
        """
        binder:
          bindings:
            orders-in-0:
              destination: orders
              group: billing
              group: audit
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_yaml(path)
    message = str(caught.value)
    assert "duplicate key 'group' on line 7 (first on line 6)" in message
    assert "application.yml" in message


def test_a_duplicate_key_in_a_flow_mapping_is_an_error(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "binder: {default-binder: a, default-binder: b}\n")
    with pytest.raises(ConfigError, match="duplicate key 'default-binder' on line 1"):
        load_yaml(path)


def test_check_refuses_a_duplicate_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _yaml(tmp_path, "binder:\n  bindings: {}\n  bindings: {}\n")
    assert main(["check", str(path)]) == 2
    assert "duplicate key 'bindings' on line 3 (first on line 2)" in capsys.readouterr().err


# --- retryable-exceptions names ---------------------------------------------------------


class LocalTransientError(Exception):
    """Defined by this (loaded) test module."""


@pytest.mark.parametrize(
    ("name", "known"),
    [
        ("ValueError", True),
        ("builtins.ValueError", True),
        ("ConfigError", True),  # a class of a loaded module, by its simple name
        ("binder.errors.ConfigError", True),
        ("LocalTransientError", True),
        (f"{__name__}.LocalTransientError", True),
        ("json.decoder.JSONDecodeError", True),
        ("json.JSONDecodeError", False),  # defined in json.decoder: matching would never see it
        ("NoSuchError", False),
        ("no.such.module.Error", False),
        ("dict", False),  # a class, not an exception
    ],
)
def test_which_exception_names_are_known(name: str, known: bool) -> None:
    import json.decoder  # noqa: F401  (loaded, as an app would have it)

    assert unknown_exception_names([name]) == ([] if known else [name])


@pytest.fixture
def warnings_of_config(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="binder.config"):
        yield caplog


def test_an_unknown_retryable_exception_is_a_warning_at_start_once(
    warnings_of_config: pytest.LogCaptureFixture,
) -> None:
    retryable = {"ValueError": False, "NoSuchTransientError": True}
    consumer = {"retryable-exceptions": retryable}
    bindings = {"sink-in-0": {"destination": "d", "group": "g", "consumer": consumer}}
    app = App(config={"binder": {"bindings": bindings}}, environ={})

    @app.consumer
    def sink(payload: Any) -> None:
        pass

    with app.test():
        pass
    messages = [r.getMessage() for r in warnings_of_config.records if r.levelname == "WARNING"]
    path = "binder.bindings.sink-in-0.consumer.retryable-exceptions.NoSuchTransientError"
    assert [m for m in messages if path in m] == [messages[0]], messages
    assert len(messages) == 1 and "ValueError" not in messages[0]


@pytest.mark.parametrize("text", ["shop:", "orders-demo-1a2b:", "a: 1", "- one"])
def test_block_style_yaml_in_an_environment_variable_stays_text(text: str) -> None:
    """A key prefix ``shop:`` from the environment is that text, not a mapping: only flow
    collections (``[...]``, ``{...}``) are read as collections."""
    assert parse_env_value(text) == text


def test_flow_collections_in_an_environment_variable_are_collections() -> None:
    assert parse_env_value(" [a, b]") == ["a", "b"]
    assert parse_env_value("{retention.ms: '1000'}") == {"retention.ms": "1000"}
