"""The exchanges and queues the binder declares, as the broker (a plain aio-pika client,
``rabbitmqctl``) sees them."""

from __future__ import annotations

from typing import Any

import aio_pika
import pytest
from aiormq.exceptions import ChannelNotFoundEntity

from binder.testing.conformance.support import Conformance, run
from binders.rabbit.testing import queues_info

PARTITIONS = 4


async def _existing(url: str, queues: list[str]) -> set[str]:
    """Which of ``queues`` exist: a passive declare of each, on a channel of its own (a miss
    closes its channel)."""
    found = set()
    async with await aio_pika.connect(url) as connection:
        for queue in queues:
            channel = await (await connection.channel()).get_underlay_channel()
            try:
                await channel.queue_declare(queue, passive=True)
            except ChannelNotFoundEntity:
                continue
            found.add(queue)
            await channel.close()
    return found


def test_a_partitioned_group_has_a_queue_per_partition_with_single_active_consumer(
    rabbit: Conformance, rabbit_url: str, destination: str, group: str
) -> None:
    """partition-count 4 and group g: the queues ``<d>.g-0`` … ``<d>.g-3``, each declared with
    ``x-single-active-consumer``; no ``<d>.g`` and no fifth partition."""

    async def scenario() -> set[str]:
        await rabbit.provision(destination, PARTITIONS, [group])
        names = [f"{destination}.{group}-{p}" for p in range(PARTITIONS + 1)]
        return await _existing(rabbit_url, [*names, f"{destination}.{group}"])

    wanted = {f"{destination}.{group}-{p}" for p in range(PARTITIONS)}
    assert run(scenario()) == wanted
    listed = queues_info(f"{destination}.{group}", "arguments", "durable")
    assert set(listed) == wanted
    for queue, info in listed.items():
        assert info["durable"] == "true", (queue, info)
        assert '{"x-single-active-consumer",true}' in info["arguments"], (queue, info)


def test_an_unpartitioned_group_queue_has_no_single_active_consumer(
    rabbit: Conformance, rabbit_url: str, destination: str, group: str
) -> None:
    run(rabbit.provision(destination, 1, [group]))
    info = queues_info(destination, "arguments", "durable")[f"{destination}.{group}"]
    assert info["durable"] == "true", info
    assert "single-active" not in info["arguments"], info


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_queue_type_is_the_group_queues_x_queue_type(
    rabbit_config: dict[str, Any], destination: str, group: str, queue_type: str
) -> None:
    suite = Conformance({**rabbit_config, "queue-type": queue_type})
    run(suite.provision(destination, 1, [group]))
    assert queues_info(destination, "type")[f"{destination}.{group}"] == {"type": queue_type}
