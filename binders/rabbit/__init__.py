"""The RabbitMQ binder (aio-pika), registered through the ``binder`` entry-point group.

Loading this plugin imports no client: aio-pika is imported when the first ``type: rabbit``
binder is created, so apps without the ``rabbit`` extra still load every plugin (and
``binder check`` validates RabbitMQ options without it).
"""

from __future__ import annotations

from collections.abc import Sequence

from binder.spi import BinderType, hookimpl
from binders.rabbit.binder import CAPABILITIES, RABBIT_BINDER_TYPE, RabbitBinder
from binders.rabbit.options import QueueOptions, RabbitOptions

__all__ = [
    "CAPABILITIES",
    "RABBIT_BINDER_TYPE",
    "QueueOptions",
    "RabbitBinder",
    "RabbitOptions",
    "binder_add_binder_types",
]


@hookimpl
def binder_add_binder_types() -> Sequence[BinderType]:
    return [RABBIT_BINDER_TYPE]
