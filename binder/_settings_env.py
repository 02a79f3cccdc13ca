"""Private helpers of :mod:`binder.config`: durations, environment overrides, error reports.

Environment rules (the public contract is in ``DESIGN.md``): a variable
``BINDER_<SEGMENT>__<SEGMENT>...`` overrides the key path
``binder.<segment>.<segment>...``. Each segment matches, case-insensitively and
with ``-`` and ``_`` alike, a key the YAML document already has at that level
(so an override lands on the binding the YAML spelled ``uppercase-in-0``);
otherwise it becomes the kebab-case lower key. Values are read as YAML scalars
or flow collections. ``BINDER_TEST_*`` belongs to the test harness and is ignored.

Error reports turn a pydantic ``ValidationError`` into one ``ConfigError`` whose
lines read ``<key path>: <what> (got <value>, from <VARIABLE>)``, secrets masked.
"""

from __future__ import annotations

import difflib
import math
import re
import reprlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Annotated, Any, NamedTuple

import yaml
from pydantic import BaseModel, BeforeValidator, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from binder._yaml import safe_load
from binder.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "Duration",
    "EnvOverrideSource",
    "EnvPath",
    "Problem",
    "config_error",
    "env_overrides",
    "invalid",
    "masked",
    "normalize_key",
    "parse_duration",
    "parse_env_value",
    "unknown_key_message",
    "with_key_hints",
]

ENV_PREFIX = "BINDER_"
_IGNORED_PREFIX = "BINDER_TEST_"
_SECTION = "binder"

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>us|ms|s|m|h|d)?\s*")
_DURATION_HELP = (
    "expected a non-negative duration: seconds as a number, or a string such as "
    "'500us', '250ms', '1.5s', '1m', '1h', '7d'"
)

