"""Provisioning: topics created, grown (never shrunk) and deleted; required groups created.

Topic existence is read from the metadata of every topic, never by asking for
one topic by name: a broker with ``auto.create.topics.enable`` (Tansu too)
creates a topic it is asked about, which would defeat ``auto-create-topics: false``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import CommitFailedError, IncompatibleBrokerVersion, KafkaError, for_code
from aiokafka.protocol.admin import DeleteGroupsRequest

from binder.errors import BackendError, ConfigError
from binders.kafka.errors import backend_errors, connect_errors
from binders.kafka.options import KafkaOptions

__all__ = ["Provisioner"]

log = logging.getLogger("binder.kafka.admin")

_TOPIC_EXISTS = 36
_UNKNOWN_TOPIC = 3


class Provisioner:
    """One admin connection for a binder; remembers the partition count of topics it saw."""

    def __init__(self, name: str, options: KafkaOptions, connection: Mapping[str, Any]) -> None:
        self._name = name
        self._options = options
        self._connection = connection
        self._servers = options.bootstrap_servers
        self._admin = AIOKafkaAdminClient(**connection)
        self._known: dict[str, int] = {}

    async def start(self) -> None:
        """Connect; BackendError naming the broker when it cannot be reached."""
        with connect_errors(self._servers):
            await self._admin.start()

    async def close(self) -> None:
        await self._admin.close()

    # -- topics -----------------------------------------------------------------------------

    def known(self) -> Mapping[str, int]:
        """Partition counts of the topics this binder has provisioned or looked up."""
        return self._known

    async def ensure_topic(
        self,
        topic: str,
        partitions: int,
        create_with: int = 0,
        configs: Mapping[str, str] | None = None,
    ) -> int:
        """Make ``topic`` exist with at least ``partitions``; its partition count.

        A missing topic is created with ``max(partitions, create_with)`` and the binder's
        ``topic-config``, ``configs`` (an internal topic's own) over it. ConfigError
        when it is missing and ``auto-create-topics`` is off, or has fewer than
        ``partitions`` and ``auto-add-partitions`` is off.
        """
        known = self._known.get(topic)
        if known is not None and known >= partitions:
            return known
        current = await self.partition_count(topic)
        if current is None:
            current = await self._create(topic, max(partitions, create_with), configs or {})
        if current < partitions:
            current = await self._grow(topic, current, partitions)
        self._known[topic] = current
        return current

    async def partition_count(self, topic: str) -> int | None:
        """Partitions of ``topic``, ``None`` when it does not exist (it is not created)."""
        with backend_errors(self._servers, "read metadata"):
            described = await self._admin.describe_topics()
        for entry in described:
            if entry["topic"] == topic and not entry["error_code"]:
                return len(entry["partitions"])
        return None

    async def _create(self, topic: str, partitions: int, configs: Mapping[str, str]) -> int:
        if not self._options.auto_create_topics:
            raise ConfigError(
                f"topic {topic!r} does not exist on kafka at {self._servers} "
                "(create it, or set auto-create-topics: true)",
                path=self._path("auto-create-topics"),
                value=False,
            )
        new = NewTopic(
            topic,
            partitions,
            self._options.replication_factor,
            topic_configs={**self._options.topic_config, **configs},
        )
        with backend_errors(self._servers, f"create topic {topic!r}"):
            response = await self._admin.create_topics([new])
        code, message = _first_error(response.topic_errors)
        if code == _TOPIC_EXISTS:  # created meanwhile by someone else
            return await self.partition_count(topic) or partitions
        if code:
            raise BackendError(
                f"kafka at {self._servers}: create topic {topic!r} failed: "
                f"{for_code(code).__name__}: {message or ''}".rstrip(": ")
            )
        log.info("created topic %s with %d partition(s)", topic, partitions)
        return partitions

    async def _grow(self, topic: str, current: int, partitions: int) -> int:
        if not self._options.auto_add_partitions:
            raise ConfigError(
                f"topic {topic!r} has {current} partition(s), {partitions} wanted "
                "(set auto-add-partitions: true to grow it; topics never shrink)",
                path=self._path("auto-add-partitions"),
                value=False,
            )
        action = f"grow topic {topic!r} from {current} to {partitions} partitions"
        with backend_errors(self._servers, action):
            try:
                await self._admin.create_partitions({topic: NewPartitions(partitions)})
            except IncompatibleBrokerVersion:
                raise BackendError(
                    f"kafka at {self._servers}: {action} failed: "
                    "the broker does not support CreatePartitions (Tansu does not)"
                ) from None
        log.info("grew topic %s from %d to %d partitions", topic, current, partitions)
        return partitions

    async def delete(self, topic: str, groups: Sequence[str]) -> None:
        """Delete ``topic`` and ``groups``; what does not exist is skipped."""
        self._known.pop(topic, None)
        with backend_errors(self._servers, f"delete topic {topic!r}"):
            response = await self._admin.delete_topics([topic])
        code, _ = _first_error(response.topic_error_codes)
        if code not in (0, _UNKNOWN_TOPIC):
            raise BackendError(
                f"kafka at {self._servers}: delete topic {topic!r} failed: "
                f"{for_code(code).__name__}"
            )
        for group in groups:
            await self._delete_group(group)

    async def _delete_group(self, group: str) -> None:
        """Best effort: a group that is unknown, or still has members, is left alone."""
        try:
            coordinator = await self._admin.find_coordinator(group)
            # AIOKafkaAdminClient has no public call for DeleteGroups (API 42).
            await self._admin._send_request(_delete_groups([group]), coordinator)
        except KafkaError as exc:
            log.debug("could not delete group %s: %s", group, exc)

    # -- groups -----------------------------------------------------------------------------

    async def ensure_groups(self, topic: str, groups: Sequence[str], partitions: int) -> None:
        """Create ``groups`` on ``topic`` now: a group without any committed offset
        gets the current end of each partition, so it keeps all that is sent from now on,
        whichever ``start-offset`` its consumers later use."""
        for group in groups:
            with backend_errors(self._servers, f"create group {group!r} on {topic!r}"):
                await self._ensure_group(topic, group, partitions)

    async def _ensure_group(self, topic: str, group: str, partitions: int) -> None:
        client = AIOKafkaConsumer(group_id=group, enable_auto_commit=False, **self._connection)
        await client.start()
        try:
            assigned = [TopicPartition(topic, p) for p in range(partitions)]
            client.assign(assigned)
            committed = [tp for tp in assigned if await client.committed(tp) is not None]
            if committed:
                return
            ends = await client.end_offsets(assigned)
            try:
                await client.commit(ends)
            except CommitFailedError:  # members are already at work: the group exists
                log.debug("group %s on %s is active; not committing", group, topic)
        finally:
            await client.stop()

    def _path(self, key: str) -> str:
        return f"binder.binders.{self._name}.{key}"


def _first_error(entries: Sequence[Sequence[Any]]) -> tuple[int, str | None]:
    """(error code, message) of a one-topic admin response."""
    for entry in entries:
        return int(entry[1]), (str(entry[2]) if len(entry) > 2 and entry[2] else None)
    return 0, None


def _delete_groups(groups: list[str]) -> Any:
    """A DeleteGroups request: aiokafka before 0.13 has a class per version, later one class."""
    if isinstance(DeleteGroupsRequest, list):
        return DeleteGroupsRequest[0](groups)
    return DeleteGroupsRequest(groups)
