"""Running a pipeline on received records: decode, call each stage, collect the outputs.

Returning ``None`` sends nothing. Returning a plain value sends it with the
input's key and user headers (the core's own ``x-…`` and ``contentType``
headers are not carried over); returning a :class:`Message` sets key and
headers explicitly. In batch mode a returned list sends one message per item.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from binder.converters import JSON, ConverterRegistry, Target, _identity, mime_base
from binder.errors import ConversionError, HandlerError
from binder.functions import FunctionDef, Pipeline
from binder.message import (
    CONTENT_TYPE,
    DELAY,
    DELIVER_AT,
    DELIVERY_ATTEMPT,
    EXPIRES_AT,
    Message,
    decode_key,
)
from binder.spi import InboundRecord

__all__ = ["Invoker", "Output", "propagated_headers"]

Output = tuple[Any, Any, dict[str, str]]
"""(payload, key, headers) of one message to send."""

_MAX_DECODERS = 16
_CORE_PREFIXES = ("x-exception-", "x-original-")
_CORE_NAMES = frozenset({CONTENT_TYPE, DELIVERY_ATTEMPT, DELAY, DELIVER_AT, EXPIRES_AT})


def propagated_headers(headers: dict[str, str]) -> dict[str, str]:
    """The input headers an output keeps: all but the core's own."""
    if not headers or (len(headers) == 1 and CONTENT_TYPE in headers):
        return {}
    return {
        name: value
        for name, value in headers.items()
        if name not in _CORE_NAMES and not name.startswith(_CORE_PREFIXES)
    }