EnvPath = tuple[str, ...]


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like ``"250ms"``; raises a pydantic error otherwise."""
    seconds = _duration_seconds(value)
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise PydanticCustomError("duration", _DURATION_HELP)
    return seconds


def _duration_seconds(value: object) -> float | None:
    """The number of seconds ``value`` spells, or ``None`` when it is not a duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    match = _DURATION.fullmatch(value)
    if match is None:
        return None
    return float(match["number"]) * _UNITS[match["unit"] or "s"]


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A duration in seconds (float); accepts ``1.5``, ``"1.5"``, ``"250ms"``, ``"2s"``, ``"1m"``..."""


def normalize_key(key: str) -> str:
    """``key`` lower-cased with ``_`` read as ``-`` (how env segments and binding names match)."""
    return key.lower().replace("_", "-")


def parse_env_value(text: str) -> Any:
    """``text`` read as a YAML scalar or flow collection; the raw text when YAML cannot read it.

    Dates and other non-JSON YAML types also stay text (a destination ``2024-01-01``), and so
    does block-style YAML: ``shop:`` (a key prefix) is that text, not a mapping; only
    ``[...]`` and ``{...}`` are collections.
    """
    try:
        value = safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, list | dict):
        return value if text.lstrip()[:1] in ("[", "{") else text
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return text


def env_overrides(
    environ: Mapping[str, str], document: Mapping[str, Any] | None
) -> tuple[dict[str, Any], dict[EnvPath, str]]:
    """Overrides of the ``binder`` section from ``environ``, and which variable set which path.

    ``document`` is the ``binder`` section as written in YAML, used to match the
    spelling of existing keys. Paths in the returned origins start with ``"binder"``.
    A deeper variable wins over a shallower one that sets a whole mapping.
    """
    names = [name for name in environ if _is_override(name)]
    names.sort(key=lambda name: (name.count("__"), name))
    overrides: dict[str, Any] = {}
    origins: dict[EnvPath, str] = {}
    for name in names:
        path = _env_path(name[len(ENV_PREFIX) :], document)
        _put(overrides, path, parse_env_value(environ[name]))
        origins[(_SECTION, *path)] = name
    return overrides, origins


def _is_override(name: str) -> bool:
    """Whether the variable ``name`` is a configuration override."""
    return name.startswith(ENV_PREFIX) and not name.startswith(_IGNORED_PREFIX)


def _env_path(name: str, document: Mapping[str, Any] | None) -> EnvPath:
    """The key path ``name`` (without prefix) addresses, spelled as ``document`` spells it."""
    path: list[str] = []
    level: Any = document
    for segment in name.split("__"):
        key = _match_key(segment, level)
        path.append(key)
        level = level.get(key) if isinstance(level, Mapping) else None
    return tuple(path)


def _match_key(segment: str, level: Any) -> str:
    """The key of mapping ``level`` that ``segment`` names, else ``segment`` in kebab case."""
    wanted = normalize_key(segment)
    if isinstance(level, Mapping):
        for key in level:
            if isinstance(key, str) and normalize_key(key) == wanted:
                return key
    return wanted


def _put(tree: dict[str, Any], path: EnvPath, value: Any) -> None:
    """Set ``tree[path[0]][path[1]]... = value``, making (or replacing) mappings on the way."""
    for key in path[:-1]:
        child = tree.get(key)
        if not isinstance(child, dict):
            child = tree[key] = {}
        tree = child
    tree[path[-1]] = value


class EnvOverrideSource(PydanticBaseSettingsSource):
    """pydantic-settings source of the ``BINDER_*`` overrides of the ``binder`` section.

    ``origins`` is filled, when the source is called, with the variable that set
    each key path, so that error messages can name the variable.
    """

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        document: Mapping[str, Any] | None,
        environ: Mapping[str, str],
        origins: dict[EnvPath, str],
    ) -> None:
        super().__init__(settings_cls)
        self._document = document
        self._environ = environ
        self._origins = origins

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: :meth:`__call__` builds the whole override tree at once."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        """``{"binder": overrides}``, or ``{}`` when no variable applies."""
        overrides, origins = env_overrides(self._environ, self._document)
        self._origins.update(origins)
        return {_SECTION: overrides} if overrides else {}


# --- problems raised by validators ------------------------------------------------------


class Problem(NamedTuple):
    """One problem a validator found, at ``loc`` relative to the model it validates."""

    loc: tuple[str, ...]
    message: str
    value: Any
    kind: str = "invalid"
    """``missing``: a required value is absent, so the report shows no value."""


def invalid(problems: Iterable[Problem]) -> ValidationError:
    """A ValidationError of ``problems``; pydantic nests it under the validated location."""
    details = [
        InitErrorDetails(type=PydanticCustomError(p.kind, p.message), loc=p.loc, input=p.value)
        for p in problems
    ]
    return ValidationError.from_exception_data("binder configuration", details)


def unknown_key_message(key: object, known: Iterable[str]) -> str:
    """``unknown key``, with the closest known key as a hint when one is close."""
    matches = difflib.get_close_matches(normalize_key(str(key)), list(known), n=1)
    return f"unknown key, did you mean {matches[0]!r}?" if matches else "unknown key"


def with_key_hints(exc: ValidationError, model: type[BaseModel]) -> ValidationError:
    """``exc`` with the unknown keys of ``model`` itself reworded to suggest a known key."""
    errors = exc.errors()
    if not any(_is_own_unknown_key(error) for error in errors):
        return exc
    known = [info.alias or name for name, info in model.model_fields.items()]
    details = [_with_hint(error, known) for error in errors]
    return ValidationError.from_exception_data(exc.title, details)


def _is_own_unknown_key(error: Any) -> bool:
    """Whether ``error`` is an unknown key directly in the model being validated."""
    return bool(error["type"] == "extra_forbidden" and len(error["loc"]) == 1)


def _with_hint(error: Any, known: list[str]) -> InitErrorDetails:
    """``error`` as error details; an own unknown key gets a did-you-mean message."""
    message = error["msg"]
    if _is_own_unknown_key(error):
        message = unknown_key_message(error["loc"][0], known)
    kind = PydanticCustomError(error["type"], message)
    return InitErrorDetails(type=kind, loc=error["loc"], input=error["input"])


# --- the report -------------------------------------------------------------------------

_NO_VALUE_ERRORS = {"missing"}


def config_error(exc: ValidationError, origins: Mapping[EnvPath, str]) -> ConfigError:
    """One ConfigError, one line per problem; its ``path``/``value`` are the first problem's.

    ``origins`` maps key paths to the variable that set them, named in the report.
    """
    problems = [_report_line(error, origins) for error in exc.errors()]
    first_path, first_text, first_value = problems[0]
    lines = [first_text, *(f"{path}: {text}" for path, text, _ in problems[1:])]
    return ConfigError("\n".join(lines), path=first_path, value=first_value)


def _report_line(error: Any, origins: Mapping[EnvPath, str]) -> tuple[str, str, Any]:
    """``(path, "<what> (got <value>, from <VAR>)", value)`` for one pydantic error."""
    loc = tuple(str(part) for part in error["loc"] if part != "[key]")
    message = str(error["msg"]).removeprefix("Value error, ")
    has_value = error["type"] not in _NO_VALUE_ERRORS
    value = error["input"] if has_value else None
    notes = [f"got {_show(value, loc[-1] if loc else '')}"] if has_value else []
    variable = _origin(loc, origins)
    if variable is not None:
        notes.append(f"from {variable}")
    suffix = f" ({', '.join(notes)})" if notes else ""
    return ".".join(loc), f"{message}{suffix}", value


def _origin(loc: EnvPath, origins: Mapping[EnvPath, str]) -> str | None:
    """The variable that set ``loc`` or a mapping containing it, the most specific one."""
    for end in range(len(loc), 0, -1):
        if loc[:end] in origins:
            return origins[loc[:end]]
    return None


def _show(value: Any, key: str) -> str:
    """``value`` for an error message: short, secrets masked, cut before it is formatted.

    Only as much of ``value`` is visited as the shown text needs, so a huge value (or
    one that shares its parts many times over) costs no more than a small one.
    """
    text = _Shown(_SHOW_CHARS).value(value, _is_secret_key(key), names=False)
    return text if len(text) <= _SHOW_CHARS else text[: _SHOW_CHARS - 3] + "..."


_SHOW_CHARS = 80


class _Shown:
    """A bounded ``repr(masked(value))``: it stops once ``limit`` characters are written."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def value(self, value: Any, secret: bool, names: bool) -> str:
        if isinstance(value, Mapping):
            items = (
                (k, v, _child_secret(k, secret, names), k in _NAME_MAPS) for k, v in value.items()
            )
            return self.items("{", (self.pair(*item) for item in items), "}")
        if isinstance(value, list | tuple):
            return self.items("[", (self.value(item, secret, False) for item in value), "]")
        if secret and value is not None:
            return self.spend(repr(_MASK))
        if isinstance(value, str):
            room = max(self.left, 0) + 1
            return self.spend(repr(masked(value[: room + _URL_SLACK])[:room]))
        return self.spend(reprlib.repr(value))

    def pair(self, key: Any, value: Any, secret: bool, names: bool) -> str:
        shown = self.value(key, False, False) + self.spend(": ")
        return shown + self.value(value, secret, names)

    def items(self, opening: str, parts: Iterator[str], closing: str) -> str:
        """``opening part, part... closing``; a part is computed only while room is left."""
        written = [self.spend(opening)]
        while self.left > 0:
            part = next(parts, None)
            if part is None:
                return "".join(written) + closing
            written.append(part if len(written) == 1 else ", " + part)
            self.left -= 2
        return "".join(written) + "..."

    def spend(self, text: str) -> str:
        self.left -= len(text)
        return text


