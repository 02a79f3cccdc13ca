"""``BINDER_TEST_BINDER=kafka``: an app's own ``app.test()`` runs unchanged on a real Kafka."""

from __future__ import annotations

import json
from typing import Any

import pytest

from binder import App
from binder.message import EXCEPTION_TYPE
from binder.testing.conformance.support import Conformance, run


def test_app_test_runs_on_kafka_when_chosen(
    kafka: Conformance,
    kafka_bootstrap_servers: str,
    plain_read: Any,
    topic: str,
    group: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BINDER_TEST_BINDER", "kafka")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap_servers)
    shipments = f"{topic}.shipments"
    bindings = {
        "uppercase-in-0": {"destination": topic, "group": group},
        "uppercase-out-0": {"destination": shipments},
    }
    for binding in bindings.values():
        kafka.declare(binding["destination"], group)
    kafka.dead_letters(topic, group)
    app = App(config={"binder": {"bindings": bindings}}, environ={})

    @app.function
    def uppercase(order: dict[str, Any]) -> dict[str, Any]:
        return {**order, "status": str(order["status"]).upper()}

    with app.test() as t:
        t.send("uppercase-in-0", {"id": 1, "status": "new"})
        out = t.receive("uppercase-out-0", timeout=15)
        assert out is not None and out.payload == {"id": 1, "status": "NEW"}
        assert out.destination == shipments
        t.send("uppercase-in-0", b"{not json")
        letter = t.receive(f"{topic}.{group}.dlq", timeout=15)
        assert letter is not None and letter.headers[EXCEPTION_TYPE].endswith("ConversionError")
    (stored,) = run(plain_read(shipments, 1, 1))  # it went through Kafka, not a stand-in
    assert json.loads(stored.value) == {"id": 1, "status": "NEW"}
