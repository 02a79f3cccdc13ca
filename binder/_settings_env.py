"""Private helpers of :mod:`binder.config`: durations and environment overrides.

Environment rules (the public contract is in ``DESIGN.md``): a variable
``BINDER_<SEGMENT>__<SEGMENT>...`` overrides the key path
``binder.<segment>.<segment>...``. Each segment matches, case-insensitively and
with ``-`` and ``_`` alike, a key the YAML document already has at that level
(so an override lands on the binding the YAML spelled ``uppercase-in-0``);
otherwise it becomes the kebab-case lower key. Values are read as YAML scalars
or flow collections. ``BINDER_TEST_*`` belongs to the test harness and is ignored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any

import yaml
from pydantic import BeforeValidator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

__all__ = [
    "ENV_PREFIX",
    "Duration",
    "EnvOverrideSource",
    "env_overrides",
    "normalize_key",
    "parse_duration",
    "parse_env_value",
]

ENV_PREFIX = "BINDER_"
_IGNORED_PREFIX = "BINDER_TEST_"
_SECTION = "binder"

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"\s*(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>us|ms|s|m|h)?\s*")
_DURATION_HELP = (
    "expected a non-negative duration: seconds as a number, or a string such as "
    "'500us', '250ms', '1.5s', '1m', '1h'"
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

    Dates and other non-JSON YAML types also stay text (a destination ``2024-01-01``).
    """
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if value is None or isinstance(value, str | int | float | bool | list | dict):
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
    """Set ``tree[path[0]][path[1]]... = value``, creating (or replacing) non-mappings on the way."""
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
