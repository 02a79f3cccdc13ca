"""The Kafka binder (aiokafka), registered through the ``binder`` entry-point group.

Loading this plugin imports no client: aiokafka is imported when the first
``type: kafka`` binder is created, so apps without the ``kafka`` extra still
load every plugin (and ``binder check`` validates Kafka options without it).
"""

from __future__ import annotations

from collections.abc import Sequence

from binder.spi import BinderType, hookimpl
from binders.kafka.binder import CAPABILITIES, KAFKA_BINDER_TYPE, KafkaBinder
from binders.kafka.options import KafkaOptions

__all__ = [
    "CAPABILITIES",
    "KAFKA_BINDER_TYPE",
    "KafkaBinder",
    "KafkaOptions",
    "binder_add_binder_types",
]


@hookimpl
def binder_add_binder_types() -> Sequence[BinderType]:
    return [KAFKA_BINDER_TYPE]
