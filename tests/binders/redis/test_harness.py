"""``BINDER_TEST_BINDER=redis``: an app's own ``app.test()`` runs unchanged on the real Redis."""

from __future__ import annotations

import json
from typing import Any

import pytest
from redis import Redis

from binder import App
from binder.message import EXCEPTION_TYPE


def test_app_test_runs_on_redis_when_chosen(
    redis_url: str,
    key_prefix: str,
    plain: Redis,
    stream: str,
    group: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The app names a log binder as its default and a redis one beside it (whose options the
    harness takes): with ``BINDER_TEST_BINDER=redis`` every binding runs on Redis."""
    monkeypatch.setenv("BINDER_TEST_BINDER", "redis")
    shipments = f"{stream}.shipments"
    config = {
        "binder": {
            "default-binder": "local",
            "binders": {
                "local": {"type": "log"},
                "cache": {"type": "redis", "url": redis_url, "key-prefix": key_prefix},
            },
            "bindings": {
                "uppercase-in-0": {"destination": stream, "group": group},
                "uppercase-out-0": {"destination": shipments},
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
        letter = t.receive(f"{stream}.{group}.dlq", timeout=15)
        assert letter is not None and letter.headers[EXCEPTION_TYPE].endswith("ConversionError")
    ((_, fields),) = plain.xrange(f"{key_prefix}{shipments}")  # it went through Redis
    assert json.loads(fields[b"payload"]) == {"id": 1, "status": "NEW"}
