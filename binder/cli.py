"""The ``binder`` command (also ``python -m binder``).

``binder --version``                       the installed version
``binder run module:app [--config FILE] [--log-level LEVEL] [--log-format text|json]
[--metrics-port P]``
                                           run an app until SIGINT/SIGTERM; ``stopped`` is
                                           its last log line; exit 1 when a binding failed
                                           under ``on-binding-failure: exit``
``binder check FILE [--app module:app]``   validate a config file as ``App.start`` does short
                                           of connecting (content types included), print the
                                           effective config; with --app also against the
                                           app's functions and exception names
``binder log inspect|verify PATH``         a durable log directory's topics and groups, or its
                                           checksums and indexes (exit 1 on damage)
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import os
import sys
from collections.abc import Sequence

import binder
from binder import plugins
from binder._exceptions import unknown_exception_names
from binder.app import App
from binder.config import BinderSection, load_config, load_yaml, render_effective
from binder.converters import ConverterRegistry
from binder.errors import ConfigError
from binder.functions import check_bindings, parse_definition
from binder.logs import JsonFormatter

__all__ = ["main"]

_LEVELS = ("debug", "info", "warning", "error", "critical")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def version() -> str:
    """The installed distribution's version, else the package's own ``__version__``."""
    try:
        return importlib.metadata.version("streambinder")
    except importlib.metadata.PackageNotFoundError:
        return binder.__version__


def _log_level(text: str) -> int:
    """A logging level from its name in any case (``debug``, ``INFO``) or its number."""
    if text.strip().isdigit():
        return int(text)
    level = logging.getLevelName(text.strip().upper())
    if not isinstance(level, int):
        raise argparse.ArgumentTypeError(
            f"unknown level {text!r} (choose from {', '.join(_LEVELS)}, any case)"
        )
    return level


def _load_app(target: str) -> App:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"error: expected module:attribute, got {target!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"error: cannot import {module_name!r}: {exc}") from exc
    if not hasattr(module, attribute):
        raise SystemExit(f"error: module {module_name!r} has no attribute {attribute!r}")
    app = getattr(module, attribute)
    if not isinstance(app, App):
        raise SystemExit(f"error: {target!r} is not a binder.App (got {type(app).__name__})")
    return app


def _run(args: argparse.Namespace) -> int:
    """Run the app; its last log line is ``stopped`` (:meth:`App.run` logs it)."""
    if args.log_format == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=args.log_level, handlers=[handler])
    else:
        logging.basicConfig(level=args.log_level, format=_TEXT_FORMAT)
    app = _load_app(args.target)
    if args.config:
        app.reconfigure(load_yaml(args.config))
    if args.metrics_port is not None:
        app.config.metrics.port = args.metrics_port
    try:
        app.run()
    except SystemExit as exc:  # on-binding-failure: exit
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def _check(args: argparse.Namespace) -> int:
    section = load_config(
        load_yaml(args.file), os.environ, plugins.option_models(), plugins.binding_option_models()
    )
    app = _load_app(args.app) if args.app else None
    converters = app.converters if app else ConverterRegistry(plugins.converters())
    problems = _content_type_problems(section, converters)
    if app is not None:
        problems += _function_problems(section, app)
        _warn_unknown_exceptions(section)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 2
    sys.stdout.write(render_effective(section))
    print(f"# {args.file}: OK", file=sys.stderr)
    return 0


def _content_type_problems(section: BinderSection, converters: ConverterRegistry) -> list[str]:
    """The bindings whose content type has no converter, as ``App.start`` refuses them."""
    problems = []
    for name, binding in section.bindings.items():
        try:
            converters.require(binding.content_type, f"binder.bindings.{name}.content-type")
        except ConfigError as exc:
            problems.append(f"{exc} (got {binding.content_type[:80]!r})")
    return problems


def _warn_unknown_exceptions(section: BinderSection) -> None:
    """Warn of ``retryable-exceptions`` names no module loaded with the app defines."""
    for name, binding in section.bindings.items():
        for exception in unknown_exception_names(binding.consumer.retryable_exceptions):
            path = f"binder.bindings.{name}.consumer.retryable-exceptions.{exception}"
            print(f"warning: {path}: no loaded module defines this exception", file=sys.stderr)


def _function_problems(section: BinderSection, app: App) -> list[str]:
    """Check the bindings against ``app``'s functions: warn of unused ones, report typos."""
    pipelines = parse_definition(section.function_definition, app.functions)
    use = check_bindings(section.bindings, pipelines, app.functions)
    for name, why in use.unused.items():
        print(f"warning: binder.bindings.{name}: not used by this app ({why})", file=sys.stderr)
    return [str(error) for error in use.typos]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="binder", description="streambinder command line")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run an app until SIGINT/SIGTERM")
    run.add_argument("target", help="module:attribute of the App, e.g. examples.orders.app:app")
    run.add_argument("--config", help="YAML file replacing the app's configuration")
    run.add_argument(
        "--log-level",
        type=_log_level,
        default=logging.INFO,
        help=f"logging level: {', '.join(_LEVELS)}, any case (default info)",
    )
    run.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="log line format: text (default) or json, one object a line with the binding, "
        "destination, group, partition and offset of the record",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        help="serve /metrics, /health/live and /health/ready on this port (host: "
        "binder.metrics.host, default 127.0.0.1; 0: any free port, logged)",
    )
    run.set_defaults(handler=_run)
    check = commands.add_parser(
        "check", help="validate a config file and print it with env applied"
    )
    check.add_argument("file", help="the YAML file")
    check.add_argument(
        "--app", help="module:attribute of an App whose functions the bindings must fit"
    )
    check.set_defaults(handler=_check)
    from binder import commands as operator

    operator.add(commands)  # send, tail, groups, dlq, docs
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
