"""Reminders: delayed delivery, expiry and non-blocking retries, with no scheduler of its own.

A sign-up on ``signups`` makes a nudge for one day later (the output's ``x-delay`` header);
the mailer sends it when it is due. A mail that fails is retried after 30 s, 2 min and 8 min
through ``nudges.mailer.retry`` while the other nudges keep flowing, then dead-lettered; a
nudge that could not be sent within a week (``producer.ttl``) is dropped as stale.

Run it with ``binder run examples.reminders.app:app --config examples/reminders/application.yml``
(on the embedded log; any binder with ``delayed_delivery`` works); ``test_reminders.py`` runs
a day, a week and the retries in milliseconds with a ``ManualClock``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from binder import App, Message

app = App.from_yaml(Path(__file__).with_name("application.yml"))

ONE_DAY_MS = 86_400_000


class SignUp(BaseModel):
    user: str
    email: str


class Nudge(BaseModel):
    user: str
    to: str
    text: str


class MailServerDown(RuntimeError):
    """The mail server refused a message for now (retried)."""


class Outbox:
    """What the mailer sent, and whether the mail server is up (for the tests)."""

    def __init__(self) -> None:
        self.sent: list[Nudge] = []
        self.refused = 0
        self.down_for: set[str] = set()


outbox = Outbox()


@app.function
def schedule(signup: SignUp) -> Message[Nudge]:
    """A nudge for one day after the sign-up."""
    nudge = Nudge(user=signup.user, to=signup.email, text="Still there? Finish your profile.")
    return Message(nudge, key=signup.user, headers={"x-delay": str(ONE_DAY_MS)})


@app.consumer
def mail(nudge: Nudge) -> None:
    """Send the mail; a refusal raises, so the nudge is retried later."""
    if nudge.user in outbox.down_for:
        outbox.refused += 1
        raise MailServerDown(f"mail to {nudge.to} refused")
    outbox.sent.append(nudge)
