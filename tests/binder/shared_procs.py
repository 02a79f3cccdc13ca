"""Processes of the shared-configuration test (run as a script, not collected).

Both read the same ``application.yml`` and log at INFO on stderr.

``shared_procs.py produce FILE N``       an app that registers no function sends ``{"id": n}``
                                         for n < N with ``app.send("events", ...)``, prints
                                         ``sent N`` and exits
``shared_procs.py produce-inactive FILE N``  the same, from an app that registers ``sink`` as
                                         well as ``audit``, run with
                                         ``BINDER_FUNCTION_DEFINITION=audit``
``shared_procs.py consume FILE``         an app whose consumer ``sink`` prints each id it
                                         handled; SIGTERM stops it
"""

from __future__ import annotations

import asyncio
import logging
import sys

from binder import App, Message


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _consumers(app: App) -> None:
    @app.consumer
    def sink(message: Message[dict]) -> None:
        _say(str(message.payload["id"]))

    @app.consumer
    def audit(payload: dict) -> None:
        _say(f"audit {payload}")


async def produce(app: App, count: int) -> None:
    async with app:
        await asyncio.gather(*(app.send("events", {"id": n}, key=str(n)) for n in range(count)))
    _say(f"sent {count}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command, path, *rest = sys.argv[1:]
    app = App.from_yaml(path)  # environment overrides apply, as in any deployment
    if command == "produce":
        asyncio.run(produce(app, int(rest[0])))
    elif command == "produce-inactive":
        _consumers(app)
        asyncio.run(produce(app, int(rest[0])))
    else:
        _consumers(app)
        app.run()
