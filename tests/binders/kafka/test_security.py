"""The SSL options work against a real broker: every connection of every client is TLS.

Tansu's own TLS listener does not serve standard clients, so a dedicated Tansu sits behind
a TLS-terminating proxy and advertises the proxy's port: clients bootstrap through the
proxy and metadata sends them back to it. Certificates come from ``trustme``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from binder.errors import BackendError, ConfigError
from binder.spi import OutboundRecord
from binder.testing.conformance.support import Conformance, Inbox, run
from binders.kafka.testing import FAST_GROUPS, Tansu

T = TypeVar("T")
Connect = Callable[[Mapping[str, Any]], Conformance]

PASSWORD = "key-pass-7f3a91"
"""The client key's password; it must never reach a log or an error message."""
FAIL_FAST = {"request-timeout-ms": 3000}
"""A failing start gives up within seconds."""
BOUND = 15.0
"""Seconds any scenario may take before it counts as hung."""


class TlsProxy:
    """A TLS-terminating TCP proxy on ``127.0.0.1:port``, forwarding bytes to ``target``.

    Its event loop runs in a thread of its own, so it outlives each test's loop. It takes
    a free port at :meth:`start`; :meth:`serve` listens again on that port (the one the
    broker advertises) with another server context: another certificate, or client
    certificates required. ``target`` may be set after :meth:`start`, before clients come.
    """

    def __init__(self, target: int = 0) -> None:
        self.port = 0
        self.target = target
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-proxy")
        self._server: asyncio.Server | None = None
        self._streams: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, context: ssl.SSLContext) -> int:
        """Listen with ``context`` on a free port; the port."""
        self._thread.start()
        self.serve(context)
        return self.port

    def serve(self, context: ssl.SSLContext) -> None:
        """Drop every connection and listen with ``context`` instead."""
        self._call(self._serve(context))

    def stop(self) -> None:
        """Close the server and every connection, then the loop. Idempotent."""
        if self._thread.is_alive():
            self._call(self._close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    def _call(self, step: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(step, self._loop).result(BOUND)

    async def _serve(self, context: ssl.SSLContext) -> None:
        await self._close()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for stream in list(self._streams):
            stream.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._forward(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        self._streams.add(to_client)
        try:
            broker, to_broker = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            to_client.close()
            self._streams.discard(to_client)
            return
        self._streams.add(to_broker)
        try:
            await asyncio.gather(_pipe(client, to_broker), _pipe(broker, to_client))
        finally:
            self._streams.difference_update((to_client, to_broker))


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until either side ends, then close ``sink`` (which ends the other direction)."""
    try:
        while data := await source.read(1 << 16):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass
    finally:
        sink.close()


@dataclass
class Secured:
    """The TLS broker: its proxy, the certificates, and the CA-only client options."""

    proxy: TlsProxy
    ca: trustme.CA
    files: dict[str, str]

    @property
    def servers(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"

    @property
    def options(self) -> dict[str, Any]:
        return {
            "type": "kafka",
            "bootstrap-servers": self.servers,
            "security-protocol": "SSL",
            "ssl-cafile": self.files["ca"],
            **FAST_GROUPS,
        }

    @property
    def mutual(self) -> dict[str, Any]:
        """The options with the client certificate and its encrypted key."""
        return {
            **self.options,
            "ssl-certfile": self.files["client-cert"],
            "ssl-keyfile": self.files["client-key"],
            "ssl-password": PASSWORD,
        }

    def serve(self, *hostnames: str, client_certs: bool = False) -> None:
        """Have the proxy serve :func:`server_context` from now on."""
        self.proxy.serve(server_context(self.ca, *hostnames, client_certs=client_certs))


def server_context(ca: trustme.CA, *hostnames: str, client_certs: bool = False) -> ssl.SSLContext:
    """A certificate from ``ca`` for ``hostnames`` (default 127.0.0.1 and localhost);
    ``client_certs`` requires a client certificate issued by ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(hostnames or ("127.0.0.1", "localhost"))).configure_cert(context)
    if client_certs:
        context.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(context)
    return context


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A dedicated Tansu reachable only through the TLS proxy, for this module."""
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    client = ca.issue_cert("streambinder-client")
    files = {
        "ca": _write(folder / "ca.pem", ca.cert_pem.bytes()),
        "other-ca": _write(folder / "other-ca.pem", trustme.CA().cert_pem.bytes()),
        "client-cert": _write(folder / "client.pem", client.cert_chain_pems[0].bytes()),
        "client-key": _write(folder / "client-key.pem", _encrypted(client.private_key_pem.bytes())),
    }
    proxy = TlsProxy()
    try:
        broker = Tansu(advertised_port=proxy.start(server_context(ca)))
        proxy.target = broker.port
        with broker:
            yield Secured(proxy, ca, files)
    finally:
        proxy.stop()


@pytest.fixture
def connect(secured: Secured) -> Iterator[Connect]:
    """``connect(options)``: the binder with these options over TLS. Afterwards the proxy
    serves its default certificate again and every topic a test declared is deleted."""
    made: list[Conformance] = []

    def make(options: Mapping[str, Any]) -> Conformance:
        made.append(Conformance(options))
        return made[-1]

    yield make
    secured.serve()
    for suite in made:
        run(suite.cleanup())


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _encrypted(key_pem: bytes) -> bytes:
    """``key_pem`` re-serialized, encrypted with :data:`PASSWORD`."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSWORD.encode()),
    )


async def _start(suite: Conformance) -> None:
    async with suite.binder():
        pass


def test_an_app_round_trip_over_tls(
    secured: Secured, connect: Connect, topic: str, group: str
) -> None:
    suite = connect(secured.options)
    upper_out = f"{topic}-upper"
    app = suite.app(
        {
            "upper-in-0": {"destination": topic, "group": group},
            "upper-out-0": {"destination": upper_out},
            "sink-in-0": {"destination": upper_out, "group": group},
        }
    )
    inbox: Inbox[str] = Inbox()

    @app.function
    async def upper(payload: str) -> str:
        return payload.upper()

    @app.consumer
    async def sink(payload: str) -> None:
        inbox.add(payload)

    async def scenario() -> list[str]:
        async with app:
            await app.send(topic, "over tls")
            return await inbox.wait_for("OVER TLS")

    assert run(scenario(), BOUND) == ["OVER TLS"]


def test_mutual_tls_needs_the_client_certificate(
    secured: Secured,
    connect: Connect,
    topic: str,
    group: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secured.serve(client_certs=True)
    suite = connect(secured.mutual)
    sent = OutboundRecord(b"mutual", b"k", {})

    async def round_trip() -> list[bytes]:
        async with suite.binder() as binder:
            await suite.send_raw(binder, topic, [sent])
        return [r.value for r in await suite.read_raw(topic, group, 1)]

    assert run(round_trip(), BOUND) == [b"mutual"]
    with pytest.raises(BackendError, match=f"kafka at {secured.servers}: connect failed") as no:
        run(_start(connect({**secured.options, **FAIL_FAST})), BOUND)
    assert "Loading SSL Key" in caplog.text, "the key was loaded while logging at DEBUG"
    assert PASSWORD not in caplog.text
    assert PASSWORD not in str(no.value)


def test_a_broker_the_ca_does_not_vouch_for_is_refused(secured: Secured, connect: Connect) -> None:
    strange = connect({**secured.options, "ssl-cafile": secured.files["other-ca"], **FAIL_FAST})
    with pytest.raises(BackendError, match=f"kafka at {secured.servers}: connect failed") as no:
        run(_start(strange), BOUND)
    assert "certificate verify failed: unable to get local issuer" in str(no.value), "says why"


def test_the_hostname_is_checked_unless_turned_off(
    secured: Secured, connect: Connect, topic: str, group: str
) -> None:
    secured.serve("broker.example")
    checked = connect({**secured.options, "ssl-check-hostname": True, **FAIL_FAST})
    with pytest.raises(BackendError, match=f"kafka at {secured.servers}: connect failed") as no:
        run(_start(checked), BOUND)
    assert "IP address mismatch, certificate is not valid for '127.0.0.1'" in str(no.value)
    unchecked = connect({**secured.options, "ssl-check-hostname": False})
    sent = OutboundRecord(b"trusted ca, other name", None, {})

    async def round_trip() -> list[bytes]:
        async with unchecked.binder() as binder:
            await unchecked.send_raw(binder, topic, [sent])
        return [r.value for r in await unchecked.read_raw(topic, group, 1)]

    assert run(round_trip(), BOUND) == [sent.value]


def test_a_wrong_or_missing_ssl_password_is_a_config_error(
    secured: Secured, connect: Connect
) -> None:
    wrong = connect({**secured.mutual, "ssl-password": "not-the-password"})
    with pytest.raises(ConfigError, match=r"\.ssl-password: ssl-password does not decrypt") as bad:
        run(_start(wrong), BOUND)
    assert "not-the-password" not in str(bad.value)
    missing = connect({k: v for k, v in secured.mutual.items() if k != "ssl-password"})
    with pytest.raises(ConfigError, match=r"\.ssl-password: ssl-keyfile is encrypted"):
        run(_start(missing), BOUND)


def test_a_missing_ssl_file_is_a_config_error_naming_its_key(
    secured: Secured, connect: Connect, tmp_path: Path
) -> None:
    absent = str(tmp_path / "absent.pem")
    for key in ("ssl-cafile", "ssl-certfile", "ssl-keyfile"):
        suite = connect({**secured.mutual, key: absent})
        with pytest.raises(ConfigError, match=rf"\.{key}: no such file.*absent\.pem"):
            run(_start(suite), BOUND)
