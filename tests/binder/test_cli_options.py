"""The ``binder`` command's options and what ``check`` refuses as ``App.start`` does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import binder
from binder.cli import main, version

ROOT = Path(__file__).resolve().parents[2]

TINY_APP = """
from binder import App
app = App()

@app.function
def echo(value):
    return value
"""

FAILING_APP = """
from binder import App, plugins
from binder.errors import BackendError

app = App()


@app.consumer
def sink(payload):
    pass


class Failing:
    def __init__(self, inner):
        self._inner = inner

    async def fetch(self):
        raise BackendError("fetch refused (injected)")

    def __getattr__(self, name):
        return getattr(self._inner, name)


class Wrapped:
    def __init__(self, binder):
        self._binder = binder
        self.name, self.capabilities = binder.name, binder.capabilities

    def __getattr__(self, attr):
        return getattr(self._binder, attr)

    async def consumer(self, spec, listener):
        return Failing(await self._binder.consumer(spec, listener))


kind = plugins.binder_types()["log"]
app.use_binder_factory(lambda name, entry: Wrapped(kind.create(name, entry.options)))
"""


def _yaml(tmp_path: Path, text: str, name: str = "application.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _binder(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    return subprocess.run(
        [sys.executable, "-m", "binder", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _last_log_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if " binder." in line]
    return lines[-1] if lines else ""


# --- --version, --log-level, targets -----------------------------------------------------


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    done = _binder(tmp_path, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"binder {version()}"
    assert version() in (binder.__version__, done.stdout.split()[-1])


@pytest.mark.parametrize("level", ["debug", "Info"])
def test_log_level_is_case_insensitive(tmp_path: Path, level: str) -> None:
    (tmp_path / "tinyapp.py").write_text(TINY_APP, encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "binder", "run", "tinyapp:app", "--log-level", level],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "running:" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=20)
    assert proc.returncode == 0, rest
    assert "Unknown level" not in rest


def test_an_unknown_log_level_is_a_clear_error_with_exit_2(tmp_path: Path) -> None:
    done = _binder(tmp_path, "run", "tinyapp:app", "--log-level", "verbose")
    assert done.returncode == 2
    assert "unknown level 'verbose'" in done.stderr
    assert "debug" in done.stderr and "Traceback" not in done.stderr


def test_run_names_the_missing_attribute(tmp_path: Path) -> None:
    (tmp_path / "tinyapp.py").write_text(TINY_APP, encoding="utf-8")
    done = _binder(tmp_path, "run", "tinyapp:nope", "--log-level", "WARNING")
    assert done.returncode != 0
    assert "module 'tinyapp' has no attribute 'nope'" in done.stderr


def test_run_logs_stopped_last(tmp_path: Path) -> None:
    (tmp_path / "tinyapp.py").write_text(TINY_APP, encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "binder", "run", "tinyapp:app", "--log-format", "text"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "running:" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=20)
    assert proc.returncode == 0, rest
    assert _last_log_line(rest).endswith(": stopped"), rest


def test_run_logs_stopped_last_when_a_failed_binding_exits_with_1(tmp_path: Path) -> None:
    (tmp_path / "failing_app.py").write_text(FAILING_APP, encoding="utf-8")
    config = _yaml(
        tmp_path,
        """
        binder:
          on-binding-failure: exit
          bindings:
            sink-in-0: {destination: d, group: g}
        """,
    )
    done = _binder(tmp_path, "run", "failing_app:app", "--config", str(config))
    assert done.returncode == 1, done.stderr
    assert "on-binding-failure: exit" in done.stderr
    assert _last_log_line(done.stderr).endswith(": stopped"), done.stderr


# --- check runs start-up's validation ---------------------------------------------------


def test_check_refuses_an_unknown_content_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _yaml(
        tmp_path,
        """
        binder:
          bindings:
            orders-in-0: {destination: orders, content-type: application/x-nope}
        """,
    )
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "binder.bindings.orders-in-0.content-type" in err
    assert "unknown content type" in err and "application/x-nope" in err


def test_check_accepts_content_types_with_parameters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _yaml(
        tmp_path,
        """
        binder:
          bindings:
            orders-in-0: {destination: orders, content-type: "application/json;charset=UTF-8"}
            notes-in-0: {destination: notes, content-type: text/plain}
        """,
    )
    assert main(["check", str(path)]) == 0, capsys.readouterr().err


def test_check_with_app_refuses_bindings_of_misspelt_functions(tmp_path: Path) -> None:
    (tmp_path / "tinyapp.py").write_text(TINY_APP, encoding="utf-8")
    config = _yaml(
        tmp_path,
        """
        binder:
          bindings:
            ecko-in-0: {destination: in}
        """,
    )
    done = _binder(tmp_path, "check", str(config), "--app", "tinyapp:app")
    assert done.returncode == 2, done.stderr
    assert "did you mean 'echo'" in done.stderr


def test_check_with_app_warns_of_unknown_retryable_exceptions(tmp_path: Path) -> None:
    (tmp_path / "tinyapp.py").write_text(TINY_APP, encoding="utf-8")
    config = _yaml(
        tmp_path,
        """
        binder:
          bindings:
            echo-in-0:
              consumer:
                retryable-exceptions: {ValueError: false, NoSuchError: true}
        """,
    )
    done = _binder(tmp_path, "check", str(config), "--app", "tinyapp:app")
    assert done.returncode == 0, done.stderr
    path = "binder.bindings.echo-in-0.consumer.retryable-exceptions"
    assert f"warning: {path}.NoSuchError" in done.stderr
    assert "ValueError" not in done.stderr
