"""OpenTelemetry tracing of sends and of handling (the ``otel`` extra).

Every record a binding sends gets a ``"<destination> publish"`` span (kind PRODUCER), a
child of the span current where the record was made, and carries its W3C ``traceparent``
(and ``tracestate``) headers, so whoever reads it continues the trace, in this process or
another, on any backend. Every message handed to a function gets a ``"<destination>
process"`` span (kind CONSUMER) around the call, a child of the context extracted from the
message's headers; the function's outputs are made inside it, so their publish spans are
its children and input and outputs share one trace. An attempt that fails records its
exception on its span (status ERROR); each retry has a span of its own. A dead letter
keeps the original's ``traceparent``: its publish span is a child of the original's
context and is not injected.

Attributes follow the messaging semantic conventions: ``messaging.system`` (the binder's
:attr:`messaging_system`: ``kafka``, ``redis``, ``rabbitmq``, ``streambinder`` for the log),
``messaging.destination.name``, ``messaging.consumer.group.name``,
``messaging.destination.partition.id``, ``messaging.message.id`` (the offset, or the
backend's own id: Redis' entry id), ``messaging.operation.type`` and
``messaging.operation.name`` (``publish`` or ``process``).

Which tracer provider: the app's (``App(tracer_provider=...)``) or else OpenTelemetry's
global one as it is when the app starts. Nothing is done when that is the API's default (no
SDK configured by then), and nothing at all, not even an import, when ``opentelemetry-api``
is not installed: the bindings are then built without tracing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from binder.outgoing import Outgoing
from binder.retry import cause_of
from binder.spi import InboundRecord, OutboundRecord

try:
    from opentelemetry import context as _context
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
except ImportError:  # the otel extra is not installed
    _trace = None

__all__ = ["Tracing", "tracing"]

ANONYMOUS = "anonymous"
TRACEPARENT = "traceparent"


class Tracing:
    """One app's tracing, with the tracer of a configured provider (see :func:`tracing`)."""

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer

    # -- sending ----------------------------------------------------------------------------

    def publish(self, system: str, destination: str, record: Outgoing) -> None:
        """Start ``record``'s publish span under the current context and inject its
        context into the record's headers. Sent where no span is current (``app.send``
        outside a handler) with a ``traceparent`` header of the caller's, the span continues
        that trace."""
        headers = record.headers
        parent = None  # the current context; a traceparent the caller gave when none is current
        if TRACEPARENT in headers and not _trace.get_current_span().get_span_context().is_valid:
            parent = _propagate.extract(headers)
        span = self.tracer.start_span(
            f"{destination} publish",
            context=parent,
            kind=_trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": system,
                "messaging.destination.name": destination,
                "messaging.destination.partition.id": str(record.partition),
                "messaging.operation.type": "publish",
                "messaging.operation.name": "publish",
            },
        )
        record.span = span
        _propagate.inject(headers, context=_trace.set_span_in_context(span))

    def letters(
        self,
        system: str,
        destination: str,
        originals: Sequence[InboundRecord],
        letters: list[OutboundRecord],
    ) -> list[OutboundRecord]:
        """Dead letters with publish spans under their originals' contexts; the letters'
        headers (the originals', with their ``traceparent``) are left as they are."""
        tracer = self.tracer
        traced: list[OutboundRecord] = []
        for original, letter in zip(originals, letters, strict=True):
            record = Outgoing(
                letter.value, letter.key, letter.headers, letter.partition, letter.raw_headers
            )
            record.span = tracer.start_span(
                f"{destination} publish",
                context=_propagate.extract(original.headers),
                kind=_trace.SpanKind.PRODUCER,
                attributes={
                    "messaging.system": system,
                    "messaging.destination.name": destination,
                    "messaging.operation.type": "publish",
                    "messaging.operation.name": "publish",
                    "streambinder.dead_letter.original_destination": original.destination,
                },
            )
            traced.append(record)
        return traced

    # -- handling ---------------------------------------------------------------------------

    def process(
        self,
        system: str,
        group: str | None,
        record: InboundRecord,
        attempt: int,
    ) -> Scope:
        """Start ``record``'s process span under the context its headers carry and make it
        current; :meth:`Scope.close` ends it (with the attempt's exception, if any)."""
        attributes: dict[str, Any] = {
            "messaging.system": system,
            "messaging.destination.name": record.destination,
            "messaging.consumer.group.name": group or ANONYMOUS,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "streambinder.delivery_attempt": attempt,
        }
        message_id = record.offset if record.offset is not None else record.message_id
        if message_id is not None:
            attributes["messaging.message.id"] = str(message_id)
        span = self.tracer.start_span(
            f"{record.destination} process",
            context=_propagate.extract(record.headers) if record.headers else None,
            kind=_trace.SpanKind.CONSUMER,
            attributes=attributes,
        )
        return Scope(span, _context.attach(_trace.set_span_in_context(span)))

    def process_batch(
        self, system: str, group: str | None, records: Sequence[InboundRecord]
    ) -> Scope:
        """One process span for a batch call, linked to every message's context (a batch
        has no one parent)."""
        links = []
        for record in records:
            if record.headers:
                context = _trace.get_current_span(_propagate.extract(record.headers))
                if context.get_span_context().is_valid:
                    links.append(_trace.Link(context.get_span_context()))
        first = records[0]
        span = self.tracer.start_span(
            f"{first.destination} process",
            kind=_trace.SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": system,
                "messaging.destination.name": first.destination,
                "messaging.consumer.group.name": group or ANONYMOUS,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.batch.message_count": len(records),
            },
        )
        return Scope(span, _context.attach(_trace.set_span_in_context(span)))


class Scope:
    """A current process span; :meth:`close` once, in the context (thread) it began in."""

    __slots__ = ("span", "token")

    def __init__(self, span: Any, token: Any) -> None:
        self.span = span
        self.token = token

    def close(self, exc: BaseException | None = None) -> None:
        _context.detach(self.token)
        if exc is not None:
            failed(self.span, exc)
        self.span.end()


def failed(span: Any, exc: BaseException) -> None:
    """Record ``exc`` (what the function raised, for a handler's failure) on ``span`` and
    mark it an error."""
    exc = cause_of(exc)
    span.record_exception(exc)
    span.set_status(_trace.Status(_trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def end_sent(records: Sequence[OutboundRecord], exc: BaseException | None = None) -> None:
    """End the publish spans of sent (or, with ``exc``, refused) records."""
    for record in records:
        span = getattr(record, "span", None)
        if span is not None:
            if exc is not None:
                failed(span, exc)
            span.end()
            record.span = None


def tracing(provider: Any = None) -> Tracing | None:
    """The :class:`Tracing` of an app starting now with ``provider`` (``None``: the global
    one), or ``None`` when there is nothing to do: ``opentelemetry-api`` is not installed, or
    no provider is given and the global one is still the API's default (no SDK configured)."""
    if _trace is None:
        return None
    if provider is None:
        provider = _trace.get_tracer_provider()
        if isinstance(provider, (_trace.ProxyTracerProvider, _trace.NoOpTracerProvider)):
            return None
    from binder import __version__

    return Tracing(provider.get_tracer("streambinder", __version__))
