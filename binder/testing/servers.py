"""What the test-server modules of the binders share (``binders.kafka.testing``'s Tansu,
``binders.redis.testing``'s cluster): child servers that die with the test run, and set-up
failures reported as one message."""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Callable

__all__ = ["die_with_parent", "failure_of"]


def _prctl_death_signal() -> None:
    """In the child: have Linux send it SIGTERM when the process that started it dies, so a
    test run that is killed leaves no server behind (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)


die_with_parent: Callable[[], None] | None = (
    _prctl_death_signal if sys.platform == "linux" else None
)
"""``preexec_fn`` for ``subprocess.Popen`` of a test server (``None`` where Linux's
PR_SET_PDEATHSIG is not there)."""


def failure_of(step: Callable[[], object], error: type[Exception]) -> str | None:
    """The message of the ``error`` that ``step`` raised, if it raised one (so a fixture fails
    outside the handler and the report shows the message alone)."""
    try:
        step()
    except error as exc:
        return str(exc)
    return None
