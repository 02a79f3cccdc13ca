"""Processes the delayed-delivery kill tests start and kill (run as a script, not collected).

``_delay_procs.py schedule SETTINGS_JSON N SECONDS``  send ``{"n": i}`` for i < N to the
    destination, each delayed by SECONDS, print ``scheduled``, then exit (cleanly)
``_delay_procs.py consume SETTINGS_JSON``             consume the destination in the group,
    print ``ready`` once the app runs (its consumer and its mover started), then each
    payload's ``n`` as it is handled; SIGTERM stops it cleanly

The settings: ``binder`` (the redis binder's options, ``type`` included), ``destination``,
``group``. Every line is flushed at once, so the test sees it even after a kill -9.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

from binder import App, Message


def _app(settings: dict[str, Any], bindings: dict[str, Any]) -> App:
    section = {"binders": {"redis": settings["binder"]}, "bindings": bindings}
    return App(config={"binder": section}, environ={})


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def schedule(settings: dict[str, Any], count: int, delay: float) -> None:
    async with _app(settings, {}) as app:
        destination = settings["destination"]
        await asyncio.gather(*(app.send(destination, {"n": n}, delay=delay) for n in range(count)))
    _say("scheduled")


async def consume(settings: dict[str, Any]) -> None:
    binding = {"destination": settings["destination"], "group": settings["group"]}
    app = _app(settings, {"handle-in-0": binding})

    @app.consumer
    async def handle(message: Message[dict[str, Any]]) -> None:
        _say(str(message.payload["n"]))

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with app:
        _say("ready")
        await stop.wait()


if __name__ == "__main__":
    command, settings_json, *args = sys.argv[1:]
    settings = json.loads(settings_json)
    if command == "schedule":
        asyncio.run(schedule(settings, int(args[0]), float(args[1])))
    else:
        asyncio.run(consume(settings))
