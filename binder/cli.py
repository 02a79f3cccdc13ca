"""The ``binder`` command (also ``python -m binder``).

``binder run module:app [--config FILE]``  run an app until SIGINT/SIGTERM
``binder check FILE [--app module:app]``   validate a config file, print the effective config;
                                           with --app also against the app's functions
``binder log inspect|verify PATH``         a durable log directory's topics and groups, or its
                                           checksums and indexes (exit 1 on damage)
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from binder import plugins
from binder.app import App
from binder.config import BinderSection, load_config, load_yaml, render_effective
from binder.errors import ConfigError
from binder.functions import check_bindings, parse_definition

__all__ = ["main"]


def _load_app(target: str) -> App:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"error: expected module:attribute, got {target!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"error: cannot import {module_name!r}: {exc}") from exc
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        raise SystemExit(f"error: {target!r} is not a binder.App (got {type(app).__name__})")
    return app


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = _load_app(args.target)
    if args.config:
        app.reconfigure(load_yaml(args.config))
    app.run()
    return 0


def _check(args: argparse.Namespace) -> int:
    section = load_config(load_yaml(args.file), os.environ, plugins.option_models())
    if args.app and not _check_functions(section, _load_app(args.app)):
        return 2
    sys.stdout.write(render_effective(section))
    print(f"# {args.file}: OK", file=sys.stderr)
    return 0


def _check_functions(section: BinderSection, app: App) -> bool:
    """Check the bindings against ``app``'s functions: warn of unused ones, report typos."""
    pipelines = parse_definition(section.function_definition, app.functions)
    use = check_bindings(section.bindings, pipelines, app.functions)
    for name, why in use.unused.items():
        print(f"warning: binder.bindings.{name}: not used by this app ({why})", file=sys.stderr)
    for error in use.typos:
        print(f"error: {error}", file=sys.stderr)
    return not use.typos


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="binder", description="streambinder command line")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run an app until SIGINT/SIGTERM")
    run.add_argument("target", help="module:attribute of the App, e.g. examples.orders.app:app")
    run.add_argument("--config", help="YAML file replacing the app's configuration")
    run.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    run.set_defaults(handler=_run)
    check = commands.add_parser(
        "check", help="validate a config file and print it with env applied"
    )
    check.add_argument("file", help="the YAML file")
    check.add_argument(
        "--app", help="module:attribute of an App whose functions the bindings must fit"
    )
    check.set_defaults(handler=_check)
    plugins.plugin_manager().hook.binder_add_commands(commands=commands)  # e.g. `binder log`
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for a configuration error)."""
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
