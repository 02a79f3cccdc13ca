"""``BINDER_TEST_BINDER=rabbit``: an app's own ``app.test()`` runs unchanged on the real
RabbitMQ."""

from __future__ import annotations

from typing import Any

import aio_pika
import pytest

from binder import App
from binder.message import EXCEPTION_TYPE
from binder.testing.conformance.support import run


async def _queued(url: str, queue: str) -> list[bytes]:
    """The bodies waiting in ``queue`` (read with ``basic.get``, acknowledged)."""
    bodies = []
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        found = await channel.get_queue(queue)
        while (message := await found.get(no_ack=True, fail=False)) is not None:
            bodies.append(message.body)
    return bodies


def test_app_test_runs_on_rabbit_when_chosen(
    rabbit_url: str, destination: str, group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app names a log binder as its default and a rabbit one beside it (whose options
    the harness takes): with ``BINDER_TEST_BINDER=rabbit`` every binding runs on RabbitMQ,
    and what the function sent waits in the queue of the output's required group."""
    monkeypatch.setenv("BINDER_TEST_BINDER", "rabbit")
    shipments = f"{destination}.shipments"
    config = {
        "binder": {
            "default-binder": "local",
            "binders": {
                "local": {"type": "log"},
                "mq": {"type": "rabbit", "url": rabbit_url},
            },
            "bindings": {
                "uppercase-in-0": {"destination": destination, "group": group},
                "uppercase-out-0": {
                    "destination": shipments,
                    "producer": {"required-groups": ["audit"]},
                },
            },
        }
    }
    app = App(config=config, environ={})

    @app.function
    def uppercase(order: dict[str, Any]) -> dict[str, Any]:
        return {**order, "status": str(order["status"]).upper()}

    with app.test() as t:
        t.send("uppercase-in-0", {"id": 1, "status": "new"})
        out = t.receive("uppercase-out-0", timeout=15)
        assert out is not None and out.payload == {"id": 1, "status": "NEW"}
        t.send("uppercase-in-0", b"{not json")
        letter = t.receive(f"{destination}.{group}.dlq", timeout=15)
        assert letter is not None and letter.headers[EXCEPTION_TYPE].endswith("ConversionError")
    assert run(_queued(rabbit_url, f"{shipments}.audit")) == [b'{"id":1,"status":"NEW"}']
