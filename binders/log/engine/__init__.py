"""The embedded log engine, below the binder layer of :mod:`binders.log`.

The binder layer (``binders/log/*.py``) has the same modules as every other binder;
this package is the backend it drives, as aiokafka is Kafka's:

- :mod:`~binders.log.engine.broker`: topics, partitions, groups, commits (:class:`Broker`);
- :mod:`~binders.log.engine.member`, :mod:`~binders.log.engine.membership`: group members,
  in one process and across processes;
- :mod:`~binders.log.engine.storage`: the storage protocols and the in-memory logs;
- :mod:`~binders.log.engine.durable`, :mod:`~binders.log.engine.disk`,
  :mod:`~binders.log.engine.segment`, :mod:`~binders.log.engine.records`,
  :mod:`~binders.log.engine.recovery`, :mod:`~binders.log.engine.offsets`,
  :mod:`~binders.log.engine.sync`: the durable log on disk;
- :mod:`~binders.log.engine.tools`: ``binder log inspect|verify``.
"""

from __future__ import annotations

from binders.log.engine.broker import (
    Broker,
    Entry,
    LogFactory,
    Member,
    MemoryOffsetStore,
    MemoryPartitionLog,
    OffsetStore,
    PartitionLog,
    Start,
    Storage,
    StoredRecord,
    Topic,
    memory_logs,
)

__all__ = [
    "Broker",
    "Entry",
    "LogFactory",
    "Member",
    "MemoryOffsetStore",
    "MemoryPartitionLog",
    "OffsetStore",
    "PartitionLog",
    "Start",
    "Storage",
    "StoredRecord",
    "Topic",
    "memory_logs",
]