class Invoker:
    """Calls one pipeline for one input binding; built once at start-up."""

    def __init__(
        self, pipeline: Pipeline, converters: ConverterRegistry, content_type: str, batch: bool
    ) -> None:
        self.pipeline = pipeline
        self.batch = batch
        self._converters = converters
        self._content_type = mime_base(content_type)
        self._first = pipeline.stages[0]
        self._rest = pipeline.stages[1:]
        param = self._first.param
        assert param is not None
        self._wants_message = param.wants_message
        self._target = param.target if batch or param.whole is None else param.whole
        self._decoders: dict[str | None, Callable[[bytes], Any]] = {}
        self._simple = not self._wants_message and not self._rest
        self._has_output = pipeline.has_output
        self._fn = self._first.fn
        self.direct: Callable[[Any], Awaitable[Any]] | None = (
            self._fn if self._simple and self._first.is_async else None
        )
        """The function itself when the pipeline is one async stage taking the payload:
        a binding then awaits ``direct(payload(record))`` in its own loop, with no
        per-message wrapper, and maps what it raises with :meth:`failure` and what it
        returns with :meth:`outputs`."""

    # -- decoding ---------------------------------------------------------------------------

    def payload(self, record: InboundRecord) -> Any:
        """The record's payload, decoded by its content type and adapted to the parameter type;
        a tombstone (no value) is not decoded: see :meth:`tombstone`."""
        data = record.value
        if data is None:
            return self.tombstone()
        content_type = record.headers.get(CONTENT_TYPE)
        decode = self._decoders.get(content_type)
        if decode is None:
            decode = self._decoder(content_type)
        return decode(data)

    def tombstone(self) -> None:
        """The payload of a tombstone: ``None`` for a ``Message`` parameter or one whose type
        accepts ``None``; for any other, :class:`ConversionError` (dead-lettered)."""
        if self._wants_message or self._target.accepts_none:
            return None
        raise ConversionError(
            f"the record is a tombstone (no value), but the parameter of {self._first.name!r} "
            f"({_type_name(self._target.type)}) does not accept None; annotate it "
            "Optional[...] or Message[...] to receive tombstones"
        )

    def decoder(self, content_type: str | None) -> Callable[[bytes], Any]:
        """bytes → adapted payload for records with ``content_type`` (``None``: without
        one, so the binding's own)."""
        decode = self._decoders.get(content_type)
        return decode if decode is not None else self._decoder(content_type)

    def _decoder(self, content_type: str | None) -> Callable[[bytes], Any]:
        """bytes → adapted payload for one content type; a few are kept (bounded). Spring's
        forms are read too (quoted, with parameters); an empty one is the binding's own."""
        base = (mime_base(content_type) if content_type else "") or self._content_type
        target = self._target
        decode: Callable[[bytes], Any]
        if target.type is bytes:  # a bytes parameter takes the payload as it came
            decode = _identity
        elif base == JSON and target.from_json is not None:
            decode = target.from_json
        else:
            converter = self._converters.get(base)
            decode = _compose(converter.decode, target)
        if len(self._decoders) < _MAX_DECODERS:
            self._decoders[content_type] = decode
        return decode

    def argument(self, record: InboundRecord, attempt: int) -> Any:
        """What the first stage is called with for ``record``."""
        payload = self.payload(record)
        if not self._wants_message:
            return payload
        return _received(payload, record, attempt)

    def batch_argument(self, records: Sequence[InboundRecord], attempt: int) -> list[Any]:
        """The list a batch-mode function is called with."""
        return [self.argument(record, attempt) for record in records]

    # -- calling ----------------------------------------------------------------------------

    def run(self, record: InboundRecord, attempt: int) -> list[Output]:
        """Process one record with a fully synchronous pipeline."""
        if self._simple:  # the hot path: one stage taking the payload
            payload = self.payload(record)
            try:
                result = self._fn(payload)
            except ConversionError:
                raise
            except Exception as exc:
                raise _handler_error(self._first, exc) from exc
            return self._outputs(result, record.key, record.headers)
        result = _call(self._first, self.argument(record, attempt))
        key, headers = decode_key(record.key), record.headers
        for stage in self._rest:
            if result is None:
                return []
            key, headers = _carried(result, key, headers)
            result = _call(stage, _next_argument(stage, result, key, headers))
        return self._outputs(result, key, headers)

    async def run_async(self, record: InboundRecord, attempt: int) -> list[Output]:
        """Process one record; async stages are awaited, sync ones run off the loop."""
        if self._simple and self._first.is_async:  # the hot path: one async stage, payload
            payload = self.payload(record)
            try:
                result = await self._fn(payload)
            except ConversionError:
                raise
            except Exception as exc:
                raise _handler_error(self._first, exc) from exc
            return self._outputs(result, record.key, record.headers)
        result = await _acall(self._first, self.argument(record, attempt))
        key, headers = decode_key(record.key), record.headers
        for stage in self._rest:
            if result is None:
                return []
            key, headers = _carried(result, key, headers)
            result = await _acall(stage, _next_argument(stage, result, key, headers))
        return self._outputs(result, key, headers)

    def run_batch(self, records: Sequence[InboundRecord], attempt: int) -> list[Output]:
        """Batch mode, synchronous function: one call with the whole list."""
        result = _call(self._first, self.batch_argument(records, attempt))
        for stage in self._rest:
            if result is None:
                return []
            result = _call(stage, _batch_next(stage, result))
        return self._batch_outputs(result, records)

    async def run_batch_async(self, records: Sequence[InboundRecord], attempt: int) -> list[Output]:
        """Batch mode, async function."""
        result = await _acall(self._first, self.batch_argument(records, attempt))
        for stage in self._rest:
            if result is None:
                return []
            result = await _acall(stage, _batch_next(stage, result))
        return self._batch_outputs(result, records)

    @staticmethod
    def single_output(
        value: Any, key: Any = None, headers: dict[str, str] | None = None
    ) -> list[Output]:
        """What one returned value sends (``None``: nothing; a Message: its key and headers)."""
        if value is None:
            return []
        if isinstance(value, Message):
            return [(value.payload, value.key, value.headers)]
        return [(value, key, propagated_headers(headers or {}))]

    @staticmethod
    async def feed(tail: Pipeline, value: Any) -> list[Output]:
        """Run ``value`` (a supplier's result) through the rest of a composition."""
        key, headers = (value.key, value.headers) if isinstance(value, Message) else (None, {})
        result = value
        for stage in tail.stages:
            if result is None:
                return []
            key, headers = _carried(result, key, headers)
            result = await _acall(stage, _next_argument(stage, result, key, headers))
        if not tail.has_output:
            return []
        return Invoker.single_output(result, key, headers)

    # -- results ----------------------------------------------------------------------------

    def failure(self, exc: Exception) -> Exception:
        """What a failure of the first stage becomes: a ConversionError stays as it is,
        anything else a HandlerError naming the function (caused by ``exc``)."""
        if isinstance(exc, ConversionError):
            return exc
        error = _handler_error(self._first, exc)
        error.__cause__ = exc
        return error

    def outputs(self, result: Any, key: Any, headers: dict[str, str]) -> list[Output]:
        """What the pipeline's ``result`` for an input with ``key`` and ``headers`` sends."""
        return self._outputs(result, key, headers)

    def _outputs(self, result: Any, key: Any, headers: dict[str, str]) -> list[Output]:
        if result is None or not self._has_output:
            return []
        if type(result) is not dict and isinstance(result, Message):
            return [(result.payload, result.key, result.headers)]
        return [(result, key, propagated_headers(headers))]

    def _batch_outputs(self, result: Any, records: Sequence[InboundRecord]) -> list[Output]:
        if result is None or not self.pipeline.has_output:
            return []
        items = result if isinstance(result, list) else [result]
        outputs: list[Output] = []
        for item in items:
            if isinstance(item, Message):
                outputs.append((item.payload, item.key, item.headers))
            elif item is not None:
                outputs.append((item, None, {}))
        return outputs


