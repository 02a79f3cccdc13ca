"""Processes the crash tests start, kill and restart (run as a script, not collected).

``procs.py produce PATH FSYNC``  send {"id": n} to ``orders`` from 8 concurrent senders,
                                 printing each id once its send completed, until killed
``procs.py consume PATH``        the group ``g`` on ``orders``, printing each id it handled;
                                 SIGTERM stops it cleanly (drain, commit, close)
``procs.py append PATH TAG N``   append N batches of 3 records ``TAG:i:j`` to ``orders``/0
                                 on the engine, then exit
``procs.py member PATH``         an engine member of group ``g`` on ``orders``, printing
                                 ``assigned P,..``/``revoked P,..`` and each id it handled
                                 (committing after each one), until killed
``procs.py schedule PATH N S``   send {"id": n} for n < N to ``orders`` delayed by S seconds,
                                 print ``scheduled``, exit
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from pathlib import Path

from binder import App, Message
from binders.log.engine import Broker
from binders.log.engine.durable import DurableStorage, StorageSettings


def _app(path: str, bindings: dict, fsync: str = "batch") -> App:
    binder = {"type": "log", "path": path, "fsync": fsync, "segment-bytes": 64 * 1024}
    return App(config={"binder": {"binders": {"local": binder}, "bindings": bindings}}, environ={})


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def produce(path: str, fsync: str) -> None:
    app = _app(path, {"orders": {"producer": {"partition-count": 2}}}, fsync)
    ids = itertools.count()

    async def sender() -> None:
        while True:
            n = next(ids)
            await app.send("orders", {"id": n}, key=str(n))
            _say(str(n))

    async with app:
        await asyncio.gather(*(sender() for _ in range(8)))


def consume(path: str) -> None:
    app = _app(path, {"handle-in-0": {"destination": "orders", "group": "g"}})

    @app.consumer
    def handle(message: Message[dict]) -> None:
        _say(str(message.payload["id"]))

    _say("ready")
    app.run()


def _broker(path: str) -> Broker:
    return Broker("proc", storage=DurableStorage(Path(path), StorageSettings(fsync="never")))


def append(path: str, tag: str, count: str) -> None:
    broker = _broker(path)
    for i in range(int(count)):
        batch = [(None, f"{tag}:{i}:{j}".encode(), {}, time.time()) for j in range(3)]
        broker.append("orders", 0, batch)
    broker.close()


async def member(path: str) -> None:
    broker = _broker(path)

    async def on_assign(partitions: set[int]) -> None:
        _say("assigned " + ",".join(map(str, sorted(partitions))))

    async def on_revoke(partitions: set[int]) -> None:
        _say("revoked " + ",".join(map(str, sorted(partitions))))

    joined = broker.join("orders", "g", on_assign=on_assign, on_revoke=on_revoke)
    while True:
        for record in await joined.poll(100):
            _say(record.value.decode())
            joined.commit(record.partition, record.offset + 1)


async def schedule(path: str, count: str, delay: str) -> None:
    async with _app(path, {}) as app:
        await asyncio.gather(
            *(app.send("orders", {"id": n}, delay=float(delay)) for n in range(int(count)))
        )
    _say("scheduled")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "produce":
        asyncio.run(produce(*args))
    elif command == "append":
        append(*args)
    elif command == "member":
        asyncio.run(member(*args))
    elif command == "schedule":
        asyncio.run(schedule(*args))
    else:
        consume(*args)
