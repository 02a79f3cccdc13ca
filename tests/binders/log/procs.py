"""Processes the crash tests start, kill and restart (run as a script, not collected).

``procs.py produce PATH FSYNC``  send {"id": n} to ``orders`` from 8 concurrent senders,
                                 printing each id once its send completed, until killed
``procs.py consume PATH``        the group ``g`` on ``orders``, printing each id it handled;
                                 SIGTERM stops it cleanly (drain, commit, close)
"""

from __future__ import annotations

import asyncio
import itertools
import sys

from binder import App, Message


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


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "produce":
        asyncio.run(produce(*args))
    else:
        consume(*args)
