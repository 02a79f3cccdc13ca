"""``binder dlq list|show|replay``: look at a group's dead letters and send them back.

The dead-letter destination of ``DEST`` and ``--group G`` is ``<DEST>.<G>.dlq`` (or
``--dlq NAME``). ``list`` and ``show`` read it without taking anything: anonymously from the
beginning where the backend replays to new readers, else (RabbitMQ: its letters wait in a
queue of their own) as a reader that acknowledges nothing, so the broker keeps them.

``replay`` reads it as the group ``--replay-group`` (default ``replay``) and, letter by letter,
republishes the original (payload, key and headers, less the dead letter's own ``x-`` headers)
to its ``x-original-destination`` (or ``--to``) with ``x-replay-count`` incremented, and only
once that was accepted commits the letter under the replay group: a replay interrupted and run
again goes on after the last letter it committed, never losing one. A letter replayed
``--max-replays`` times already goes to ``<dlq>.parked`` instead of looping; one that does not
match ``--filter`` is put back at the end of the dead-letter destination (so a later replay,
with another filter, still finds it). The one window: a kill between a letter's republish and
its commit republishes that one letter again on the next run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson

from binder.commands.common import (
    Source,
    add_source_options,
    fail,
    opened_binder,
    row_of,
    source_of,
)
from binder.commands.messages import IDLE, _fetch, _Quiet
from binder.errors import BinderError, ExpressionError
from binder.message import (
    DELIVERY_ATTEMPT,
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    EXCEPTION_TYPE,
    ORIGINAL_DESTINATION,
    decode_key,
)
from binder.outputs import OutputBinding
from binder.partitioning import Filter, compile_filter
from binder.retry import dead_letter_destination
from binder.spi import Binder, ConsumerSpec, InboundRecord

__all__ = ["REPLAY_COUNT", "add", "replayed_headers"]

REPLAY_COUNT = "x-replay-count"
"""How many times a letter was replayed (set on the republished message)."""
PASS = "x-replay-pass"
"""On a letter put back by a replay: that replay's id (it stops when it meets one again)."""
_LETTER_PREFIXES = ("x-exception-", "x-original-")
_INSPECT = "streambinder.dlq-inspect"
"""The group ``list``/``show`` read a letters queue as, on a backend without replays."""


def add(commands: Any) -> None:
    dlq = commands.add_parser("dlq", help="list, show or replay a group's dead letters")
    actions = dlq.add_subparsers(dest="action", required=True)
    listing = actions.add_parser(
        "list",
        help="the letters counted by x-exception-type, with the oldest and newest",
        description="Count the dead letters of DEST's group by x-exception-type, with the "
        "oldest and newest of each; takes nothing.",
    )
    show = actions.add_parser(
        "show",
        help="the letters with their headers and stack trace",
        description="Print the dead letters with their headers and stack trace; takes nothing.",
    )
    show.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    replay = actions.add_parser(
        "replay",
        help="send the letters back to their original destination",
        description="Republish each letter to its x-original-destination (or --to) with "
        "x-replay-count incremented, then commit it under the replay group; a letter over "
        "--max-replays goes to <dlq>.parked, one not matching --filter back to the end.",
    )
    replay.add_argument(
        "--filter",
        help="only letters this filter matches, e.g. "
        "\"headers['x-exception-type'] == 'builtins.ValueError'\"",
    )
    replay.add_argument("--limit", type=int, help="replay at most this many")
    replay.add_argument("--rate", type=float, help="at most this many a second")
    replay.add_argument("--to", help="send to this destination instead of the original")
    replay.add_argument(
        "--max-replays", type=int, default=3, help="park a letter replayed this many times (3)"
    )
    replay.add_argument(
        "--replay-group", default="replay", help="the group committing the replayed letters"
    )
    replay.add_argument("--dry-run", action="store_true", help="print what would be done")
    for parser in (listing, show, replay):
        parser.add_argument("destination", help="the destination the letters failed on")
        parser.add_argument("--group", required=True, help="the group they failed in")
        parser.add_argument("--dlq", help="the dead-letter destination, when not the default")
        parser.add_argument("--format", choices=["text", "json"], default="text")
        add_source_options(parser)
        parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    source = source_of(args)
    if getattr(args, "filter", None):
        try:
            args.compiled = compile_filter(args.filter, path="--filter")
        except ExpressionError as exc:
            return fail(str(exc), 2)
    try:
        return asyncio.run(_act(source, args))
    except BinderError as exc:
        return fail(str(exc))


