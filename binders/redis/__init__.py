"""The Redis Streams binder (redis-py's asyncio client), registered through the ``binder``
entry-point group.

Loading this plugin imports no client: redis-py is imported when the first ``type: redis``
binder is created, so apps without the ``redis`` extra still load every plugin (and
``binder check`` validates Redis options without it).
"""

from __future__ import annotations

from collections.abc import Sequence

from binder.spi import BinderType, hookimpl
from binders.redis.binder import CAPABILITIES, REDIS_BINDER_TYPE, RedisBinder
from binders.redis.options import RedisOptions

__all__ = [
    "CAPABILITIES",
    "REDIS_BINDER_TYPE",
    "RedisBinder",
    "RedisOptions",
    "binder_add_binder_types",
]


@hookimpl
def binder_add_binder_types() -> Sequence[BinderType]:
    return [REDIS_BINDER_TYPE]
