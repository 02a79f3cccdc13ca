"""Options of the ``rabbit`` binder (the keys under ``binder.binders.<name>`` with
``type: rabbit``), and the queue settings a binding may override.

Pydantic only: aio-pika is not imported here, so configuration can be validated
(``binder check``) without the ``rabbit`` extra installed.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field

from binder.config import Duration as CoreDuration
from binder.spi import BinderOptions

__all__ = ["DEFAULT_URL", "Duration", "QueueOptions", "RabbitOptions"]

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"

Duration = Annotated[CoreDuration, Field(gt=0)]
"""Seconds, written as ``500ms``, ``30s``, ``2m``, ``1h`` or a number of seconds."""


def _url_default() -> str:
    return os.environ.get("RABBITMQ_URL") or DEFAULT_URL


class QueueOptions(BinderOptions):
    """How the binder declares a group's queues. Binder-wide under the binder's keys, and per
    binding under its ``consumer:`` (the queues it reads) or ``producer:`` (the queues of its
    ``required-groups``); a binding's value wins. A queue that exists already is used as it is
    (a warning names what differs): RabbitMQ cannot change a queue's arguments."""

    queue_type: Literal["classic", "quorum"] | None = None
    """``x-queue-type`` of group queues (``None``: classic). Quorum queues are replicated and
    count deliveries (``x-delivery-count``), so a message that kills its consumer is
    dead-lettered after ``max-attempts``; a classic queue only flags a redelivery. Anonymous
    queues are always classic (quorum queues cannot be exclusive)."""
    message_ttl: Duration | None = None
    """``x-message-ttl``: a message waiting longer in a group queue is dropped by the broker."""
    max_length: int | None = Field(None, ge=1)
    """``x-max-length``: past this many ready messages the broker drops the oldest."""
    prefetch: int | None = Field(None, ge=1)
    """Unacknowledged messages the broker hands a consumer (``basic.qos``) per queue;
    ``None``: twice what one fetch returns, times ``concurrency`` (1,000 by default; at
    most 65,535)."""


class RabbitOptions(QueueOptions):
    """One RabbitMQ server: connection, publishing, partitions, and queue defaults."""

    url: str = Field(default_factory=_url_default)
    """``amqp://user:password@host:port/vhost`` (``amqps://`` for TLS); default
    ``$RABBITMQ_URL``, else ``amqp://guest:guest@localhost:5672/``. The password is never
    logged."""
    prefix: str = ""
    """Put in front of the name of every exchange and queue the binder declares (as Spring's
    RabbitMQ binder's ``prefix``): destination ``d`` is the exchange ``<prefix>d``, its group
    ``g`` the queue ``<prefix>d.g``; messages still carry ``d`` as their destination."""
    connect_timeout: Duration = 10.0
    """Longest wait to connect (and for each topology call)."""
    heartbeat: int = Field(30, ge=0)
    """AMQP heartbeat in seconds (``0``: none): a silent dead connection is noticed in about
    twice this."""
    publish_timeout: Duration = 10.0
    """Longest a send waits for the broker's confirm; then it fails (never hangs)."""
    unroutable: Literal["fail", "drop"] = "fail"
    """``fail``: a message no queue is bound to receive fails its send, naming the exchange
    and routing key (published ``mandatory``). ``drop``: such messages are dropped by the
    broker, for fan-out events nobody has to receive."""
    default_partition_count: int = Field(1, ge=1)
    """Partitions of a destination made without a count (a consumer or ``app.send`` first)."""
    auto_add_partitions: bool = False
    """Let a binding asking for more partitions than a destination has add partition queues
    (keys then move to other partitions); off, that is a start-up error."""