async def _act(source: Source, args: argparse.Namespace) -> int:
    destination = source.destination(args.destination)
    letters = args.dlq or dead_letter_destination(destination, args.group, None)
    async with opened_binder(source) as binder:
        if args.action == "replay" and not args.dry_run:
            return await _replay(source, binder, letters, args)
        found = [row async for row in _look(source, binder, letters, args)]
    if args.action == "list":
        return _print_counts(found, args)
    if args.action == "show":
        return _print_letters(found, args)
    return _print_plan(found, letters, args)


async def _look(
    source: Source, binder: Binder, letters: str, args: argparse.Namespace
) -> AsyncIterator[dict[str, Any]]:
    """Every letter, taking none: anonymously from the start, else without acknowledging."""
    replays = binder.capabilities.replay_to_new_groups
    spec = ConsumerSpec(letters, None if replays else _INSPECT, start="earliest", browse=True)
    limit = getattr(args, "limit", None)
    seen = 0
    consumer = await binder.consumer(spec, _Quiet())
    try:
        while limit is None or seen < limit:
            records = await _fetch(consumer, IDLE)
            if not records:
                return
            for record in records:
                yield row_of(record, source.converters)
                seen += 1
                if limit is not None and seen >= limit:
                    return
    finally:
        await consumer.close()


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds")


def _print_counts(rows: list[dict[str, Any]], args: argparse.Namespace) -> int:
    kinds: Counter[str] = Counter()
    oldest: dict[str, float] = {}
    newest: dict[str, float] = {}
    for row in rows:
        kind = row["headers"].get(EXCEPTION_TYPE, "(none)")
        kinds[kind] += 1
        stamp = row.get("timestamp")
        if stamp is not None:
            oldest[kind] = min(oldest.get(kind, stamp), stamp)
            newest[kind] = max(newest.get(kind, stamp), stamp)
    report = [
        {
            "exception-type": kind,
            "count": count,
            "oldest": _when(oldest.get(kind)),
            "newest": _when(newest.get(kind)),
        }
        for kind, count in kinds.most_common()
    ]
    if args.format == "json":
        print(orjson.dumps({"total": len(rows), "by-exception-type": report}).decode())
        return 0
    table = [("COUNT", "EXCEPTION TYPE", "OLDEST", "NEWEST")]
    table += [(str(r["count"]), r["exception-type"], r["oldest"], r["newest"]) for r in report]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    print(f"{len(rows)} letter(s)")
    return 0


def _print_letters(rows: list[dict[str, Any]], args: argparse.Namespace) -> int:
    for row in rows:
        if args.format == "json":
            sys.stdout.write(orjson.dumps(row, default=str).decode() + "\n")
            continue
        headers = row["headers"]
        print(f"--- partition {row['partition']} @{row['offset']} key={row['key']!r}")
        print(f"{headers.get(EXCEPTION_TYPE, '?')}: {headers.get(EXCEPTION_MESSAGE, '')}")
        for name, value in sorted(headers.items()):
            if name not in (EXCEPTION_TYPE, EXCEPTION_MESSAGE, EXCEPTION_STACKTRACE):
                print(f"  {name}: {value}")
        payload = row["payload"]
        print("payload:", payload if isinstance(payload, str) else orjson.dumps(payload).decode())
        if EXCEPTION_STACKTRACE in headers:
            print(headers[EXCEPTION_STACKTRACE])
    return 0


def _decision(
    headers: dict[str, str], args: argparse.Namespace, letters: str, matched: bool
) -> tuple[str, str]:
    """(what to do, where to): ``replay``, ``park`` or ``keep`` (put back)."""
    if not matched:
        return "keep", letters
    if _count(headers) >= args.max_replays:
        return "park", f"{letters}.parked"
    target = args.to or headers.get(ORIGINAL_DESTINATION)
    if not target:
        return "park", f"{letters}.parked"  # nowhere to go back to
    return "replay", target


def _count(headers: dict[str, str]) -> int:
    text = headers.get(REPLAY_COUNT, "0")
    return int(text) if text.isdigit() else 0


