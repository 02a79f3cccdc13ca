"""Plugin discovery: binder types and converters from the ``binder`` entry-point group.

Built-in binders are found the same way as third-party ones: each is a module
listed under ``[project.entry-points.binder]`` that implements the hooks of
:class:`binder.spi.BinderSpec`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import pluggy
from pydantic import BaseModel

from binder.converters import Converter
from binder.errors import ConfigError
from binder.spi import PROJECT, Binder, BinderSpec, BinderType

__all__ = [
    "binder_types",
    "binding_option_models",
    "converters",
    "drop_test_broker",
    "make_test_binder",
    "option_models",
    "plugin_manager",
]


@functools.cache
def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loaded from entry points on first use."""
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(BinderSpec)
    manager.load_setuptools_entrypoints(PROJECT)
    return manager


def binder_types() -> dict[str, BinderType]:
    """Every registered binder type by its ``type:`` name."""
    found: dict[str, BinderType] = {}
    for batch in plugin_manager().hook.binder_add_binder_types():
        for binder_type in batch:
            found.setdefault(binder_type.name, binder_type)
    return found


def option_models() -> Mapping[str, type[BaseModel]]:
    """Binder type name → the model of its options (what config validation needs)."""
    return {name: kind.options for name, kind in binder_types().items()}


def binding_option_models() -> Mapping[str, type[BaseModel]]:
    """Binder type name → the model of the keys its bindings may set under ``consumer:`` and
    ``producer:`` (a type's optional ``binding_options``). A type without one is absent: such
    keys are unknown keys on its bindings."""
    found: dict[str, type[BaseModel]] = {}
    for name, kind in binder_types().items():
        model = getattr(kind, "binding_options", None)
        if model is not None:
            found[name] = model
    return found


def converters() -> list[Converter]:
    """Converters contributed by plugins (the built-ins are always present)."""
    return [c for batch in plugin_manager().hook.binder_add_converters() for c in batch]


def make_test_binder(name: str, entry: Any, broker: str) -> Binder:
    """The in-memory binder a plugin gives for testing (``binder_make_test_binder``)."""
    binder = plugin_manager().hook.binder_make_test_binder(name=name, entry=entry, broker=broker)
    if binder is None:
        raise ConfigError(
            "no plugin provides an in-memory test binder (binder_make_test_binder); "
            "is the built-in log binder installed?",
            path=f"binder.binders.{name}",
        )
    return binder  # type: ignore[no-any-return]


def drop_test_broker(broker: str) -> None:
    """Forget the in-memory test broker ``broker`` (``binder_drop_test_broker``)."""
    plugin_manager().hook.binder_drop_test_broker(broker=broker)
