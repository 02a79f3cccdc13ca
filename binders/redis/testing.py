"""Redis for tests and benchmarks; also the pytest plugin ``binder-redis``.

- The session fixture ``redis_url`` is ``$REDIS_URL`` when set, else :data:`DEFAULT_URL`;
  the function fixture ``key_prefix`` gives each test keys of its own and deletes them after.
- :class:`RedisCluster` runs a three-master Redis Cluster on free loopback ports:
  ``with RedisCluster() as url: ...``; the session fixture ``redis_cluster_url`` is one for
  the session (or ``$REDIS_CLUSTER_URL`` when set), and the function fixture
  ``cluster_key_prefix`` is ``key_prefix`` on it.

No fixture ever skips: an unreachable server, or a missing ``redis-server``, fails the test
that asked for it, naming it. redis-py is imported only inside the functions that use it, so
the plugin loads without the ``redis`` extra.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from io import BufferedIOBase
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import pytest

from binder.testing.servers import die_with_parent, failure_of

__all__ = [
    "BUS_OFFSET",
    "DEFAULT_URL",
    "FAST_CLAIMS",
    "RedisCluster",
    "ServerError",
    "check_reachable",
    "cluster_key_prefix",
    "delete_prefixed",
    "key_prefix",
    "redis_cluster_url",
    "redis_url",
]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
"""The server tests use when ``$REDIS_URL`` is not set."""

FAST_CLAIMS = {"min-idle": "2s", "claim-interval": "200ms", "lease-ms": 1500}
"""Binder options for tests: an entry left pending by a dead member is claimed, and a dead
member's partition leases pass to a live one, within about a second or two."""

START_TIMEOUT = 30.0
"""Seconds a :class:`RedisCluster` gets by default, in all, until every node says
``cluster_state:ok``."""

MASTERS = 3
"""Masters of a :class:`RedisCluster`, the fewest ``redis-cli --cluster create`` accepts."""

BUS_OFFSET = 10_000
"""A cluster node also listens on its port plus this (the cluster bus)."""

_HOW_TO_START = "start one with `redis-server --daemonize yes`, or set REDIS_URL"


class ServerError(RuntimeError):
    """A test server could not be started or reached; the message names it (no password)."""


def check_reachable(url: str, timeout: float = 5.0) -> None:
    """Return once the server of ``url`` answers ``PING`` with ``PONG``, else raise ServerError.

    A plain socket (no redis-py): it connects to the URL's host and port, sends ``AUTH``
    first when the URL holds a password, then ``PING``. Only ``redis://`` URLs: TLS
    (``rediss://``) and ``unix://`` are out of scope. Blocks at most about ``timeout``
    seconds per step; the message of the error names ``url`` with its password masked.
    """
    host, port, auth = _address(url)
    try:
        with (
            socket.create_connection((host, port), timeout) as sock,
            sock.makefile("rwb") as stream,
        ):
            if auth:
                _expect(url, "AUTH", _command(stream, "AUTH", *auth), "+OK")
            _expect(url, "PING", _command(stream, "PING"), "+PONG")
    except (OSError, ValueError) as exc:
        raise ServerError(f"Redis at {_masked(url)} is unreachable: {exc}") from None


