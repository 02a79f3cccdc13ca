"""What a dead letter keeps for its reader: the attempt count and the traceback of the cause."""

from __future__ import annotations

import queue
from typing import Any

from binder import App, Message
from binder.retry import MAX_STACKTRACE, dead_letter_record, stacktrace
from binder.spi import InboundRecord

TIMEOUT = 5.0


def _inbound() -> InboundRecord:
    return InboundRecord("orders", 0, 3, b"{}", b"k", {"x-delivery-attempt": "1"})


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def _chained(layers: int) -> BaseException:
    """An exception caused by ``layers - 1`` others, each with a traceback of its own."""
    exc: BaseException | None = None
    for layer in range(layers):
        try:
            raise ValueError(f"layer {layer} ✓") from exc
        except ValueError as caught:
            exc = caught
    assert exc is not None
    return exc


def test_a_letter_carries_its_attempt_count_as_original_delivery_attempt() -> None:
    letter = dead_letter_record(_inbound(), ValueError("no"), "g", 3)
    assert letter.headers["x-original-delivery-attempt"] == "3"


def test_the_stacktrace_names_the_frame_that_raised() -> None:
    letter = dead_letter_record(_inbound(), _raised(KeyError("sku")), "g", 1)
    trace = letter.headers["x-exception-stacktrace"]
    assert trace.startswith("Traceback (most recent call last):")
    assert "in _raised" in trace
    assert trace.endswith("KeyError: 'sku'")


def test_a_long_stacktrace_keeps_its_end_within_the_limit() -> None:
    trace = stacktrace(_chained(200))
    size = len(trace.encode())
    assert MAX_STACKTRACE - 4 <= size <= MAX_STACKTRACE
    assert trace.startswith("…"), "cut at the start: the earliest causes go"
    assert "layer 0 ✓" not in trace
    assert trace.endswith("ValueError: layer 199 ✓"), "the failure itself stays, last"
    assert "in _chained" in trace


def test_a_cut_never_splits_a_character() -> None:
    exc = _raised(ValueError("é" * 5000))
    trace = stacktrace(exc, limit=1001)
    assert len(trace.encode()) <= 1001
    assert trace.endswith("é" * 100)


def test_failure_texts_with_lone_surrogates_become_encodable_headers() -> None:
    letter = dead_letter_record(_inbound(), _raised(ValueError("bad \udcff byte")), "g", 1)
    for name in ("x-exception-message", "x-exception-stacktrace"):
        text = letter.headers[name]
        text.encode()  # would raise UnicodeEncodeError on a surrogate
        assert "bad \\udcff byte" in text


def test_a_dead_letter_consumer_reads_the_final_attempt_count_and_the_traceback() -> None:
    doc = {
        "binder": {
            "bindings": {
                "doomed-in-0": {
                    "destination": "orders",
                    "group": "billing",
                    "consumer": {"max-attempts": 3, "back-off-initial-interval": 0.001},
                },
                "inspect-in-0": {"destination": "orders.billing.dlq", "group": "ops"},
            }
        }
    }
    app = App(config=doc, environ={})
    letters: queue.Queue[Message[Any]] = queue.Queue()

    @app.consumer
    def doomed(order: dict[str, Any]) -> None:
        raise RuntimeError(f"cannot ship {order['id']}")

    @app.consumer
    def inspect(letter: Message[dict[str, Any]]) -> None:
        letters.put(letter)

    with app.test() as t:
        t.send("orders", {"id": 9})
        letter = letters.get(timeout=TIMEOUT)
    assert letter.headers["x-original-delivery-attempt"] == "3", "the attempts that failed"
    assert letter.headers["x-delivery-attempt"] == "1", "the letter's own delivery"
    trace = letter.headers["x-exception-stacktrace"]
    assert "in doomed" in trace
    assert "raise RuntimeError(f\"cannot ship {order['id']}\")" in trace
    assert trace.endswith("RuntimeError: cannot ship 9")
