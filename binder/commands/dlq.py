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
with another filter, still finds it).

Between a letter's republish and its commit a kill leaves the letter uncommitted with its copy
already sent. So that the next run does not send it again, a replay first notes each send in
its journal, the destination ``<dlq>.<replay-group>.replaying``: the letter, where its copy
goes and a position of that partition no later than the copy's (:class:`Journal`); every copy
carries ``x-replay-of: <dlq>/<partition>/<offset or id>``. The next run reads the notes left
since the last run that went through, looks for their copies from those positions, and
commits a letter whose copy is there without sending it again. A binder that cannot read a
partition from a position (RabbitMQ: an exchange keeps nothing) keeps no journal: there a
kill in that window sends the one letter again (at least once, never lost).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
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

__all__ = ["REPLAY_COUNT", "REPLAY_OF", "Journal", "add", "replayed_headers"]

log = logging.getLogger("binder.dlq")

REPLAY_COUNT = "x-replay-count"
"""How many times a letter was replayed (set on the republished message)."""
REPLAY_OF = "x-replay-of"
"""On a letter's copy (replayed, parked or put back): ``<dlq>/<partition>/<offset or id>``."""
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


def letter_id(record: InboundRecord) -> str:
    """``<dlq>/<partition>/<offset>`` (or the entry id where there is no offset)."""
    where = record.offset if record.offset is not None else record.message_id
    return f"{record.destination}/{record.partition}/{where}"


class Journal:
    """A replay's notes of the sends it is about to make, in ``<dlq>.<replay-group>.replaying``
    (one partition; its group of the same name marks where the last complete run ended).

    Before each copy is sent, :meth:`note` writes ``{"letter", "to", "partition", "since"}``:
    ``since`` is a position of the copy's partition no later than the copy (the partition's end
    when the run first sends there, then where its previous copy went). :meth:`open` reads the
    notes written since the last complete run and looks in each partition they name, from the
    first note's ``since`` on, for copies carrying their letter's ``x-replay-of``: those letters
    were sent by a run killed before it committed them. :meth:`finish` (a run that went through
    every letter) moves the group to the end, so the next run reads nothing old."""

    def __init__(self, binder: Binder, letters: str, replay_group: str) -> None:
        self.name = f"{letters}.{replay_group}.replaying"
        self._binder: Any = binder
        self._since: dict[tuple[str, int], Any] = {}
        self._output: OutputBinding | None = None
        self.sent: set[str] = set()
        """The letters a killed run already sent (their copies were found)."""

    @staticmethod
    def kept_by(binder: Binder) -> bool:
        """Whether ``binder`` can read a partition from a position (else no journal)."""
        return all(callable(getattr(binder, m, None)) for m in ("read", "positions", "reset"))

    async def open(self, output: OutputBinding) -> None:
        binder = self._binder
        await binder.provision(self.name, 1, [self.name])
        self._output = output
        mark = (await binder.positions(self.name, self.name)).get(0)
        notes: dict[tuple[str, int], tuple[Any, set[str]]] = {}
        async for record in self._read(self.name, 0, mark.committed if mark else None):
            try:
                note = orjson.loads(record.value or b"")
                where = (str(note["to"]), int(note["partition"]))
                since, letter = note["since"], str(note["letter"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning("%s: not a replay's note, passed over: %r", self.name, record.value)
                continue
            notes.setdefault(where, (since, set()))[1].add(letter)
        for (target, partition), (since, letters) in notes.items():
            async for record in self._read(target, partition, since):
                copied = record.headers.get(REPLAY_OF)
                if copied in letters:
                    self.sent.add(copied)

    async def _read(self, destination: str, partition: int, since: Any) -> AsyncIterator[Any]:
        while True:
            records, since = await self._binder.read(destination, partition, since, 500)
            if not records:
                return
            for record in records:
                yield record

    async def note(self, letter: str, target: str, partition: int) -> None:
        """Write down that ``letter``'s copy goes to ``target``'s ``partition`` (awaited: the
        copy is sent only once the note is kept)."""
        where = (target, partition)
        if where not in self._since:
            end = (await self._binder.positions(target, self.name)).get(partition)
            self._since[where] = end.end if end is not None else None
        note = {"letter": letter, "to": target, "partition": partition, "since": self._since[where]}
        assert self._output is not None
        await self._output.send_records(
            [self._output.forward(orjson.dumps(note), None, {"contentType": "application/json"})]
        )

    def copied(self, target: str, partition: int, where: Any) -> None:
        """The copy went to ``where``: the next copy to that partition comes after it."""
        if where is not None and not (isinstance(where, str) and where.startswith("due ")):
            self._since[(target, partition)] = where

    async def finish(self) -> None:
        """Every letter went through: nothing noted so far is needed again."""
        await self._binder.reset(self.name, self.name, "latest")


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

    journal = Journal(binder, letters, args.replay_group) if Journal.kept_by(binder) else None
    if journal is not None:
        await journal.open(await output(journal.name))
    spec = ConsumerSpec(letters, args.replay_group, start="earliest", sole=True)
    consumer = await binder.consumer(spec, _Quiet())
    done: Counter[str] = Counter()
    pause = 1 / args.rate if args.rate else 0.0
    run = uuid.uuid4().hex
    going, complete = True, False
    try:
        while going:
            if args.limit is not None and done["replay"] >= args.limit:
                break
            records = await _fetch(consumer, IDLE)
            if not records:
                complete = True
                break
            for record in records:
                if args.limit is not None and done["replay"] >= args.limit:
                    going = False
                    break
                if record.headers.get(PASS) == run:  # round the letters once: the rest is seen
                    going, complete = False, True
                    break
                started = time.monotonic()
                action, again = await _handle(
                    record, source, compiled, args, letters, output, run, journal
                )
                await consumer.commit([record])
                done[action] += 1
                _say(args, record, action, again)
                if action == "replay" and pause and not again:
                    await asyncio.sleep(max(0.0, pause - (time.monotonic() - started)))
    finally:
        await consumer.close()
        if journal is not None and complete:
            await journal.finish()
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
    journal: Journal | None,
) -> tuple[str, bool]:
    """Send one letter where it goes (noted first, confirmed before it is committed); what
    was done, and whether a killed run had sent it already (nothing is sent again)."""
    headers = dict(record.headers)
    payload = row_of(record, source.converters)["payload"] if compiled is not None else None
    matched = _matches(compiled, payload, headers, decode_key(record.key))
    action, target = _decision(headers, args, letters, matched)
    letter = letter_id(record)
    if journal is not None and letter in journal.sent:
        journal.sent.discard(letter)
        return action, True
    if action == "replay":
        sent_headers = replayed_headers(headers)
    else:
        sent_headers = {**headers, PASS: run} if action == "keep" else dict(headers)
    sent_headers[REPLAY_OF] = letter
    out = await output(target)
    copy = out.forward(record.value, record.key, sent_headers)
    if journal is None:
        await out.send_records([copy])
        return action, False
    await journal.note(letter, target, copy.partition)
    ((partition, where),) = await out.send_located([copy])
    journal.copied(target, partition, where)
    return action, False


def _say(args: argparse.Namespace, record: InboundRecord, action: str, again: bool) -> None:
    where = record.offset if record.offset is not None else record.message_id
    if args.format == "text":
        note = " (sent by an interrupted run: not again)" if again else ""
        print(f"{action} p{record.partition} @{where}{note}", file=sys.stderr)
