"""A dead letter of an exception with a huge message: its headers are cut far below the AMQP
frame size (a content header cannot span frames), so the letter is published, not refused."""

from __future__ import annotations

import asyncio
from typing import Any

from binder import App, Message


def test_a_huge_exception_message_is_cut_and_the_letter_delivered(
    rabbit_url: str, rabbit_prefix: str
) -> None:
    d = f"{rabbit_prefix}orders"
    bindings = {
        "fail-in-0": {"destination": d, "group": "g", "consumer": {"max-attempts": 1}},
        "inspect-in-0": {"destination": f"{d}.g.dlq", "group": "support"},
    }
    section = {"binders": {"r": {"type": "rabbit", "url": rabbit_url}}, "bindings": bindings}
    app = App(config={"binder": section}, environ={})
    letters: list[Message[Any]] = []

    @app.consumer
    def fail(payload: Any) -> None:
        raise ValueError("x" * 1_000_000)

    @app.consumer
    def inspect(message: Message[Any]) -> None:
        letters.append(message)

    async def scenario() -> None:
        async with app:
            await app.send(d, {"n": 1}, headers={"trace": "t-1"})
            for _ in range(400):
                if letters:
                    return
                await asyncio.sleep(0.025)

    asyncio.run(scenario())
    (letter,) = letters
    assert letter.payload == {"n": 1} and letter.headers["trace"] == "t-1"
    assert letter.headers["x-exception-type"] == "builtins.ValueError"
    assert 0 < len(letter.headers["x-exception-message"]) <= 4096
    assert sum(len(k) + len(v) for k, v in letter.headers.items()) < 16 * 1024
