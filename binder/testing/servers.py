"""What the test-server modules of the binders share (``binders.kafka.testing``'s Tansu,
``binders.redis.testing``'s cluster) and the tests' child processes: children that die with
the test run, and set-up failures reported as one message."""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Callable

__all__ = ["die_with_parent", "die_with_parent_by", "failure_of"]


def die_with_parent_by(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen`` that has Linux send the child ``sig`` when the
    process that started it dies (PR_SET_PDEATHSIG), so a test run that is killed leaves no
    child behind; ``None`` where Linux's PR_SET_PDEATHSIG is not there. SIGKILL for a child
    that must not outlive the run even while it drains; SIGTERM lets it stop cleanly."""
    if sys.platform != "linux":
        return None

    def prctl_death_signal() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, sig)  # PR_SET_PDEATHSIG

    return prctl_death_signal


die_with_parent: Callable[[], None] | None = die_with_parent_by(signal.SIGTERM)
"""``preexec_fn`` for ``subprocess.Popen`` of a test server: SIGTERM when the test run dies
(``None`` where Linux's PR_SET_PDEATHSIG is not there)."""


def failure_of(step: Callable[[], object], error: type[Exception]) -> str | None:
    """The message of the ``error`` that ``step`` raised, if it raised one (so a fixture fails
    outside the handler and the report shows the message alone)."""
    try:
        step()
    except error as exc:
        return str(exc)
    return None
