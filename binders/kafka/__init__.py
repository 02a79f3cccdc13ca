"""The Kafka binder (aiokafka), registered through the ``binder`` entry-point group.

Loading this plugin imports no client: aiokafka is imported when the first
``type: kafka`` binder is created, so apps without the ``kafka`` extra still
load every plugin (and ``binder check`` validates Kafka options without it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel

from binder.errors import ConfigError
from binder.spi import BinderType, Capabilities, hookimpl
from binders.kafka.options import KafkaOptions

if TYPE_CHECKING:
    from binders.kafka.binder import KafkaBinder

__all__ = ["CAPABILITIES", "KAFKA_BINDER_TYPE", "KafkaOptions", "binder_add_binder_types"]

CAPABILITIES = Capabilities(
    consumer_groups=True,
    native_partitions=True,
    order_per_key=True,
    persistence=True,
    replay_to_new_groups=True,
    redelivery_on_failure=True,
    anonymous_consumers=True,
    offsets=True,
    max_payload_bytes=1_000_000,
)
"""``max_payload_bytes``: a broker's default ``message.max.bytes`` (1 MiB + 12) bounds a
record batch, so payload, key, headers and framing together stay under 1 MiB."""


@dataclass(frozen=True)
class _KafkaBinderType:
    name: str = "kafka"
    capabilities: Capabilities = CAPABILITIES
    options: type[BaseModel] = KafkaOptions

    def create(self, name: str, options: BaseModel) -> KafkaBinder:
        assert isinstance(options, KafkaOptions)
        try:
            from binders.kafka.binder import KafkaBinder
        except ImportError as exc:
            raise ConfigError(
                f"the kafka binder needs aiokafka ({exc}): pip install 'streambinder[kafka]'",
                path=f"binder.binders.{name}.type",
                value="kafka",
            ) from None
        return KafkaBinder(name, options, self.capabilities)


KAFKA_BINDER_TYPE = _KafkaBinderType()


@hookimpl
def binder_add_binder_types() -> Sequence[BinderType]:
    return [KAFKA_BINDER_TYPE]
