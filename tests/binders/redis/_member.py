"""A member of a consumer group in a process of its own, for ``test_processes.py`` (run as a
script, never collected): ``python _member.py SETTINGS_JSON``.

The settings: ``binder`` (the redis binder's options, ``type`` included), ``destination``,
``group``, ``consumer`` (the binding's consumer options), ``report`` (a Redis list key),
``url`` (the server of that list), ``label`` (this process, as the test knows it), and:

- ``hold-after`` N: after handling N messages the handler blocks for good (kill -9 ends it);
- ``poison``: a message whose payload is ``"poison"`` kills this process (SIGKILL, itself),
  every time its handler is called;
- ``pace`` S: the handler sleeps S seconds per message (to keep entries in flight).

For each message handled, before the handler returns, it ``RPUSH``es to ``report`` the JSON
``{"label", "n", "key", "attempt"}`` (``n``: the payload's ``n``; ``attempt``: the
``x-delivery-attempt`` header), so the list says what was handled even after a kill -9.
SIGTERM stops the app cleanly (``app.run()``: drain, commit, close).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any

from redis import Redis

from binder import App, Message
from binder.message import DELIVERY_ATTEMPT


def main(settings_json: str) -> None:
    settings = json.loads(settings_json)
    binding = {
        "destination": settings["destination"],
        "group": settings["group"],
        "consumer": settings.get("consumer", {}),
    }
    section = {"binders": {"redis": settings["binder"]}, "bindings": {"handle-in-0": binding}}
    app = App(config={"binder": section}, environ={})
    report = Redis.from_url(settings["url"])
    handled = 0
    hold_after = settings.get("hold-after")
    pace = settings.get("pace", 0)

    @app.consumer
    def handle(message: Message[dict[str, Any]]) -> None:  # in a worker thread
        nonlocal handled
        n = message.payload["n"]
        if n == "poison" and settings.get("poison"):
            os.kill(os.getpid(), signal.SIGKILL)
        line = {
            "label": settings["label"],
            "n": n,
            "key": message.key,
            "attempt": int(message.headers.get(DELIVERY_ATTEMPT, "1")),
        }
        report.rpush(settings["report"], json.dumps(line))
        handled += 1
        if pace:
            time.sleep(pace)
        if hold_after is not None and handled >= hold_after:
            threading.Event().wait()  # on purpose: what it holds stays pending

    app.run()


if __name__ == "__main__":
    main(sys.argv[1])
