"""``binder check`` on RabbitMQ options: the URL's password is masked whatever the outcome;
no server needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from binder.cli import main as cli

SECRET = "hunter2-s3cret"
URL = f"amqp://app:{SECRET}@127.0.0.1:5672/shop"
MASKED = "amqp://app:***@127.0.0.1:5672/shop"


def _config(tmp_path: Path, *options: str) -> Path:
    config = tmp_path / "application.yml"
    lines = ["binder:", "  binders:", "    mq:", "      type: rabbit", *options]
    config.write_text("\n".join([*lines, ""]), encoding="utf-8")
    return config


def test_binder_check_shows_the_url_with_the_password_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, f'      url: "{URL}"', "      unroutable: drop")
    assert cli(["check", str(config)]) == 0
    said = capsys.readouterr()
    assert MASKED in said.out and "unroutable: drop" in said.out
    assert SECRET not in said.out + said.err


def test_binder_check_masks_the_password_of_the_url_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RABBITMQ_URL", URL)
    assert cli(["check", str(_config(tmp_path, "      queue-type: quorum"))]) == 0
    said = capsys.readouterr()
    assert SECRET not in said.out + said.err
    assert MASKED in said.out


def test_binder_check_refuses_a_bad_option_without_echoing_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, f'      url: "{URL}"', "      unroutable: sometimes")
    assert cli(["check", str(config)]) != 0
    said = capsys.readouterr()
    assert "unroutable" in said.out + said.err
    assert SECRET not in said.out + said.err


def test_loading_the_plugin_imports_no_client() -> None:
    code = (
        "import sys; from binder import plugins; kinds = plugins.binder_types(); "
        "RabbitOptions = plugins.option_models()['rabbit']; RabbitOptions(unroutable='drop'); "
        "print('rabbit' in kinds, 'aio_pika' in sys.modules, 'aiormq' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "False"]
