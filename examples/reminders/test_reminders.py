"""The reminders example under ``app.test(clock=ManualClock())``: a day, a week and the
retries' back-off pass in milliseconds. ``t.settle()`` before each ``clock.advance`` lets the
app finish what it was doing first: a delay counts from when the app sends the message, so
moving the clock before that would move the due time along with it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from binder import ManualClock
from examples.reminders.app import app, outbox

DAY = 86_400


@pytest.fixture(autouse=True)
def fresh_outbox() -> Iterator[None]:
    outbox.sent.clear()
    outbox.refused = 0
    outbox.down_for.clear()
    yield


def _until(done: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_nudge_is_mailed_a_day_after_the_sign_up() -> None:
    clock = ManualClock()
    with app.test(clock=clock) as t:
        t.send("signups", {"user": "ada", "email": "ada@example.com"})
        t.settle()
        assert t.receive("nudges", timeout=0.3) is None, "not before a day has passed"
        clock.advance(DAY - 1)
        assert t.receive("nudges", timeout=0.3) is None
        clock.advance(1)
        nudge = t.receive("nudges", timeout=5)
        assert nudge is not None and nudge.payload["to"] == "ada@example.com"
        _until(lambda: len(outbox.sent) == 1)


def test_a_refused_mail_is_retried_without_holding_back_the_others() -> None:
    clock = ManualClock()
    outbox.down_for.add("bob")
    with app.test(clock=clock) as t:
        t.send("signups", {"user": "bob", "email": "bob@example.com"})
        t.send("signups", {"user": "cy", "email": "cy@example.com"})
        t.settle()
        clock.advance(DAY)
        _until(lambda: outbox.refused == 1 and [n.user for n in outbox.sent] == ["cy"])
        t.settle()  # bob's is scheduled to be retried in 30 s
        outbox.down_for.clear()  # the server is back before the first retry
        clock.advance(30)
        _until(lambda: [n.user for n in outbox.sent] == ["cy", "bob"])


def test_a_nudge_refused_four_times_is_dead_lettered() -> None:
    clock = ManualClock()
    outbox.down_for.add("dee")
    with app.test(clock=clock) as t:
        t.send("signups", {"user": "dee", "email": "dee@example.com"})
        t.settle()
        clock.advance(DAY)
        for refusals, wait in enumerate((30, 120, 480), 1):  # the back-off: 30 s, then times 4
            _until(lambda n=refusals: outbox.refused == n)  # type: ignore[misc]
            t.settle()
            clock.advance(wait)
        letter = t.receive("nudges.mailer.dlq", timeout=5)
    assert letter is not None and letter.headers["x-original-delivery-attempt"] == "4"
    assert letter.headers["x-exception-type"].endswith("MailServerDown")
    assert outbox.sent == []


def test_a_nudge_that_waited_more_than_a_week_is_dropped() -> None:
    clock = ManualClock()
    with app.test(clock=clock) as t:
        mailer = app.binding("mail-in-0")
        mailer.pause()
        t.send("signups", {"user": "eve", "email": "eve@example.com"})
        t.settle()  # the mailer, paused, is not waited for
        clock.advance(DAY)
        assert t.receive("nudges", timeout=5) is not None
        clock.advance(7 * DAY)  # the mailer was down for a week
        mailer.resume()
        _until(lambda: mailer.stats.dropped == 1)  # type: ignore[union-attr]
    assert outbox.sent == []
