"""Docs generated from code: the README's binder capability table.

``python -m binder.docs README.md`` rewrites the table between the
``<!-- capabilities:start -->`` and ``<!-- capabilities:end -->`` markers from
each registered binder type's :class:`~binder.spi.Capabilities`; a test checks
the README matches, so the docs cannot drift from the declarations.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from pathlib import Path

from binder import plugins
from binder.spi import BinderType, Capabilities

__all__ = ["capability_table", "update_readme"]

START, END = "<!-- capabilities:start -->", "<!-- capabilities:end -->"


def _cell(value: object) -> str:
    if value is True:
        return "yes"
    if value is False or value is None:
        return "—"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _columns(kinds: Mapping[str, BinderType]) -> dict[str, Capabilities]:
    """One column per binder type, plus one per configuration it declares in ``variants``
    (an optional ``Mapping[str, Capabilities]`` keyed by the option that makes it)."""
    columns: dict[str, Capabilities] = {}
    for name, kind in sorted(kinds.items()):
        columns[f"`{name}`"] = kind.capabilities
        for option, capabilities in getattr(kind, "variants", {}).items():
            columns[f"`{name}` with `{option}`"] = capabilities
    return columns


def capability_table(kinds: Mapping[str, BinderType] | None = None) -> str:
    """A Markdown table: one row per capability, one column per binder type (and variant)."""
    columns = _columns(kinds or plugins.binder_types())
    names = [f.name for f in dataclasses.fields(Capabilities)]
    lines = [
        "| capability | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name in names:
        cells = [_cell(getattr(capabilities, name)) for capabilities in columns.values()]
        lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_readme(path: Path) -> bool:
    """Rewrite the table in ``path``; True when it changed."""
    text = path.read_text(encoding="utf-8")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    new = f"{head}{START}\n{capability_table()}\n{END}{tail}"
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    print(f"{target}: {'updated' if update_readme(target) else 'up to date'}")
