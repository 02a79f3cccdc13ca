"""``binder send`` and ``binder tail``: put messages on a destination and look at what is
there, through the configured binder (the same encoding, partitioning and headers as an app's
sends; reading as an anonymous consumer, or as a member of ``--group``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections import deque
from collections.abc import Iterator
from typing import Any

import orjson

from binder._settings_env import parse_duration
from binder.commands.common import (
    Source,
    add_source_options,
    fail,
    opened_binder,
    row_of,
    source_of,
    text_row,
)
from binder.errors import BinderError
from binder.message import DELAY
from binder.outputs import OutputBinding
from binder.spi import ConsumerSpec, InboundRecord

__all__ = ["add"]

IDLE = 1.0
"""Seconds without a new message after which ``binder tail`` (without ``--follow``) is done."""


def add(commands: Any) -> None:
    send = commands.add_parser(
        "send",
        help="send one message (or one a line with --lines) to a destination",
        description="Send through the configured binder, encoded and partitioned as an app's "
        "sends are; prints where each message went (partition, and offset or entry id where "
        "the backend has one).",
    )
    send.add_argument("destination", help="a destination, or a configured binding's name")
    send.add_argument("payload", nargs="?", help="the payload; '-' reads standard input")
    send.add_argument("--file", help="read the payload from this file")
    send.add_argument("--lines", action="store_true", help="one message per line of the input")
    send.add_argument("--key", help="the message key")
    send.add_argument(
        "--header", action="append", default=[], metavar="NAME=VALUE", help="a header (repeat)"
    )
    send.add_argument("--delay", help="deliver no earlier than this from now: 5s, 250ms, 1h, 2d")
    send.add_argument(
        "--content-type",
        default="application/json",
        help="application/json (the payload is JSON text; default), text/plain, "
        "application/octet-stream",
    )
    send.add_argument("--format", choices=["text", "json"], default="text")
    add_source_options(send)
    send.set_defaults(handler=_send)

    tail = commands.add_parser(
        "tail",
        help="print the messages of a destination",
        description="Print messages with partition, offset, key, headers and payload. Without "
        "--group it reads anonymously and commits nothing; with --group it is a member of that "
        "group and commits what it printed. Without --follow it stops once no message came "
        f"for {IDLE:g} s.",
    )
    tail.add_argument("destination", help="a destination, or a configured binding's name")
    start = tail.add_mutually_exclusive_group()
    start.add_argument("--group", help="read as a member of this group (committing)")
    start.add_argument("--from-beginning", action="store_true", help="from the oldest message kept")
    start.add_argument("--last", type=int, metavar="N", help="the last N messages kept")
    tail.add_argument("--follow", action="store_true", help="keep printing new messages")
    tail.add_argument("--limit", type=int, metavar="N", help="stop after N messages")
    tail.add_argument("--format", choices=["text", "json"], default="text")
    add_source_options(tail)
    tail.set_defaults(handler=_tail)


# -- send ------------------------------------------------------------------------------------


def _inputs(args: argparse.Namespace) -> Iterator[str | bytes]:
    """The payloads to send, as text (bytes for octet-stream)."""
    binary = args.content_type == "application/octet-stream"
    if args.file:
        with open(args.file, "rb") as handle:
            data = handle.read()
    elif args.payload == "-" or (args.payload is None and args.lines):
        data = sys.stdin.buffer.read()
    elif args.payload is not None:
        data = args.payload.encode()
    else:
        raise SystemExit(fail("give a payload, '-' for standard input, or --file", 2))
    chunks = data.splitlines() if args.lines else [data]
    for chunk in chunks:
        if args.lines and not chunk.strip():
            continue
        yield chunk if binary else chunk.decode()


def _payload_of(text: str | bytes, content_type: str) -> Any:
    if content_type.split(";")[0].strip() != "application/json":
        return text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        shown = text[:60] if isinstance(text, str) else text[:60].decode("utf-8", "replace")
        raise SystemExit(
            fail(f"payload {shown!r} is not JSON ({exc}); use --content-type text/plain", 2)
        ) from None


def _headers(args: argparse.Namespace) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(fail(f"--header {item!r}: expected NAME=VALUE", 2))
        headers[name] = value
    if args.delay is not None:
        try:
            seconds = parse_duration(args.delay)
        except ValueError:
            raise SystemExit(
                fail(f"--delay {args.delay!r}: expected 5s, 250ms, 1h, 2d", 2)
            ) from None
        headers[DELAY] = str(round(seconds * 1000))
    return headers


def _send(args: argparse.Namespace) -> int:
    source = source_of(args)
    payloads = [_payload_of(text, args.content_type) for text in _inputs(args)]
    headers = _headers(args)
    try:
        places = asyncio.run(_send_all(source, args, payloads, headers))
    except BinderError as exc:
        return fail(str(exc))
    for partition, where in places:
        if args.format == "json":
            print(orjson.dumps({"partition": partition, "offset": where}).decode())
        else:
            print(f"sent to partition {partition} at {where if where is not None else '-'}")
    return 0


async def _send_all(
    source: Source, args: argparse.Namespace, payloads: list[Any], headers: dict[str, str]
) -> list[tuple[int, Any]]:
    destination = source.destination(args.destination)
    binding = source.section.binding(args.destination)
    producer = binding.producer if binding is not None else None
    async with opened_binder(source) as binder:
        output = OutputBinding(
            "binder-send",
            destination,
            binder,
            source.converters,
            content_type=args.content_type,
            partition_count=producer.partition_count if producer else 1,
            key_expression=producer.key_expression if producer else None,
        )
        await output.start()
        try:
            records = [output.record(p, args.key, dict(headers)) for p in payloads]
            return await output.send_located(records)
        finally:
            await output.close()


# -- tail ------------------------------------------------------------------------------------


class _Quiet:
    """A rebalance listener with nothing in flight."""

    async def on_revoked(self, partitions: set[int]) -> None:
        return None

    async def on_assigned(self, partitions: set[int]) -> None:
        return None


def _tail(args: argparse.Namespace) -> int:
    source = source_of(args)
    if args.last is not None and args.last < 1:
        return fail("--last must be 1 or more", 2)
    try:
        asyncio.run(_read(source, args))
    except BinderError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return 0
    return 0


async def _read(source: Source, args: argparse.Namespace) -> None:
    destination = source.destination(args.destination)
    start = "earliest" if args.from_beginning or args.last else None
    spec = ConsumerSpec(destination, args.group, start=start)
    last: deque[dict[str, Any]] | None = deque(maxlen=args.last) if args.last else None
    shown = 0
    async with opened_binder(source) as binder:
        consumer = await binder.consumer(spec, _Quiet())
        try:
            while args.limit is None or shown < args.limit:
                records = await _fetch(consumer, None if args.follow and last is None else IDLE)
                if records is None:  # caught up
                    if last is None or not args.follow:
                        break
                    _print_all(last, args)
                    last = None
                    continue
                if not records:
                    break  # the consumer closed
                records = records[: None if args.limit is None else args.limit - shown]
                rows = [row_of(r, source.converters) for r in records]
                shown += len(rows)
                if last is not None:
                    last.extend(rows)
                else:
                    _print_all(rows, args)
                if args.group is not None:
                    await consumer.commit(records)
            if last is not None:
                _print_all(last, args)
        finally:
            await consumer.close()


async def _fetch(consumer: Any, idle: float | None) -> list[InboundRecord] | None:
    """The next records; ``None`` when none came within ``idle`` seconds."""
    if idle is None:
        return await consumer.fetch()
    task = asyncio.ensure_future(consumer.fetch())
    done, _ = await asyncio.wait([task], timeout=idle)
    if not done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return None
    return task.result()


def _print_all(rows: Any, args: argparse.Namespace) -> None:
    for row in rows:
        if args.format == "json":
            sys.stdout.write(orjson.dumps(row, default=str).decode() + "\n")
        else:
            sys.stdout.write(text_row(row) + "\n")
    sys.stdout.flush()