def _compose(decode: Callable[[bytes], Any], target: Target) -> Callable[[bytes], Any]:
    """decode, then adapt; an exact builtin type that already matches skips the adapter."""
    adapt, exact = target.adapt, target.exact
    if adapt is _identity:
        return decode
    if exact is None:
        return lambda data: adapt(decode(data))

    def decode_exact(data: bytes) -> Any:
        value = decode(data)
        return value if type(value) is exact else adapt(value)

    return decode_exact


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or repr(annotation)


def _received(payload: Any, record: InboundRecord, attempt: int) -> Message[Any]:
    message: Message[Any] = Message.__new__(Message)
    message.payload = payload
    message.key = decode_key(record.key)
    message.headers = {**record.headers, DELIVERY_ATTEMPT: str(attempt)}
    message.destination = record.destination
    message.partition = record.partition
    message.offset = record.offset
    message.timestamp = record.timestamp
    return message


def _carried(result: Any, key: Any, headers: dict[str, str]) -> tuple[Any, dict[str, str]]:
    """The key and headers a stage's result passes on: a returned Message's own, else as before."""
    if isinstance(result, Message):
        return result.key, result.headers
    return key, headers


def _next_argument(stage: FunctionDef, result: Any, key: Any, headers: dict[str, str]) -> Any:
    """Feed one stage's result to the next, converting to the type it declares."""
    param = stage.param
    assert param is not None
    target = param.whole or param.target  # a later stage is never called in batch mode
    payload = target.adapt(result.payload if isinstance(result, Message) else result)
    if param.wants_message:
        return Message(payload, key=key, headers=headers)
    return payload


def _batch_next(stage: FunctionDef, result: Any) -> Any:
    """In batch mode a composition passes lists along: adapt each element (or the whole)."""
    param = stage.param
    assert param is not None
    if not (param.batch and isinstance(result, list)):
        return _next_argument(stage, result, None, {})
    if param.wants_message:
        return [_next_argument(stage, item, *_carried(item, None, {})) for item in result]
    return [
        param.target.adapt(item.payload if isinstance(item, Message) else item) for item in result
    ]


def _call(stage: FunctionDef, argument: Any) -> Any:
    try:
        return stage.fn(argument)
    except ConversionError:
        raise
    except Exception as exc:
        raise _handler_error(stage, exc) from exc


def _handler_error(stage: FunctionDef, exc: Exception) -> HandlerError:
    return HandlerError(f"{stage.name} raised {type(exc).__name__}: {exc}")


async def _acall(stage: FunctionDef, argument: Any) -> Any:
    try:
        if stage.is_async:
            return await stage.fn(argument)
        return await asyncio.to_thread(stage.fn, argument)
    except ConversionError:
        raise
    except Exception as exc:
        raise HandlerError(f"{stage.name} raised {type(exc).__name__}: {exc}") from exc
