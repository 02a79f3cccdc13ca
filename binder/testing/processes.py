"""Child processes of the tests: a child whose stdout lines are collected as they come, the
environment a child ``python`` gets, and ``python -m binder`` run the way a user runs it.

The children import this checkout's ``binder`` and ``binders``: :data:`SOURCE_ROOT`, the
directory that holds them, goes on their ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from binder.testing.servers import die_with_parent

__all__ = ["SOURCE_ROOT", "LineProcess", "child_env", "python_env", "run_cli"]

SOURCE_ROOT = Path(__file__).resolve().parents[2]
"""The directory holding the ``binder`` package (the project root in a checkout)."""


def python_env() -> dict[str, str]:
    """The test's environment with :data:`SOURCE_ROOT` as ``PYTHONPATH``, so a child
    ``python`` imports the ``binder`` under test."""
    return {**os.environ, "PYTHONPATH": str(SOURCE_ROOT)}


def child_env(*drop: str) -> dict[str, str]:
    """:func:`python_env` minus the variables starting with one of ``drop`` (``"BINDER_"``,
    ``"REDIS_"``: what would reconfigure the child's App or binder), with unbuffered output
    (``PYTHONUNBUFFERED``) so what the child prints is there when a kill comes."""
    env = {k: v for k, v in python_env().items() if not k.startswith(drop)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(
    *args: str, config: Path, stdin: str | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """``python -m binder ARGS --config CONFIG`` in ``config``'s directory, with ``stdin`` as
    its input; its exit code and output (text) once it exited."""
    return subprocess.run(
        [sys.executable, "-m", "binder", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=timeout,
        cwd=config.parent,
        env=python_env(),
    )


class LineProcess:
    """A child process whose stdout lines are collected, stripped, as they come (a reader
    thread), so a test waits on what the child says rather than on a clock.

    The child is sent SIGTERM if the test process dies (:data:`die_with_parent`); its stderr
    goes to ``stderr`` (the test's own by default). ``timeout`` is the seconds any one wait
    gets: :meth:`wait_until`, and the exit after :meth:`stop`."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: Path | str | None = None,
        env: Mapping[str, str] | None = None,
        stderr: IO[Any] | int | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.timeout = timeout
        self.lines: list[str] = []
        """The lines so far, without their ends (append-only; read under :meth:`wait_until`
        or as a copy)."""
        self._changed = threading.Condition()
        self._ended = False
        self.process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            bufsize=1,
            preexec_fn=die_with_parent,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.strip())
                self._changed.notify_all()
        with self._changed:  # the end of the output (the child exited): stop waiting
            self._ended = True
            self._changed.notify_all()

    def wait_until(self, done: Callable[[], bool], what: str) -> None:
        """Wait until ``done()`` (called with the lines locked, at each new line); an
        AssertionError naming ``what`` if the child's output ends (it exited) or the timeout
        passes first."""
        with self._changed:
            self._changed.wait_for(lambda: done() or self._ended, self.timeout)
            assert done(), (
                f"waited for {what}; got {len(self.lines)} lines, the last {self.lines[-5:]}"
            )

    def wait_lines(self, count: int) -> None:
        """Wait until the child printed at least ``count`` lines."""
        self.wait_until(lambda: len(self.lines) >= count, f"{count} lines")

    def stop(self, sig: int) -> int:
        """Send ``sig``; the exit code once the child exited and its output is all read."""
        self.process.send_signal(sig)
        code = self.process.wait(self.timeout)
        self._reader.join(self.timeout)
        return code
