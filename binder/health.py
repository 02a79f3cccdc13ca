"""The app's health, and the small HTTP server ``binder run --metrics-port`` starts.

``GET /health/live`` answers 200 while the process runs; ``GET /health/ready`` 200 when every
binding is ``running`` or ``paused``, else 503, with the body of :func:`health` as JSON;
``GET /metrics`` the Prometheus text format of the app's registry (the ``metrics`` extra,
``prometheus_client``; without it, or with ``binder.metrics.enabled: false``, 501 saying
so). Anything else is 404.

The server runs on the app's event loop (``asyncio.start_server``): a scrape reads the
bindings' states where they change, and costs nothing between scrapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson

__all__ = ["HealthServer", "health"]

log = logging.getLogger("binder.health")

READY_STATES = frozenset({"running", "paused"})

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 501: "Not Implemented"}
_REASONS[503] = "Service Unavailable"
_REQUEST_LIMIT = 8192
"""Bytes of request line and headers read at most; a longer request is answered 404."""


def health(bindings: Mapping[str, Any]) -> dict[str, Any]:
    """``{"status": "up"|"down", "bindings": {name: {"state": ..., "error": ...}}}``: up when
    every binding is ``running`` or ``paused`` (and when there are none)."""
    states = {
        name: {
            "state": str(binding.state),
            "error": None if binding.error is None else str(binding.error),
        }
        for name, binding in bindings.items()
    }
    up = all(entry["state"] in READY_STATES for entry in states.values())
    return {"status": "up" if up else "down", "bindings": states}


class HealthServer:
    """Serves health and metrics on ``host:port`` (port 0: any free one, see :attr:`port`).

    ``metrics`` makes the ``/metrics`` text, or is why there is none (answered with 501)."""

    def __init__(
        self,
        report: Callable[[], dict[str, Any]],
        metrics: Callable[[], bytes] | str,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._report = report
        self._metrics = metrics
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("serving /metrics and /health on http://%s:%d", self.host, self.port)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(10):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError):
                return
            if len(head) > _REQUEST_LIMIT:
                status, kind, body = 404, "text/plain", b"request too large\n"
            else:
                status, kind, body = self._answer(head.split(b"\r\n", 1)[0])
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _answer(self, line: bytes) -> tuple[int, str, bytes]:
        parts = line.split()
        if len(parts) != 3:
            return 404, "text/plain", b"not found\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return 405, "text/plain", b"only GET\n"
        if target == b"/health/live":
            return 200, "application/json", b'{"status":"up"}'
        if target == b"/health/ready":
            report = self._report()
            return (
                (200 if report["status"] == "up" else 503),
                "application/json",
                orjson.dumps(report),
            )
        if target == b"/metrics":
            if isinstance(self._metrics, str):
                return 501, "text/plain", f"{self._metrics}\n".encode()
            return 200, "text/plain; version=0.0.4; charset=utf-8", self._metrics()
        return 404, "text/plain", b"not found\n"
