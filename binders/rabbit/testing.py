"""RabbitMQ for tests and benchmarks; also the pytest plugin ``binder-rabbit``.

- The session fixture ``rabbit_url`` is ``$RABBITMQ_URL`` when set, else :data:`DEFAULT_URL`;
  an unreachable server fails the test that asked for it, naming it (never a skip).
- The function fixture ``rabbit_prefix`` gives a test names of its own (``rt-<random>-``) and
  deletes every queue and exchange starting with it afterwards (through ``rabbitmqctl``).
- :func:`close_connections` closes a binder's connections from the broker's side, as an
  operator's ``rabbitmqctl close_connection`` would.
- :func:`queues_info` is what ``rabbitmqctl list_queues`` says about queues (their
  arguments, type, ready and unacknowledged messages), as the broker sees them.

aio-pika is imported only inside the functions that use it, so the plugin loads without the
``rabbit`` extra.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote, urlsplit

import pytest

__all__ = [
    "DEFAULT_URL",
    "ServerError",
    "check_reachable",
    "close_connections",
    "delete_prefixed",
    "queues_info",
    "rabbit_prefix",
    "rabbit_url",
    "rabbitmqctl",
]

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
"""The server tests use when ``$RABBITMQ_URL`` is not set."""

_HOW_TO_START = "start it with `rabbitmq-server -detached`, or set RABBITMQ_URL"
_PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


class ServerError(RuntimeError):
    """A test server could not be reached or managed; the message names it (no password)."""


def _masked(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = unquote(parts.username or "")
    return url.replace(f"{parts.username}:{parts.password}@", f"{user}:***@", 1)


def check_reachable(url: str, timeout: float = 5.0) -> None:
    """Return once the broker of ``url`` answers the AMQP 0-9-1 protocol header with a
    ``connection.start`` frame, else raise ServerError naming it. A plain socket."""
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 5672
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_PROTOCOL_HEADER)
            reply = sock.recv(7)
    except OSError as exc:
        raise ServerError(
            f"RabbitMQ at {_masked(url)} is unreachable ({exc}): {_HOW_TO_START}"
        ) from None
    if not reply.startswith(b"\x01\x00\x00"):  # a method frame on channel 0
        raise ServerError(f"{_masked(url)} does not speak AMQP 0-9-1 (answered {reply!r})")


@pytest.fixture(scope="session")
def rabbit_url() -> str:
    """The broker for tests: ``$RABBITMQ_URL``, else :data:`DEFAULT_URL`; checked once."""
    url = os.environ.get("RABBITMQ_URL") or DEFAULT_URL
    try:
        check_reachable(url)
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    return url


def rabbitmqctl(*args: str, timeout: float = 60.0) -> str:
    """Run ``rabbitmqctl`` on this machine's broker; its output, or ServerError."""
    binary = shutil.which("rabbitmqctl")
    if binary is None:
        raise ServerError("rabbitmqctl is not on PATH (needed to manage the test broker)")
    done = subprocess.run(
        [binary, "-q", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise ServerError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def queues_info(prefix: str, *items: str) -> dict[str, dict[str, str]]:
    """``rabbitmqctl list_queues`` of every queue whose name starts with ``prefix``: its
    name → each of ``items`` (``arguments``, ``type``, ``messages_ready``,
    ``messages_unacknowledged`` …) as the broker shows it."""
    listed = rabbitmqctl("list_queues", "--no-table-headers", "name", *items)
    found: dict[str, dict[str, str]] = {}
    for line in listed.splitlines():
        name, *values = line.split("\t")
        if name.startswith(prefix):
            found[name] = dict(zip(items, values, strict=True))
    return found


def _names(kind: str, prefix: str) -> list[str]:
    listed = rabbitmqctl(f"list_{kind}", "name")
    return [line for line in listed.splitlines() if line.startswith(prefix)]


def delete_prefixed(url: str, prefix: str) -> int:
    """Delete every queue and exchange whose name starts with ``prefix``; how many."""
    import asyncio

    with ThreadPoolExecutor(2) as pool:  # rabbitmqctl takes most of a second to start
        queues, exchanges = pool.map(lambda kind: _names(kind, prefix), ("queues", "exchanges"))
    if not queues and not exchanges:
        return 0

    async def delete() -> None:
        import aio_pika

        connection = await aio_pika.connect(url, timeout=10)
        try:
            channel = await (await connection.channel()).get_underlay_channel()
            for queue in queues:
                await channel.queue_delete(queue)
            for exchange in exchanges:
                await channel.exchange_delete(exchange)
        finally:
            await connection.close()

    asyncio.run(delete())
    return len(queues) + len(exchanges)


@pytest.fixture
def rabbit_prefix(rabbit_url: str) -> Iterator[str]:
    """A name prefix of this test's own; its queues and exchanges are deleted after it."""
    prefix = f"rt-{uuid.uuid4().hex[:10]}-"
    yield prefix
    delete_prefixed(rabbit_url, prefix)


def close_connections(connection_name: str) -> int:
    """Close, from the broker, every connection whose client-given name is
    ``connection_name`` (the binder names its connection ``streambinder <binder name>``);
    how many were closed."""
    listed = rabbitmqctl("list_connections", "pid", "client_properties")
    closed = 0
    for line in listed.splitlines():
        pid, _, properties = line.partition("\t")
        if f'"{connection_name}"' in properties or f'<<"{connection_name}">>' in properties:
            rabbitmqctl("close_connection", pid, "closed by a test")
            closed += 1
    return closed
