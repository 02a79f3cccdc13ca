"""``binder groups list|describe|reset``: the consumer groups of a destination, where each
one is per partition and how far behind, and moving a group's position."""

from __future__ import annotations

import argparse
import asyncio
import re
from datetime import UTC, datetime
from typing import Any

import orjson

from binder.commands.common import Source, add_source_options, fail, opened_binder, source_of
from binder.errors import BinderError
from binder.spi import Binder

__all__ = ["add"]

CANNOT = 2
"""Exit status when the binder cannot do what was asked (as for bad usage)."""


def add(commands: Any) -> None:
    groups = commands.add_parser(
        "groups", help="list, describe or reset the consumer groups of a destination"
    )
    actions = groups.add_subparsers(dest="action", required=True)
    listing = actions.add_parser(
        "list",
        help="the groups of a destination",
        description="The groups the binder knows of DEST (those that committed or are reading it).",
    )
    listing.add_argument("destination", help="a destination, or a configured binding's name")
    describe = actions.add_parser(
        "describe",
        help="each group's committed position and lag per partition",
        description="Per partition: the group's committed position (the next it reads), the "
        "first and the next position of the partition, and the lag; and the live members.",
    )
    describe.add_argument("destination", help="a destination, or a configured binding's name")
    describe.add_argument("--group", help="only this group (default: every group)")
    reset = actions.add_parser(
        "reset",
        help="move a group's position to earliest, latest, an offset or a time",
        description="Move GROUP's committed position on every partition of DEST. Refused while "
        "the group has live members (named) unless --force; --dry-run prints what would change.",
    )
    reset.add_argument("destination", help="a destination, or a configured binding's name")
    reset.add_argument("--group", required=True)
    reset.add_argument(
        "--to",
        required=True,
        help="earliest, latest, an offset (an entry id on Redis), or a time "
        "(ISO 8601, e.g. 2026-12-01T10:00:00Z)",
    )
    reset.add_argument("--dry-run", action="store_true", help="print the change, make none")
    reset.add_argument("--force", action="store_true", help="reset even with live members")
    for parser in (listing, describe, reset):
        parser.add_argument("--format", choices=["text", "json"], default="text")
        add_source_options(parser)
        parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    source = source_of(args)
    try:
        return asyncio.run(_act(source, args))
    except BinderError as exc:
        return fail(str(exc))


def _needs(binder: Binder, *names: str) -> str | None:
    """The first of ``names`` the binder lacks (the command cannot run), else ``None``."""
    for name in names:
        if not callable(getattr(binder, name, None)):
            return name
    return None


async def _act(source: Source, args: argparse.Namespace) -> int:
    destination = source.destination(args.destination)
    async with opened_binder(source) as binder:
        every = () if getattr(args, "group", None) else ("groups",)
        wanted = {
            "list": ("groups",),
            "describe": ("positions", "members", *every),
            "reset": ("reset", "members"),
        }[args.action]
        missing = _needs(binder, *wanted)
        if missing is not None:
            kind = source.section.binders[source.binder].type
            return fail(
                f"the {kind} binder cannot {args.action} groups (it has no {missing}(): "
                "the binder does not offer it; its README section says why)",
                CANNOT,
            )
        if args.action == "list":
            return _print_list(await binder.groups(destination), args)  # type: ignore[attr-defined]
        if args.action == "describe":
            return await _describe(binder, destination, args)
        return await _reset(binder, destination, args)


def _print_list(groups: list[str], args: argparse.Namespace) -> int:
    if args.format == "json":
        print(orjson.dumps(groups).decode())
    else:
        for group in groups:
            print(group)
    return 0


async def _describe(binder: Any, destination: str, args: argparse.Namespace) -> int:
    groups = [args.group] if args.group else await binder.groups(destination)
    report = []
    for group in groups:
        positions = await binder.positions(destination, group)
        members = await binder.members(destination, group)
        report.append(
            {
                "group": group,
                "members": members,
                "partitions": [
                    {
                        "partition": p,
                        "committed": pos.committed,
                        "start": pos.start,
                        "end": pos.end,
                        "lag": pos.lag,
                    }
                    for p, pos in sorted(positions.items())
                ],
            }
        )
    if args.format == "json":
        print(orjson.dumps(report).decode())
        return 0
    rows = [("GROUP", "PARTITION", "COMMITTED", "START", "END", "LAG")]
    for entry in report:
        for part in entry["partitions"]:
            rows.append(
                tuple(
                    "-" if value is None else str(value)
                    for value in (
                        entry["group"],
                        part["partition"],
                        part["committed"],
                        part["start"],
                        part["end"],
                        part["lag"],
                    )
                )
            )
    _table(rows)
    for entry in report:
        live = ", ".join(entry["members"]) or "none"
        print(f"{entry['group']}: live members: {live}")
    return 0


def _table(rows: list[tuple[str, ...]]) -> None:
    """Aligned columns, for people on a terminal."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())


_OFFSET = re.compile(r"^\d+(-\d+)?$")


def _target(text: str) -> Any:
    """``earliest``, ``latest``, an offset / entry id, or a time; SystemExit(2) otherwise."""
    if text in ("earliest", "latest"):
        return text
    if _OFFSET.match(text):
        return int(text) if text.isdigit() else text
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SystemExit(
            fail(f"--to {text!r}: expected earliest, latest, an offset or an ISO 8601 time", 2)
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


async def _reset(binder: Any, destination: str, args: argparse.Namespace) -> int:
    to = _target(args.to)
    members = await binder.members(destination, args.group)
    if members and not args.force and not args.dry_run:
        return fail(
            f"group {args.group!r} has live members ({', '.join(members)}): stop them first, "
            "or --force"
        )
    before = await binder.positions(destination, args.group)
    after = await binder.reset(destination, args.group, to, dry_run=args.dry_run)
    changes = [
        {"partition": p, "from": before[p].committed if p in before else None, "to": new}
        for p, new in sorted(after.items())
    ]
    if args.format == "json":
        print(orjson.dumps({"dry-run": args.dry_run, "changes": changes}).decode())
        return 0
    verb = "would move" if args.dry_run else "moved"
    for change in changes:
        old = "-" if change["from"] is None else change["from"]
        print(f"{args.group} partition {change['partition']}: {verb} {old} -> {change['to']}")
    return 0
