"""The ``binder`` command: check and run, also as ``python -m binder``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from binder.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "application.yml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_check_prints_the_effective_config_with_env_and_masked_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _yaml(
        tmp_path,
        """
        binder:
          bindings:
            orders-in-0: {destination: orders, group: billing}
            alerts: {destination: "amqp://guest:s3cret@localhost/"}
    """,
    )
    monkeypatch.setenv("BINDER_BINDINGS__ORDERS_IN_0__CONSUMER__MAX_ATTEMPTS", "7")
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "max-attempts: 7" in out
    assert "group: billing" in out
    assert "s3cret" not in out and "***" in out


def test_check_fails_with_the_key_path_and_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _yaml(
        tmp_path,
        """
        binder:
          bindings:
            orders-in-0: {destination: orders, consumer: {max-atempts: 3}}
    """,
    )
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "binder.bindings.orders-in-0.consumer.max-atempts" in err
    assert "did you mean" in err


def test_check_reports_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path / "nope.yml")]) == 2
    assert "nope.yml" in capsys.readouterr().err


def test_python_dash_m_binder_runs_an_app_until_sigterm(tmp_path: Path) -> None:
    (tmp_path / "tinyapp.py").write_text(
        textwrap.dedent("""
        from binder import App
        app = App()

        @app.function
        def echo(value):
            return value
    """),
        encoding="utf-8",
    )
    config = _yaml(
        tmp_path,
        """
        binder:
          bindings:
            echo-in-0: {destination: in, group: g}
    """,
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "binder", "run", "tinyapp:app", "--config", str(config)],
        cwd=tmp_path,
        env=env,
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
    assert "stopping: draining" in rest


def test_run_rejects_a_target_that_is_not_an_app(tmp_path: Path) -> None:
    (tmp_path / "notapp.py").write_text("app = 42\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    result = subprocess.run(
        [sys.executable, "-m", "binder", "run", "notapp:app"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "is not a binder.App" in result.stderr