def _address(url: str) -> tuple[str, int, tuple[str, ...]]:
    """Host, port and ``AUTH`` arguments (empty without a password) of a ``redis://`` URL."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ServerError(
            f"cannot check {_masked(url)}: only redis:// URLs are supported here "
            "(TLS, rediss://, and unix:// sockets are out of scope)"
        )
    try:
        port = parts.port or 6379
    except ValueError as exc:
        raise ServerError(f"Redis URL {_masked(url)} is malformed: {exc}") from None
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    auth = (user, password) if user else (password,) if password else ()
    return parts.hostname or "localhost", port, auth


def _expect(url: str, command: str, reply: str, wanted: str) -> None:
    if reply == wanted:
        return
    if reply.startswith("-NOAUTH"):
        hint = "it needs a password: put it in the URL, redis://:password@host:port/db"
        raise ServerError(f"Redis at {_masked(url)} refused {command}: {hint}")
    raise ServerError(f"Redis at {_masked(url)} answered {command} with {reply!r}")


def _command(stream: BufferedIOBase, *args: str) -> str:
    """Send one command in RESP; its reply as text (``+OK``, ``-ERR …``, or a bulk string)."""
    frame = [b"*%d\r\n" % len(args)]
    for arg in map(str.encode, args):
        frame.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    stream.write(b"".join(frame))
    stream.flush()
    line = stream.readline().decode(errors="replace").rstrip("\r\n")
    if not line:
        raise ConnectionError("the server closed the connection without a reply")
    if not line.startswith("$"):
        return line
    size = int(line[1:])
    return "" if size < 0 else stream.read(size + 2)[:size].decode(errors="replace")


def _masked(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{host}"))


@pytest.fixture(scope="session")
def redis_url() -> str:
    """``$REDIS_URL``, else :data:`DEFAULT_URL`; fails (never skips) when it is unreachable."""
    configured = os.environ.get("REDIS_URL")
    url = configured or DEFAULT_URL
    problem = failure_of(lambda: check_reachable(url), ServerError)
    if problem:
        source = "from REDIS_URL" if configured else "the default"
        pytest.fail(f"{problem} ({source}); {_HOW_TO_START}", pytrace=False)
    return url


@pytest.fixture
def key_prefix(redis_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """``sbt-<test name>-<8 hex>:``, used by no other test; every key under it is deleted
    after the test (on ``redis_url``), the binder's lease keys ``{<prefix>…}:lease:…``
    included."""
    prefix = _test_prefix(request)
    yield prefix
    _delete_test_keys(redis_url, prefix)


@pytest.fixture
def cluster_key_prefix(redis_cluster_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """``key_prefix`` on the cluster of ``redis_cluster_url``: every key under it (leases
    included) is deleted after the test on every master."""
    prefix = _test_prefix(request)
    yield prefix
    _delete_test_keys(redis_cluster_url, prefix)


def _test_prefix(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name.removeprefix("test_"))
    return f"sbt-{name[:24].strip('-')}-{uuid.uuid4().hex[:8]}:"


def _delete_test_keys(url: str, prefix: str) -> None:
    """Delete the keys under ``prefix``, and the binder's lease keys ``{<stream>}:lease:…``
    (hash-tagged: they start with ``{``, not with the prefix)."""
    delete_prefixed(url, prefix)
    delete_prefixed(url, "{" + prefix)


def delete_prefixed(url: str, prefix: str) -> int:
    """Delete every key starting with ``prefix`` on the server (or cluster) of ``url``;
    return how many went.

    ``SCAN MATCH`` with the prefix's glob characters escaped, then ``UNLINK`` in chunks;
    on a cluster every master is scanned. Blocks; uses a synchronous redis-py client.
    """
    import redis
    from redis.cluster import RedisCluster as ClusterClient

    with redis.Redis.from_url(url) as probe:
        clustered = bool(probe.info("cluster").get("cluster_enabled"))
    client_type: Any = ClusterClient if clustered else redis.Redis
    with client_type.from_url(url) as client:
        return _unlink_matching(client, re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*")


def _unlink_matching(client: Any, pattern: str, chunk: int = 500) -> int:
    deleted, keys = 0, []
    for key in client.scan_iter(match=pattern, count=1000):
        keys.append(key)
        if len(keys) == chunk:
            deleted, keys = deleted + client.unlink(*keys), []
    return deleted + (client.unlink(*keys) if keys else 0)


class RedisCluster:
    """Three Redis masters on free ``127.0.0.1`` ports, joined into one cluster (no replicas).

    ``with RedisCluster() as url: ...``, or :meth:`start` and :meth:`stop`. ``ports`` are
    the nodes' client ports (each one's cluster bus port, plus 10000, was free too); ``url``
    names the first node; ``directory`` holds the nodes' files until :meth:`stop`.
    ``start_timeout`` bounds :meth:`start`, in seconds.
    """

    def __init__(self, start_timeout: float = START_TIMEOUT) -> None:
        self.start_timeout = start_timeout
        self.ports = _cluster_ports(MASTERS)
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"
        self.directory: Path | None = None
        self._processes: dict[int, subprocess.Popen[bytes]] = {}

    def start(self) -> str:
        """Start the nodes, create the cluster, and return ``url`` once every node reports
        ``cluster_state:ok``. Blocks (a few seconds; at most about ``start_timeout``).

        Raises ServerError, with the nodes' last output, when ``redis-server`` or
        ``redis-cli`` is not on PATH or the cluster does not form; nothing is left running.
        """
        server, cli = _program("redis-server"), _program("redis-cli")
        self.directory = Path(tempfile.mkdtemp(prefix="sbt-redis-cluster-"))
        deadline = time.monotonic() + self.start_timeout
        try:
            for port in self.ports:
                self._processes[port] = self._launch(server, port)
            self._wait("accept connections", _pongs, deadline)
            self._create(cli, deadline)
            self._wait("report cluster_state:ok", _cluster_ok, deadline)
        except ServerError as exc:
            output = self.output()
            self.stop()
            raise ServerError(f"{self}: {exc}; last output: {output}") from None
        except BaseException:
            self.stop()
            raise
        return self.url

    def _launch(self, server: str, port: int) -> subprocess.Popen[bytes]:
        assert self.directory is not None
        home = self.directory / str(port)
        home.mkdir()
        settings = {
            "port": str(port),
            "cluster-enabled": "yes",
            "cluster-config-file": f"nodes-{port}.conf",
            "cluster-node-timeout": "2000",
            "appendonly": "no",
            "save": "",
            "dir": str(home),
            "bind": "127.0.0.1",
            "protected-mode": "no",
        }
        arguments = [part for key, value in settings.items() for part in (f"--{key}", value)]
        with open(home / "output.log", "wb") as output:
            return subprocess.Popen(
                [server, *arguments],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def _create(self, cli: str, deadline: float) -> None:
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        command = [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"]
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=max(deadline - time.monotonic(), 1.0),
            )
        except subprocess.TimeoutExpired:
            raise ServerError(
                f"redis-cli --cluster create ran out of time ({self.start_timeout:g} s)"
            ) from None
        if done.returncode != 0:
            said = " | ".join(
                (done.stdout + done.stderr).decode(errors="replace").splitlines()[-5:]
            )
            raise ServerError(f"redis-cli --cluster create failed ({done.returncode}): {said}")

    def _wait(self, what: str, ready: Callable[[int], bool], deadline: float) -> None:
        """Poll until ``ready(port)`` holds for every node (a server offers a client nothing
        to wait on for these states). ServerError when a node exits or the deadline passes."""
        waiting = list(self.ports)
        while waiting:
            for port, process in self._processes.items():
                if process.poll() is not None:
                    raise ServerError(f"the node on port {port} exited ({process.returncode})")
            if time.monotonic() > deadline:
                raise ServerError(f"nodes {waiting} did not {what} within {self.start_timeout:g} s")
            waiting = [port for port in waiting if not ready(port)]
            if waiting:
                time.sleep(0.05)

    def output(self) -> str:
        """The nodes' last lines of output."""
        if self.directory is None:
            return "(no output)"
        return " || ".join(f"{port}: {_tail(self.directory / str(port))}" for port in self.ports)

    def stop(self) -> None:
        """Terminate the nodes (kill any that lingers) and remove ``directory``. Idempotent;
        blocks until the processes are gone."""
        processes, self._processes = list(self._processes.values()), {}
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __str__(self) -> str:
        return f"Redis Cluster on 127.0.0.1 ports {', '.join(map(str, self.ports))}"

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _answers(port: int, command: str, wanted: str) -> bool:
    """Whether the node on ``port`` answers ``command`` with a reply containing ``wanted``."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), 1.0) as sock,
            sock.makefile("rwb") as stream,
        ):
            return wanted in _command(stream, *command.split())
    except OSError:
        return False


def _pongs(port: int) -> bool:
    return _answers(port, "PING", "+PONG")


def _cluster_ok(port: int) -> bool:
    return _answers(port, "CLUSTER INFO", "cluster_state:ok")


def _tail(home: Path, lines: int = 5) -> str:
    try:
        text = (home / "output.log").read_text(errors="replace")
    except OSError:
        return "(no output)"
    return " | ".join(text.splitlines()[-lines:]) or "(no output)"


def _cluster_ports(count: int) -> list[int]:
    """``count`` free loopback ports P whose cluster bus port P + 10000 is free too (all held
    bound until chosen, so no two overlap)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(100):
            client = _bound(0)
            assert client is not None
            held.append(client)
            port = client.getsockname()[1]
            bus = _bound(port + BUS_OFFSET) if port + BUS_OFFSET <= 65535 else None
            if bus is not None:
                held.append(bus)
                ports.append(port)
            if len(ports) == count:
                return ports
        raise ServerError(f"found no {count} free port pairs P, P + {BUS_OFFSET} on 127.0.0.1")
    finally:
        for sock in held:
            sock.close()


def _bound(port: int) -> socket.socket | None:
    """A socket bound to ``127.0.0.1:port``, or None when that port is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    return sock


def _program(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ServerError(f"{name} is not on PATH: install Redis (e.g. apt-get install redis)")
    return found


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """``$REDIS_CLUSTER_URL``, else a :class:`RedisCluster` for the whole session; fails
    (never skips) when it is unreachable or does not start."""
    configured = os.environ.get("REDIS_CLUSTER_URL")
    if configured:
        problem = failure_of(lambda: check_reachable(configured), ServerError)
        if problem:
            pytest.fail(f"{problem} (from REDIS_CLUSTER_URL)", pytrace=False)
        yield configured
        return
    cluster = RedisCluster()
    problem = failure_of(cluster.start, ServerError)
    if problem:
        pytest.fail(problem, pytrace=False)
    try:
        yield cluster.url
    finally:
        cluster.stop()
