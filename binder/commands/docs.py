"""``binder docs asyncapi|topology module:app``: documents of an app, from its code and
configuration, without starting it or connecting to anything.

``binder docs asyncapi module:app [--config FILE] [-o FILE]``
    the app's AsyncAPI 3.0.0 document (:mod:`binder.asyncapi`): JSON on stdout, or into
    FILE (YAML when it ends with ``.yaml``/``.yml``)
``binder docs topology module:app [--config FILE] [--format mermaid|dot]``
    the graph of its functions and destinations (:mod:`binder.topology`), Mermaid by default

Exit codes: 0 done, 1 the output file could not be written, 2 bad usage (a target that
does not load, a configuration error).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from binder import asyncapi, topology
from binder.commands.common import fail
from binder.config import load_yaml

if TYPE_CHECKING:
    from binder.app import App

__all__ = ["add"]

_TARGET_HELP = "module:attribute of the App, e.g. examples.orders.app:app"
_CONFIG_HELP = "YAML file replacing the app's configuration"


def add(commands: Any) -> None:
    """Add ``binder docs`` and its sub-commands ``asyncapi`` and ``topology`` to ``commands``."""
    docs = commands.add_parser(
        "docs",
        help="describe an app: its AsyncAPI document, its topology",
        description="Documents of an app from its functions and configuration; nothing is "
        "started or connected to.",
    )
    kinds = docs.add_subparsers(dest="document", required=True, metavar="{asyncapi,topology}")
    _add_asyncapi(kinds)
    _add_topology(kinds)


def _add_asyncapi(kinds: Any) -> None:
    parser = kinds.add_parser(
        "asyncapi",
        help="the app's AsyncAPI 3.0 document (JSON, or YAML into a .yaml file)",
        description="Print the app's AsyncAPI 3.0.0 document: a server per binder (no "
        "passwords), a channel per destination (dead-letter ones included), a receive "
        "operation per input and a send operation per output, payload schemas from the "
        "functions' type annotations.",
    )
    parser.add_argument("target", help=_TARGET_HELP)
    parser.add_argument("--config", metavar="FILE", help=_CONFIG_HELP)
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="write to FILE instead of stdout (.yaml/.yml: YAML)"
    )
    parser.set_defaults(handler=_asyncapi)


def _add_topology(kinds: Any) -> None:
    parser = kinds.add_parser(
        "topology",
        help="the graph of the app's functions and destinations (Mermaid or dot)",
        description="Print the graph of the app's functions and destinations: destination "
        "→ function edges labelled with the group, function → destination for outputs, "
        "dashed edges to dead-letter and retry destinations. Sorted, so the same app and "
        "configuration always print the same text.",
    )
    parser.add_argument("target", help=_TARGET_HELP)
    parser.add_argument("--config", metavar="FILE", help=_CONFIG_HELP)
    parser.add_argument(
        "--format",
        choices=["mermaid", "dot"],
        default="mermaid",
        help="mermaid (flowchart LR, the default) or dot (Graphviz)",
    )
    parser.set_defaults(handler=_topology)


def _asyncapi(args: argparse.Namespace) -> int:
    loaded = _load(args.target, args.config)
    if isinstance(loaded, int):
        return loaded
    module = args.target.partition(":")[0]
    version = getattr(sys.modules.get(module), "__version__", None)
    kw = {"version": version} if isinstance(version, str) else {}
    doc = asyncapi.document(loaded, title=module, **kw)
    if args.output is None:
        sys.stdout.write(_json(doc))
        return 0
    return _write(Path(args.output), doc)


def _topology(args: argparse.Namespace) -> int:
    loaded = _load(args.target, args.config)
    if isinstance(loaded, int):
        return loaded
    graph = topology.topology(loaded)
    sys.stdout.write(topology.dot(graph) if args.format == "dot" else topology.mermaid(graph))
    return 0


def _load(target: str, config: str | None) -> App | int:
    """The app at ``target``, reconfigured from ``config``; 2 (said on stderr) when it does
    not load. A configuration error propagates (``binder.cli.main`` reports it, exit 2)."""
    from binder.cli import _load_app  # binder.cli imports this package: import it late

    try:
        app = _load_app(target)
    except SystemExit as exc:  # its message is "error: ..." naming the target
        why = exc.code if isinstance(exc.code, str) else f"cannot load {target!r}"
        return fail(why.removeprefix("error: "), 2)
    if config:
        app.reconfigure(load_yaml(config))
    return app


def _json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"


class _Dumper(yaml.SafeDumper):
    """YAML without anchors and aliases: a shared schema is written out where it is used."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _write(path: Path, doc: dict[str, Any]) -> int:
    """Write ``doc`` to ``path``, as YAML for ``.yaml``/``.yml``, else JSON; 1 if it fails."""
    as_yaml = path.suffix.lower() in (".yaml", ".yml")
    text = (
        yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
        if as_yaml
        else _json(doc)
    )
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        return fail(f"cannot write {str(path)!r}: {exc}")
    counts = f"{len(doc['channels'])} channels, {len(doc['operations'])} operations"
    print(f"# {path}: AsyncAPI {doc['asyncapi']}, {counts}", file=sys.stderr)
    return 0
