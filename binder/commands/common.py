"""What the operator's commands share: where the configuration comes from, which binder, and
how a message is shown."""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from binder import plugins
from binder.config import BinderSection, load_config, load_yaml
from binder.converters import ConverterRegistry
from binder.errors import ConfigError, ConversionError
from binder.message import CONTENT_TYPE, decode_key
from binder.spi import Binder, InboundRecord

__all__ = [
    "Source",
    "add_source_options",
    "fail",
    "opened_binder",
    "row_of",
    "source_of",
    "text_row",
]


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``, ``--app module:app``, ``--binder NAME``."""
    parser.add_argument("--config", help="the app's YAML configuration (environment applied)")
    parser.add_argument(
        "--app",
        help="module:attribute of the App whose configuration to use (with --config: "
        "the file replaces it)",
    )
    parser.add_argument(
        "--binder", help="the configured binder to use (default: the default binder)"
    )


class Source:
    """The configuration a command works from, and the name of its binder."""

    def __init__(self, section: BinderSection, binder: str, converters: ConverterRegistry):
        self.section = section
        self.binder = binder
        self.converters = converters

    def destination(self, name: str) -> str:
        """A binding's destination when ``name`` is a configured binding, else ``name``."""
        binding = self.section.binding(name)
        if binding is not None and binding.destination:
            return binding.destination
        return name


def source_of(args: argparse.Namespace) -> Source:
    """The configuration of ``--app`` and/or ``--config`` (else the environment's)."""
    from binder.cli import _load_app

    converters: ConverterRegistry
    if args.app:
        app = _load_app(args.app)
        if args.config:
            app.reconfigure(load_yaml(args.config))
        section, converters = app.config, app.converters
    else:
        doc = load_yaml(args.config) if args.config else None
        section = load_config(
            doc, os.environ, plugins.option_models(), plugins.binding_option_models()
        )
        converters = ConverterRegistry(plugins.converters())
    name = args.binder or section.default_binder
    if name is None or name not in section.binders:
        known = ", ".join(sorted(section.binders)) or "none"
        raise ConfigError(f"unknown binder {name!r} (configured: {known})", path="--binder")
    return Source(section, name, converters)


@contextlib.asynccontextmanager
async def opened_binder(source: Source) -> AsyncIterator[Binder]:
    """The source's binder, started, closed on exit."""
    entry = source.section.binders[source.binder]
    binder = plugins.binder_types()[entry.type].create(source.binder, entry.options)
    await binder.start()
    try:
        yield binder
    finally:
        await binder.close()


def fail(message: str, code: int = 1) -> int:
    """Print ``error: message`` on stderr; return ``code``."""
    print(f"error: {message}", file=sys.stderr)
    return code


def _payload(record: InboundRecord, converters: ConverterRegistry) -> tuple[Any, str | None]:
    """The payload as its content type reads it, else base64 (the second value names the
    encoding when it is not the decoded value)."""
    if record.value is None:
        return None, "tombstone"
    content_type = record.headers.get(CONTENT_TYPE, "application/octet-stream")
    if "octet-stream" not in content_type:
        try:
            return converters.get(content_type).decode(record.value), None
        except (ConversionError, ConfigError, KeyError):
            pass
    try:
        return record.value.decode(), None if content_type.startswith("text/") else "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(record.value).decode(), "base64"


def row_of(record: InboundRecord, converters: ConverterRegistry) -> dict[str, Any]:
    """One message as a JSON object: partition, offset (or the backend's id), key, headers,
    payload (``payload-encoding`` when it is not the decoded value)."""
    payload, encoding = _payload(record, converters)
    row: dict[str, Any] = {
        "partition": record.partition,
        "offset": record.offset if record.offset is not None else record.message_id,
        "key": decode_key(record.key),
        "headers": dict(record.headers),
        "payload": payload,
    }
    if isinstance(row["key"], bytes):
        row["key"] = base64.b64encode(row["key"]).decode()
        row["key-encoding"] = "base64"
    if encoding is not None:
        row["payload-encoding"] = encoding
    if record.timestamp is not None:
        row["timestamp"] = record.timestamp
    return row


def text_row(row: Mapping[str, Any]) -> str:
    """One message on one line, for people: ``p<partition> @<offset> key=... {headers}
    payload``."""
    payload = row["payload"]
    shown = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
    headers = orjson.dumps(row["headers"]).decode()
    return f"p{row['partition']} @{row['offset']} key={row['key']!r} {headers} {shown}"
