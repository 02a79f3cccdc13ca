"""The function registry: ``@function``/``@consumer``/``@supplier``, and composition ``a|b``.

A registered function is inspected once: sync or async, whether its parameter
wants the whole :class:`~binder.message.Message` or only the payload, and the
payload type to convert to. A *pipeline* is one active entry of
``function-definition``: a single function or a composition, bound as
``<name>-in-0`` / ``<name>-out-0`` where a composition's name is its parts'
names joined (``uppercase|enrich`` → ``uppercaseenrich``), as in Spring.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from binder.converters import Target
from binder.errors import ConfigError
from binder.message import Message

__all__ = ["FunctionDef", "FunctionRegistry", "Kind", "Pipeline", "parse_definition"]

Kind = Literal["function", "consumer", "supplier"]
DEFINITION = "binder.function-definition"


@dataclass(frozen=True)
class Param:
    """How a function takes its input: whole message or payload, and the payload type."""

    wants_message: bool
    target: Target
    batch: bool = False
    """The annotation is ``list[...]``: in batch mode each element is adapted alone."""
    whole: Target | None = None
    """For ``list[X]`` of payloads: the whole list's target, used outside batch mode."""


@dataclass(frozen=True)
class FunctionDef:
    """A registered function and what inspecting its signature found."""

    name: str
    fn: Callable[..., Any]
    kind: Kind
    is_async: bool
    param: Param | None
    interval: float | None = None

    @classmethod
    def inspect(
        cls, fn: Callable[..., Any], kind: Kind, name: str | None, **kw: Any
    ) -> FunctionDef:
        """Build the definition of ``fn``; a function that takes no input must be a supplier."""
        name = name or fn.__name__
        param = None if kind == "supplier" else _input_param(fn, name)
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - async callables
        )
        return cls(name=name, fn=fn, kind=kind, is_async=is_async, param=param, **kw)


def _input_param(fn: Callable[..., Any], name: str) -> Param:
    params = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(params) != 1:
        raise ConfigError(
            f"function {name!r} must take exactly one positional parameter", path=DEFINITION
        )
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: take the payload as it comes
        hints = {}
    return param_for(hints.get(params[0].name))


def param_for(annotation: Any) -> Param:
    """``Message``/``Message[T]`` → whole message; ``list[X]`` → batch-capable; else payload."""
    origin = typing.get_origin(annotation)
    if annotation is Message or origin is Message:
        args = typing.get_args(annotation)
        return Param(wants_message=True, target=Target(args[0] if args else None))
    if origin is list:
        (element,) = typing.get_args(annotation) or (None,)
        inner = param_for(element)
        whole = None if inner.wants_message else Target(annotation)
        return Param(inner.wants_message, inner.target, batch=True, whole=whole)
    return Param(wants_message=False, target=Target(annotation))


@dataclass
class Pipeline:
    """One active entry of ``function-definition``: a function or a composition of several."""

    name: str
    stages: list[FunctionDef]
    kind: Kind = field(init=False)

    def __post_init__(self) -> None:
        first, last = self.stages[0], self.stages[-1]
        self.kind = (
            "supplier"
            if first.kind == "supplier"
            else "consumer"
            if last.kind == "consumer"
            else "function"
        )
        if first.kind == "supplier" and last.kind == "consumer":
            raise ConfigError(f"{self.name!r} has neither input nor output", path=DEFINITION)

    @property
    def has_input(self) -> bool:
        return self.kind != "supplier"

    @property
    def has_output(self) -> bool:
        return self.stages[-1].kind != "consumer"

    @property
    def is_async(self) -> bool:
        return any(stage.is_async for stage in self.stages)

    @property
    def input_binding(self) -> str:
        return f"{self.name}-in-0"

    @property
    def output_binding(self) -> str:
        return f"{self.name}-out-0"

    @property
    def interval(self) -> float:
        return self.stages[0].interval or 1.0


class FunctionRegistry:
    """Functions registered with the decorators, by name."""

    def __init__(self) -> None:
        self._defs: dict[str, FunctionDef] = {}

    def add(self, definition: FunctionDef) -> None:
        """Register; a second function of the same name is an error."""
        if definition.name in self._defs:
            raise ConfigError(f"function {definition.name!r} is registered twice", path=DEFINITION)
        self._defs[definition.name] = definition

    def get(self, name: str) -> FunctionDef | None:
        return self._defs.get(name)

    def names(self) -> list[str]:
        return list(self._defs)

    def __iter__(self) -> Iterable[FunctionDef]:  # type: ignore[override]
        return iter(self._defs.values())

    def __len__(self) -> int:
        return len(self._defs)


def parse_definition(text: str | None, registry: FunctionRegistry) -> list[Pipeline]:
    """The active pipelines: ``a|b;c`` → ``[Pipeline(ab), Pipeline(c)]``.

    ``None`` (no ``function-definition``) activates every registered function.
    Unknown names and impossible compositions are :class:`ConfigError`.
    """
    entries = registry.names() if text is None else [e for e in text.split(";") if e.strip()]
    pipelines = [_pipeline(entry, registry) for entry in entries]
    seen: set[str] = set()
    for pipeline in pipelines:
        if pipeline.name in seen:
            raise ConfigError(f"{pipeline.name!r} is active twice", path=DEFINITION, value=text)
        seen.add(pipeline.name)
    return pipelines


def _pipeline(entry: str, registry: FunctionRegistry) -> Pipeline:
    names = [part.strip() for part in entry.split("|")]
    stages = []
    for name in names:
        definition = registry.get(name)
        if definition is None:
            known = ", ".join(registry.names()) or "none registered"
            raise ConfigError(
                f"names function {name!r}, which is not registered (registered: {known})",
                path=DEFINITION,
                value=entry,
            )
        stages.append(definition)
    for position, stage in enumerate(stages):
        if stage.kind == "supplier" and position > 0:
            raise ConfigError(f"supplier {stage.name!r} can only come first", path=DEFINITION)
        if stage.kind == "consumer" and position < len(stages) - 1:
            raise ConfigError(f"consumer {stage.name!r} can only come last", path=DEFINITION)
    return Pipeline(name="".join(names), stages=stages)
