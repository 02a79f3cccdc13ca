"""The ``log`` binder: adapts the embedded engine to the binder SPI."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from binder.errors import ConfigError
from binder.spi import Capabilities, ConsumerSpec, ProducerSpec, RebalanceListener
from binders.log.consumer import LogConsumer
from binders.log.engine import Broker, memory_logs
from binders.log.options import LogOptions
from binders.log.producer import LogProducer

__all__ = ["CAPABILITIES", "LOG_BINDER_TYPE", "LogBinder"]

CAPABILITIES = Capabilities(
    consumer_groups=True,
    native_partitions=True,
    order_per_key=True,
    persistence=False,
    replay_to_new_groups=True,
    redelivery_on_failure=True,
    anonymous_consumers=True,
    offsets=True,
)


class LogBinder:
    """Topics and groups in a process-wide :class:`Broker` named by ``options.broker``."""

    capabilities = CAPABILITIES

    def __init__(self, name: str, options: LogOptions) -> None:
        self.name = name
        self.options = options
        self._broker: Broker | None = None

    @property
    def broker(self) -> Broker:
        if self._broker is None or self._broker.closed:
            limit = self.options.max_records_per_partition
            self._broker = Broker.named(
                self.options.broker,
                lambda: Broker(self.options.broker, open_log=memory_logs(limit)),
            )
        return self._broker

    async def start(self) -> None:
        if self.options.path is not None:
            raise ConfigError(
                "durable storage (path) is not available in this release; remove path to run "
                "in memory",
                path=f"binder.binders.{self.name}.path",
                value=self.options.path,
            )
        _ = self.broker

    async def provision(
        self, destination: str, partition_count: int, required_groups: Sequence[str] = ()
    ) -> None:
        broker = self.broker
        broker.create_topic(destination, max(partition_count, self.options.default_partition_count))
        for group in required_groups:
            broker.register_group(destination, group)

    async def producer(self, spec: ProducerSpec) -> LogProducer:
        await self.provision(spec.destination, spec.partition_count)
        return LogProducer(self.broker, spec.destination)

    async def consumer(self, spec: ConsumerSpec, listener: RebalanceListener) -> LogConsumer:
        broker = self.broker
        broker.create_topic(spec.destination, self.options.default_partition_count)
        static = (spec.instance_index, spec.instance_count) if spec.instance_count > 1 else None
        member = broker.join(
            spec.destination,
            spec.group,
            start=spec.start,
            static=static,
            on_revoke=listener.on_revoked,
            on_assign=listener.on_assigned,
        )
        return LogConsumer(member, spec)

    async def delete(self, destination: str, groups: Sequence[str] = ()) -> None:
        self.broker.delete_topic(destination)

    async def close(self) -> None:
        self._broker = None


@dataclass(frozen=True)
class _LogBinderType:
    name: str = "log"
    capabilities: Capabilities = CAPABILITIES
    options: type[BaseModel] = LogOptions

    def create(self, name: str, options: BaseModel) -> LogBinder:
        assert isinstance(options, LogOptions)
        return LogBinder(name, options)


LOG_BINDER_TYPE = _LogBinderType()
