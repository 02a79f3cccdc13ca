"""Options of the Redis binder: durations, the timing rule, ``binder check``; no server needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from binder import App, ConfigError
from binder.cli import main as cli
from binders.redis import RedisOptions


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (" 250 ms ", 0.25),
        (7, 7.0),
        (0.2, 0.2),
        ("3", 3.0),
    ],
    ids=repr,
)
def test_durations_are_read_with_their_units(written: object, seconds: float) -> None:
    options = RedisOptions.model_validate({"min-idle": written, "claim-interval": written})
    assert options.min_idle == pytest.approx(seconds)
    assert options.claim_interval == pytest.approx(seconds)


@pytest.mark.parametrize("written", ["5 minutes", "-1s", "1w", "ms", "0", 0, "", "s30"])
def test_what_is_not_a_positive_duration_is_refused_naming_the_key(written: object) -> None:
    with pytest.raises(ValidationError, match="min-idle"):
        RedisOptions.model_validate({"min-idle": written})


def test_block_ms_must_be_below_the_socket_timeout_naming_both_keys() -> None:
    with pytest.raises(ValidationError) as refused:
        RedisOptions.model_validate({"block-ms": 10_000})  # socket-timeout is 10 s
    assert "block-ms" in str(refused.value) and "socket-timeout" in str(refused.value)
    with pytest.raises(ValidationError, match=r"block-ms.*socket-timeout"):
        RedisOptions.model_validate({"block-ms": 2500, "socket-timeout": "2s"})
    accepted = RedisOptions.model_validate({"block-ms": 1999, "socket-timeout": "2s"})
    assert (accepted.block_ms, accepted.socket_timeout) == (1999, 2.0)


def test_an_app_refuses_the_timing_naming_the_binder() -> None:
    config = {"binder": {"binders": {"r": {"type": "redis", "block-ms": 12_000}}}}
    with pytest.raises(ConfigError, match=r"binder\.binders\.r.*block-ms.*socket-timeout"):
        App(config=config, environ={})


def test_binder_check_reports_the_timing_and_masks_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "application.yml"
    lines = ["binder:", "  binders:", "    r:", "      type: redis"]
    lines.append('      url: "redis://app:hunter2@127.0.0.1:6379/0"')
    config.write_text("\n".join([*lines, "      block-ms: 10000", ""]), encoding="utf-8")
    assert cli(["check", str(config)]) != 0
    said = capsys.readouterr()
    assert "block-ms" in said.err and "socket-timeout" in said.err
    assert "hunter2" not in said.out + said.err

    config.write_text("\n".join([*lines, "      min-idle: 2m", ""]), encoding="utf-8")
    assert cli(["check", str(config)]) == 0
    shown = capsys.readouterr().out
    assert "min-idle: 120.0" in shown
    assert "redis://app:***@127.0.0.1:6379/0" in shown and "hunter2" not in shown


def test_loading_the_plugin_imports_no_client() -> None:
    code = (
        "import sys; from binder import plugins; kinds = plugins.binder_types(); "
        "RedisOptions = plugins.option_models()['redis']; RedisOptions(min_idle='2s'); "
        "print('redis' in kinds, 'redis' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]
