"""``binder run --log-format json``: one JSON object a line.

Each line holds ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, the context the
library puts in ``extra`` (``binding``, ``destination``, ``group``, ``partition``, ``offset``)
when a record has it, and ``exception`` (the formatted traceback) when it carries one.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import orjson

__all__ = ["CONTEXT", "JsonFormatter"]

CONTEXT = ("binding", "destination", "group", "partition", "offset")
"""The ``extra`` keys of the library's log records that a JSON line carries."""


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT:
            value = record.__dict__.get(key)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()