def _matches(compiled: Filter | None, payload: Any, headers: dict[str, str], key: Any) -> bool:
    return compiled is None or compiled.matches(payload, headers, key)


def _print_plan(rows: list[dict[str, Any]], letters: str, args: argparse.Namespace) -> int:
    """``replay --dry-run``: what each letter would get."""
    compiled = getattr(args, "compiled", None)
    plan = []
    for row in rows:
        matched = _matches(compiled, row["payload"], row["headers"], row["key"])
        action, target = _decision(row["headers"], args, letters, matched)
        where = {"partition": row["partition"], "offset": row["offset"]}
        plan.append({**where, "action": action, "to": target})
        if args.limit is not None and sum(p["action"] == "replay" for p in plan) >= args.limit:
            break
    if args.format == "json":
        print(orjson.dumps({"dry-run": True, "letters": plan}).decode())
    else:
        for step in plan:
            print(f"would {step['action']} p{step['partition']} @{step['offset']} -> {step['to']}")
    return 0


def replayed_headers(headers: dict[str, str]) -> dict[str, str]:
    """A letter's headers as its replay carries them: the original's, ``x-replay-count`` one
    more, without the letter's ``x-exception-*``, ``x-original-*`` and attempt count."""
    kept = {
        name: value
        for name, value in headers.items()
        if not name.startswith(_LETTER_PREFIXES) and name not in (DELIVERY_ATTEMPT, PASS)
    }
    kept[REPLAY_COUNT] = str(_count(headers) + 1)
    return kept


async def _replay(source: Source, binder: Binder, letters: str, args: argparse.Namespace) -> int:
    compiled: Filter | None = getattr(args, "compiled", None)
    outputs: dict[str, OutputBinding] = {}

    async def output(name: str) -> OutputBinding:
        found = outputs.get(name)
        if found is None:  # the letters and the parked keep a queue of their own on RabbitMQ
            holds = letters if name in (letters, f"{letters}.parked") else None
            found = outputs[name] = OutputBinding(
                name, name, binder, source.converters, dead_letters_of=holds
            )
            await found.start()
        return found

    spec = ConsumerSpec(letters, args.replay_group, start="earliest")
    consumer = await binder.consumer(spec, _Quiet())
    done: Counter[str] = Counter()
    pause = 1 / args.rate if args.rate else 0.0
    run = uuid.uuid4().hex
    going = True
    try:
        while going and (args.limit is None or done["replay"] < args.limit):
            records = await _fetch(consumer, IDLE)
            if not records:
                break
            for record in records:
                if args.limit is not None and done["replay"] >= args.limit:
                    going = False
                    break
                if record.headers.get(PASS) == run:  # round the letters once: the rest is seen
                    going = False
                    break
                started = time.monotonic()
                action = await _handle(record, source, compiled, args, letters, output, run)
                await consumer.commit([record])
                done[action] += 1
                _say(args, record, action)
                if action == "replay" and pause:
                    await asyncio.sleep(max(0.0, pause - (time.monotonic() - started)))
    finally:
        await consumer.close()
        for out in outputs.values():
            await out.close()
    summary = {"replayed": done["replay"], "parked": done["park"], "kept": done["keep"]}
    if args.format == "json":
        print(orjson.dumps(summary).decode())
    else:
        print(", ".join(f"{count} {what}" for what, count in summary.items()))
    return 0


async def _handle(
    record: InboundRecord,
    source: Source,
    compiled: Filter | None,
    args: argparse.Namespace,
    letters: str,
    output: Any,
    run: str,
) -> str:
    """Send one letter where it goes (confirmed before it is committed); what was done."""
    headers = dict(record.headers)
    payload = row_of(record, source.converters)["payload"] if compiled is not None else None
    matched = _matches(compiled, payload, headers, decode_key(record.key))
    action, target = _decision(headers, args, letters, matched)
    if action == "replay":
        sent_headers = replayed_headers(headers)
    else:
        sent_headers = {**headers, PASS: run} if action == "keep" else headers
    out = await output(target)
    await out.send_records([out.forward(record.value, record.key, sent_headers)])
    return action


def _say(args: argparse.Namespace, record: InboundRecord, action: str) -> None:
    where = record.offset if record.offset is not None else record.message_id
    if args.format == "text":
        print(f"{action} p{record.partition} @{where}", file=sys.stderr)