# --- secrets ----------------------------------------------------------------------------

_SECRET_WORDS = ("password", "secret", "token", "credentials", "api-key")
# scheme://user:password@ -- the group keeps what comes before the password. Linear: a match
# starts only where a run of scheme characters starts (the lookbehind), and the possessive
# runs never backtrack, so no character is scanned from many starting points.
_URL_PASSWORD = re.compile(
    r"((?<![A-Za-z0-9+.\-])[0-9+.\-]*+[A-Za-z][A-Za-z0-9+.\-]*+://[^\s/@:]*+:)[^\s/@]*+@"
)
_URL_SLACK = 4096  # a URL cut by an error message is masked on this much more of its text
_MASK = "***"
_NAME_MAPS = {"binders", "bindings", "retryable-exceptions"}


def masked(value: Any, secret: bool = False, names: bool = False) -> Any:
    """``value`` with secret scalars replaced by ``***`` and URL passwords masked.

    A value is secret under a key naming a password, secret, token, credentials
    or api key (``secret``). ``names``: the keys of mapping ``value`` are
    user-chosen names (bindings, binders), never taken for secret keys.
    """
    if isinstance(value, Mapping):
        return {
            k: masked(v, _child_secret(k, secret, names), k in _NAME_MAPS) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [masked(item, secret) for item in value]
    if secret and value is not None:
        return _MASK
    if isinstance(value, str):
        return _URL_PASSWORD.sub(rf"\g<1>{_MASK}@", value)
    return value


def _is_secret_key(key: object) -> bool:
    """Whether values under ``key`` are secrets."""
    text = normalize_key(str(key))
    return any(word in text for word in _SECRET_WORDS)


def _child_secret(key: object, secret: bool, names: bool) -> bool:
    """Whether the value under ``key`` is secret, given its mapping's own flags."""
    return secret or (not names and _is_secret_key(key))
