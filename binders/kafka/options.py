"""Options of the ``kafka`` binder (the keys under ``binder.binders.<name>`` with ``type: kafka``).

Pydantic only: the client library is not imported here, so configuration can be
validated (``binder check``) without the ``kafka`` extra installed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Literal, Self

from pydantic import BeforeValidator, Field, SecretStr, model_validator

from binder.spi import BinderOptions

__all__ = ["ASSIGNORS", "DEFAULT_ASSIGNORS", "DEFAULT_BOOTSTRAP_SERVERS", "KafkaOptions"]

DEFAULT_BOOTSTRAP_SERVERS = "localhost:9092"

ASSIGNORS = ("range", "roundrobin", "sticky")
"""The group assignment protocols aiokafka implements (the eager ones: it has no
``cooperative-sticky``)."""

DEFAULT_ASSIGNORS = ("range", "roundrobin")
"""Offered by default, preferred first: a default librdkafka member offers
``range,roundrobin`` and a default Java member ``[range, cooperative-sticky]``, so each
shares a protocol with a binder member and they can be in one group."""


def _number_if_numeric(value: object) -> object:
    """``"1"`` → ``1`` (environment variables are text); anything else as it is."""
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


def _assignor_names(value: object) -> object:
    """``"range, roundrobin"`` (Kafka's own comma-separated form) → a list; names checked:
    an unknown or repeated one is refused with the names aiokafka has."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        return value
    for name in value:
        if name not in ASSIGNORS:
            hint = (
                " (aiokafka has no cooperative rebalancing)" if "cooperative" in str(name) else ""
            )
            raise ValueError(f"unknown assignor {name!r}{hint}: use {', '.join(ASSIGNORS)}")
    if len(set(value)) < len(value):
        raise ValueError(f"an assignor is listed twice: {', '.join(map(str, value))}")
    return list(value)


def _bootstrap_default() -> str:
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP_SERVERS


class KafkaOptions(BinderOptions):
    """One Kafka cluster: connection, provisioning, producer and consumer settings."""

    # -- connection -------------------------------------------------------------------------
    bootstrap_servers: str = Field(default_factory=_bootstrap_default)
    """``host:port[,host:port...]``; default ``$KAFKA_BOOTSTRAP_SERVERS``, else localhost:9092."""
    client_id: str = "streambinder"
    request_timeout_ms: int = Field(40_000, ge=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    """Never logged; ``binder check`` prints it masked."""
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: SecretStr | None = None
    """Password of ``ssl-keyfile``, if it is encrypted."""
    ssl_check_hostname: bool = True

    # -- provisioning -----------------------------------------------------------------------
    auto_create_topics: bool = True
    """Create missing topics; ``false`` makes a missing topic a start-up error."""
    auto_add_partitions: bool = False
    """Grow a topic that has fewer partitions than a binding asks for (never shrinks)."""
    replication_factor: int = Field(1, ge=1)
    """Replicas of each partition of a created topic."""
    topic_config: dict[str, str] = Field(default_factory=dict)
    """Topic configs for created topics, e.g. ``{retention.ms: "86400000"}``."""
    default_partition_count: int = Field(1, ge=1)
    """The fewest partitions of a topic the binder creates (for a consumer, an ad-hoc
    ``app.send``, or a binding asking for fewer)."""
    dlq_partition_count: Annotated[int, Field(ge=1)] | Literal["same"] = "same"
    """Partitions of a dead-letter topic the binder creates (the dead-letter destination of
    an input binding, whatever its name): ``same`` as the topic whose messages it receives,
    so each dead letter keeps its original partition (as Spring Cloud Stream does), or a
    number (1: one partition). An existing topic is used as it is."""

    # -- producer ---------------------------------------------------------------------------
    acks: Annotated[Literal[0, 1, -1, "all"], BeforeValidator(_number_if_numeric)] = "all"
    """``0``, ``1``, ``-1`` or ``all``; from an environment variable ``"1"`` is ``1``."""
    linger_ms: int = Field(0, ge=0)
    batch_size: int = Field(16_384, ge=1)
    """Most bytes per partition batch."""
    max_request_size: int = Field(1_048_576, ge=1)
    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    enable_idempotence: bool = False
    """Needs InitProducerId, which some Kafka-compatible brokers (Tansu) refuse."""

    # -- consumer ---------------------------------------------------------------------------
    session_timeout_ms: int = Field(10_000, ge=1)
    heartbeat_interval_ms: int = Field(3_000, ge=1)
    max_poll_interval_ms: int = Field(300_000, ge=1)
    """Longest a fetched chunk may take to process before the member is considered
    failed; also the rebalance timeout (the time members get to finish in-flight work)."""
    group_instance_id: str | None = None
    """Static membership: each consumer joins as ``<group-instance-id>-<destination>``."""
    fetch_max_wait_ms: int = Field(500, ge=0)
    partition_assignment_strategy: Annotated[
        list[Literal["range", "roundrobin", "sticky"]],
        BeforeValidator(_assignor_names),
        Field(min_length=1),
    ] = Field(default_factory=lambda: list(DEFAULT_ASSIGNORS))
    """Assignment protocols this member offers, preferred first (``range``, ``roundrobin``,
    ``sticky``); a group forms on one that every member offers (Kafka chooses by the
    members' preferences). Default ``[range, roundrobin]``, so default Java and librdkafka
    members can share a group with it."""

    @model_validator(mode="after")
    def _check_security(self) -> Self:
        if self.security_protocol.startswith("SASL") and (
            self.sasl_plain_username is None or self.sasl_plain_password is None
        ):
            raise ValueError(
                f"security-protocol {self.security_protocol} needs sasl-plain-username "
                "and sasl-plain-password"
            )
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat-interval-ms must be lower than session-timeout-ms")
        return self

    def connection(self) -> Mapping[str, object]:
        """Keyword arguments every client takes (security included; no SSL context yet)."""
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
            "security_protocol": self.security_protocol,
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_plain_username,
            "sasl_plain_password": (
                self.sasl_plain_password.get_secret_value() if self.sasl_plain_password else None
            ),
        }

    def producer(self) -> Mapping[str, object]:
        """Keyword arguments of the producer, beyond :meth:`connection`."""
        return {
            "acks": self.acks,
            "linger_ms": self.linger_ms,
            "max_batch_size": self.batch_size,
            "max_request_size": self.max_request_size,
            "compression_type": self.compression_type,
            "enable_idempotence": self.enable_idempotence,
        }

    def consumer(self) -> Mapping[str, object]:
        """Keyword arguments of a consumer, beyond :meth:`connection`."""
        return {
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "max_poll_interval_ms": self.max_poll_interval_ms,
            "rebalance_timeout_ms": self.max_poll_interval_ms,
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
            "enable_auto_commit": False,
        }
