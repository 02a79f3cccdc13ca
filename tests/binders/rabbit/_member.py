"""A member of a consumer group in a process of its own, for ``test_processes.py`` (run as a
script, never collected): ``python _member.py SETTINGS_JSON``.

The settings: ``binder`` (the rabbit binder's options, ``type`` included), ``destination``,
``group``, ``consumer`` (the binding's consumer options), ``report`` (the number of an
inherited file descriptor: the write end of a pipe the test reads), ``label`` (this process,
as the test knows it), and:

- ``hold-after`` N: after handling N messages the handler blocks for good (kill -9 ends it);
- ``poison``: a message whose payload's ``n`` is ``"poison"`` ends this process at once
  (``os._exit(POISONED)``), every time its handler is called;
- ``pace`` S: the handler sleeps S seconds per message (to keep messages in flight).

For each message handled, before the handler returns, it writes to ``report`` one JSON line
``{"label", "n", "key", "attempt"}`` (``attempt``: the ``x-delivery-attempt`` header) in one
``write`` (shorter than ``PIPE_BUF``, so lines of several members never interleave), so the
pipe says what was handled even after a kill -9. SIGTERM stops the app cleanly
(``app.run()``: drain, commit, close).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

from binder import App, Message
from binder.message import DELIVERY_ATTEMPT

POISONED = 17
"""The exit status of a member that met the poison message."""


def main(settings_json: str) -> None:
    settings = json.loads(settings_json)
    binding = {
        "destination": settings["destination"],
        "group": settings["group"],
        "consumer": settings.get("consumer", {}),
    }
    section = {"binders": {"rabbit": settings["binder"]}, "bindings": {"handle-in-0": binding}}
    app = App(config={"binder": section}, environ={})
    report: int = settings["report"]
    handled = 0
    hold_after = settings.get("hold-after")
    pace = settings.get("pace", 0)

    @app.consumer
    def handle(message: Message[dict[str, Any]]) -> None:  # in a worker thread
        nonlocal handled
        n = message.payload["n"]
        if n == "poison" and settings.get("poison"):
            os._exit(POISONED)
        line = {
            "label": settings["label"],
            "n": n,
            "key": message.key,
            "attempt": int(message.headers.get(DELIVERY_ATTEMPT, "1")),
        }
        os.write(report, json.dumps(line).encode() + b"\n")
        handled += 1
        if pace:
            time.sleep(pace)
        if hold_after is not None and handled >= hold_after:
            threading.Event().wait()  # on purpose: what it holds stays unacknowledged

    app.run()


if __name__ == "__main__":
    main(sys.argv[1])
