"""Options of the Kafka binder: keys, defaults, validation, secrets; no broker needed."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from binder import App, BackendError, ConfigError
from binder.cli import main as cli
from binders.kafka import KAFKA_BINDER_TYPE, KafkaOptions


def test_keys_are_kebab_case_and_unknown_keys_are_refused() -> None:
    options = KafkaOptions.model_validate(
        {"bootstrap-servers": "b:9092", "linger-ms": 5, "topic-config": {"retention.ms": "1"}}
    )
    assert (options.bootstrap_servers, options.linger_ms) == ("b:9092", 5)
    assert options.topic_config == {"retention.ms": "1"}
    with pytest.raises(ValidationError, match="bootstrap-server"):
        KafkaOptions.model_validate({"bootstrap-server": "b:9092"})


def test_bootstrap_servers_default_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9093,k2:9093")
    assert KafkaOptions().bootstrap_servers == "k1:9093,k2:9093"
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS")
    assert KafkaOptions().bootstrap_servers == "localhost:9092"


def test_defaults_keep_idempotence_off_and_commit_by_hand() -> None:
    options = KafkaOptions()
    assert options.enable_idempotence is False, "Tansu refuses InitProducerId"
    assert options.auto_create_topics is True and options.auto_add_partitions is False
    assert options.consumer()["enable_auto_commit"] is False
    assert options.consumer()["rebalance_timeout_ms"] == options.max_poll_interval_ms


def test_sasl_needs_username_and_password() -> None:
    with pytest.raises(ValidationError, match="sasl-plain-username and sasl-plain-password"):
        KafkaOptions.model_validate({"security-protocol": "SASL_PLAINTEXT"})
    options = KafkaOptions.model_validate(
        {
            "security-protocol": "SASL_SSL",
            "sasl-mechanism": "SCRAM-SHA-512",
            "sasl-plain-username": "app",
            "sasl-plain-password": "s3cret",
        }
    )
    assert "s3cret" not in repr(options)
    assert options.connection()["sasl_plain_password"] == "s3cret"


def test_a_bad_key_in_an_app_names_its_path() -> None:
    config = {"binder": {"binders": {"k": {"type": "kafka", "acks": "some"}}}}
    with pytest.raises(ConfigError, match=r"binder\.binders\.k\.acks"):
        App(config=config, environ={})


def test_numeric_settings_from_the_environment_are_read_as_numbers() -> None:
    environ = {
        "BINDER_BINDERS__K__ACKS": "1",
        "BINDER_BINDERS__K__LINGER_MS": "5",
        "BINDER_BINDERS__K__DLQ_PARTITION_COUNT": "3",
    }
    app = App(config={"binder": {"binders": {"k": {"type": "kafka"}}}}, environ=environ)
    options = app.config.binders["k"].options
    assert (options.acks, options.linger_ms, options.dlq_partition_count) == (1, 5, 3)


def test_binder_check_masks_the_password(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "application.yml"
    config.write_text(
        "binder:\n  binders:\n    k:\n      type: kafka\n"
        "      security-protocol: SASL_PLAINTEXT\n"
        "      sasl-plain-username: app\n      sasl-plain-password: hunter2\n",
        encoding="utf-8",
    )
    assert cli(["check", str(config)]) == 0
    shown = capsys.readouterr().out
    assert "hunter2" not in shown
    assert "sasl-plain-password: '***'" in shown
    assert "sasl-plain-username: app" in shown


def test_loading_the_plugin_imports_no_client() -> None:
    code = (
        "import sys; from binder import plugins; kinds = plugins.binder_types(); "
        "print('kafka' in kinds, 'aiokafka' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_an_unreachable_broker_fails_start_naming_it() -> None:
    with socket.socket() as probe:  # a loopback port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = KafkaOptions.model_validate({"bootstrap-servers": f"127.0.0.1:{port}"})
    binder = KAFKA_BINDER_TYPE.create("k", options)

    async def start() -> None:
        try:
            await binder.start()
        finally:
            await binder.close()

    with pytest.raises(BackendError, match=f"kafka at 127.0.0.1:{port}: connect failed"):
        asyncio.run(start())
