"""One configuration file shared by several processes (issue 8, section 3).

A binding of a function that is not active here, or not registered here, is accepted and
logged once; a binding naming a close match of an active function is a typo. A function
takes one parameter without a default, others keep their defaults.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from binder import App, ConfigError, Message
from binder.cli import main
from binder.functions import FunctionDef, FunctionRegistry, check_bindings, parse_definition
from binder.testing.processes import LineProcess, python_env

ROOT = Path(__file__).resolve().parents[2]
PROCS = Path(__file__).with_name("shared_procs.py")
TIMEOUT = 60.0
UNUSED = "bindings not used by this app"


def _app(bindings: dict[str, Any], definition: str | None = None) -> App:
    section: dict[str, Any] = {"bindings": bindings}
    if definition is not None:
        section["function-definition"] = definition
    return App(config={"binder": section}, environ={})


def _start(app: App) -> None:
    with app.test():
        pass


def _unused_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(UNUSED)]


# -- bindings of other processes' functions ----------------------------------------------------


def test_a_producer_accepts_the_consumer_binding_of_a_shared_file_and_logs_it_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = _app({"events": {"destination": "ev"}, "sink-in-0": {"destination": "ev", "group": "g"}})
    with caplog.at_level(logging.INFO, logger="binder"), app.test() as t:
        t.send("events", {"id": 1})
        assert [m.payload for m in t.sent("events")] == [{"id": 1}]
    assert _unused_logs(caplog) == [f"{UNUSED}: sink-in-0"]


def test_a_registered_but_inactive_function_binding_is_accepted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = _app({"other-in-0": {"destination": "x"}, "other-out-0": {"destination": "y"}}, "kept")
    app.function(lambda v: v, name="kept")
    app.function(lambda v: v, name="other")
    with caplog.at_level(logging.INFO, logger="binder"):
        _start(app)
    assert _unused_logs(caplog) == [f"{UNUSED}: other-in-0, other-out-0"]


def test_a_name_close_to_an_active_one_is_fine_when_that_function_is_registered() -> None:
    app = _app({"sinks-in-0": {"destination": "s"}, "sink-in-0": {"destination": "s"}}, "sink")
    app.consumer(lambda v: None, name="sink")
    app.consumer(lambda v: None, name="sinks")
    _start(app)


@pytest.mark.parametrize("binding", ["sinks-in-0", "snk-in-0", "Sinc_In_0"])
def test_a_close_match_of_an_active_function_is_a_typo(binding: str) -> None:
    app = _app({binding: {"destination": "s"}})
    app.consumer(lambda v: None, name="sink")
    with pytest.raises(ConfigError) as info:
        _start(app)
    assert info.value.path == f"binder.bindings.{binding}"
    assert "did you mean 'sink'?" in str(info.value)
    assert "not active and not registered" in str(info.value)


@pytest.mark.parametrize("binding", ["sinks", "sinks-in", "sink-in-x", "sinks-input-0"])
def test_names_that_are_not_function_bindings_are_always_fine(
    binding: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = _app({binding: {"destination": "s"}})
    app.consumer(lambda v: None, name="sink")
    with caplog.at_level(logging.INFO, logger="binder"):
        _start(app)
    assert _unused_logs(caplog) == []


def test_a_binding_of_an_inactive_composition_of_registered_functions_is_accepted() -> None:
    app = _app({"uppercaseenrich-in-0": {"destination": "o"}}, "uppercase")
    app.function(lambda v: v, name="uppercase")
    app.function(lambda v: v, name="enrich")
    _start(app)


def test_bindings_match_an_active_function_with_case_and_dash_underscore_aside(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = _app({"make-order-in-0": {"destination": "o"}, "MAKE_ORDER_OUT_0": {"destination": "p"}})
    app.function(lambda v: v, name="make_order")
    with caplog.at_level(logging.INFO, logger="binder"):
        _start(app)
    assert _unused_logs(caplog) == []


def test_check_bindings_sorts_unused_bindings_with_the_reason() -> None:
    registry = FunctionRegistry()
    for name in ("kept", "other"):
        registry.add(FunctionDef.inspect(lambda v: v, "function", name))
    pipelines = parse_definition("kept", registry)
    names = ["kept-in-0", "other-in-0", "ghost-out-0", "events", "kep-in-0"]
    use = check_bindings(names, pipelines, registry)
    assert use.unused == {
        "other-in-0": "function 'other' is registered but not active",
        "ghost-out-0": "function 'ghost' is not registered in this app",
    }
    assert [e.path for e in use.typos] == ["binder.bindings.kep-in-0"]


def test_check_bindings_takes_time_linear_in_a_long_name() -> None:
    registry = FunctionRegistry()
    for name in ("ab", "a", "b"):
        registry.add(FunctionDef.inspect(lambda v: v, "function", name))
    long_name = "ab" * 200_000
    use = check_bindings([f"{long_name}x-in-0", f"{long_name}-in-0"], [], registry)
    assert list(use.unused) == [f"{long_name}x-in-0", f"{long_name}-in-0"]
    assert "not registered" in use.unused[f"{long_name}x-in-0"]
    assert "registered but not active" in use.unused[f"{long_name}-in-0"]


# -- further parameters with defaults ---------------------------------------------------------


def _stamp(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "stamped": True}


def test_a_function_with_a_defaulted_parameter_gets_the_input_and_keeps_the_default() -> None:
    app = App(environ={})

    @app.function
    def double(value: int, _stamp: Any = _stamp, *, factor: int = 2) -> dict[str, Any]:
        return _stamp({"value": value * factor})

    with app.test() as t:
        t.send("double-in-0", 21)
        out = t.receive("double-out-0", timeout=2)
    assert out is not None and out.payload == {"value": 42, "stamped": True}


def test_an_async_consumer_with_defaults_and_varargs_gets_the_whole_message() -> None:
    app = App(environ={})
    seen: list[Any] = []
    done = threading.Event()

    @app.consumer
    async def audit(message: Message[dict], seen: list[Any] = seen, *args: Any, **kw: Any) -> None:
        seen.append((message.key, message.payload, args, kw))
        done.set()

    with app.test() as t:
        t.send("audit-in-0", {"id": 1}, key="k")
        assert done.wait(5)
    assert seen == [("k", {"id": 1}, (), {})]


class _Scaler:
    def __call__(self, value: float, scale: int = 3) -> float:
        return value * scale


@pytest.mark.parametrize(
    ("fn", "target"),
    [
        (lambda d, _sink=print: d, None),
        (_Scaler(), float),
        (_stamp, dict[str, Any]),
    ],
)
def test_the_input_is_the_parameter_without_a_default_and_its_hint_is_used(
    fn: Any, target: Any
) -> None:
    definition = FunctionDef.inspect(fn, "function", "f")
    assert definition.param is not None and definition.param.target.type == target


def test_the_hint_of_the_input_not_of_a_defaulted_parameter_decides_whole_message() -> None:
    def fn(payload: int, message: Message[dict] | None = None) -> None: ...

    param = FunctionDef.inspect(fn, "consumer", "f").param
    assert param is not None and not param.wants_message and param.target.type is int


@pytest.mark.parametrize(
    ("fn", "problem"),
    [
        (lambda: None, "and it has none"),
        (lambda a=1, *rest, **kw: None, "and it has none"),
        (lambda a, b: None, "but 2 have none: 'a', 'b'"),
        (lambda a, *, flag: None, "but 2 have none: 'a', 'flag'"),
    ],
)
def test_a_function_needs_exactly_one_parameter_without_a_default(fn: Any, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        FunctionDef.inspect(fn, "function", "bad")
    message = str(info.value)
    assert "function 'bad' must take exactly one positional parameter without a default" in message
    assert problem in message
    assert info.value.path == "binder.function-definition"


def test_a_keyword_only_input_is_refused_naming_it() -> None:
    def fn(*, order: dict[str, Any]) -> None: ...

    with pytest.raises(ConfigError, match="'bad': keyword-only parameter 'order' has no default"):
        FunctionDef.inspect(fn, "consumer", "bad")


# -- binder check --app -----------------------------------------------------------------------


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _check_app(tmp_path: Path, config: Path) -> subprocess.CompletedProcess[str]:
    module = f"sharedapp_{uuid.uuid4().hex[:8]}"
    _write(
        tmp_path,
        f"{module}.py",
        """
        from binder import App
        app = App()

        @app.consumer
        def sink(value):
            pass
        """,
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    command = [sys.executable, "-m", "binder", "check", str(config), "--app", f"{module}:app"]
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )


def test_check_with_app_warns_of_bindings_this_app_does_not_use(tmp_path: Path) -> None:
    config = _write(
        tmp_path,
        "application.yml",
        """
        binder:
          bindings:
            events: {destination: ev}
            sink-in-0: {destination: ev, group: g}
            audit-in-0: {destination: ev, group: a}
        """,
    )
    result = _check_app(tmp_path, config)
    assert result.returncode == 0, result.stderr
    assert "warning: binder.bindings.audit-in-0: not used by this app" in result.stderr
    assert "'audit' is not registered" in result.stderr
    assert "sink-in-0" not in result.stderr and "events" not in result.stderr
    assert "group: g" in result.stdout


def test_check_with_app_reports_a_typo_with_exit_2_and_without_app_does_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write(
        tmp_path,
        "application.yml",
        """
        binder:
          bindings:
            sinc-in-0: {destination: ev, group: g}
        """,
    )
    result = _check_app(tmp_path, config)
    assert result.returncode == 2, result.stderr
    assert "error: binder.bindings.sinc-in-0:" in result.stderr
    assert "did you mean 'sink'?" in result.stderr
    assert main(["check", str(config)]) == 0  # the file alone is valid
    assert "did you mean" not in capsys.readouterr().err


# -- two real processes, one file -------------------------------------------------------------


def _ids(consumer: LineProcess) -> set[int]:
    """The distinct ids the consumer printed (at least once delivery may repeat one)."""
    return {int(line) for line in consumer.lines if line.isdigit()}


@pytest.mark.parametrize(
    ("command", "definition"), [("produce", None), ("produce-inactive", "audit")]
)
def test_a_producer_and_a_consumer_process_share_one_file(
    tmp_path: Path, command: str, definition: str | None
) -> None:
    destination = f"events-{uuid.uuid4().hex[:8]}"
    config = _write(
        tmp_path,
        "application.yml",
        f"""
        binder:
          binders:
            disk: {{type: log, path: "{tmp_path / "log"}", fsync: never}}
          bindings:
            events: {{destination: {destination}}}
            sink-in-0: {{destination: {destination}, group: g}}
        """,
    )
    env = python_env()
    env.pop("BINDER_FUNCTION_DEFINITION", None)
    consumer_log = (tmp_path / "consumer.log").open("w+", encoding="utf-8")
    consumer = LineProcess(
        [sys.executable, str(PROCS), "consume", str(config)],
        env={**env, "BINDER_FUNCTION_DEFINITION": "sink"},
        stderr=consumer_log,
        timeout=TIMEOUT,
    )
    try:
        producer_env = (
            env if definition is None else {**env, "BINDER_FUNCTION_DEFINITION": definition}
        )
        producer = subprocess.run(
            [sys.executable, str(PROCS), command, str(config), "50"],
            env=producer_env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert producer.returncode == 0, producer.stderr
        assert producer.stdout.splitlines() == ["sent 50"]
        assert f"{UNUSED}: sink-in-0" in producer.stderr
        consumer.wait_until(lambda: len(_ids(consumer)) >= 50, "50 distinct ids")
        assert _ids(consumer) == set(range(50))
    finally:
        code = consumer.stop(signal.SIGTERM)
        consumer_log.seek(0)
        consumer_stderr = consumer_log.read()
        consumer_log.close()
    assert code == 0, consumer_stderr
    assert UNUSED not in consumer_stderr
