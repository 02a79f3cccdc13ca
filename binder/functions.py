"""The function registry: ``@function``/``@consumer``/``@supplier``, and composition ``a|b``.

A registered function is inspected once: sync or async, whether its parameter
wants the whole :class:`~binder.message.Message` or only the payload, and the
payload type to convert to. A *pipeline* is one active entry of
``function-definition``: a single function or a composition, bound as
``<name>-in-0`` / ``<name>-out-0`` where a composition's name is its parts'
names joined (``uppercase|enrich`` → ``uppercaseenrich``), as in Spring.
"""

from __future__ import annotations

import difflib
import inspect
import re
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from binder.config import normalize_binding_name
from binder.converters import Target
from binder.errors import ConfigError
from binder.message import Message

__all__ = [
    "BindingUse",
    "FunctionDef",
    "FunctionRegistry",
    "Kind",
    "Pipeline",
    "check_bindings",
    "parse_definition",
]

Kind = Literal["function", "consumer", "supplier"]
DEFINITION = "binder.function-definition"
_FUNCTION_BINDING = re.compile(r"^(?P<fn>.+)[-_](?:in|out)[-_]\d+$", re.IGNORECASE)


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
    """The input parameter: the one without a default; every other one needs a default."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"function {name!r}: cannot read its signature ({exc})", path=DEFINITION
        ) from exc
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    required = [p for p in parameters if p.default is p.empty and p.kind not in variadic]
    if len(required) != 1:
        raise ConfigError(_arity_problem(name, required), path=DEFINITION)
    (param,) = required
    if param.kind is param.KEYWORD_ONLY:
        raise ConfigError(
            f"function {name!r}: keyword-only parameter {param.name!r} has no default, "
            "but the input is passed positionally; give it a default or make it positional",
            path=DEFINITION,
        )
    return param_for(_hints(fn).get(param.name))


def _arity_problem(name: str, required: list[inspect.Parameter]) -> str:
    wanted = (
        f"function {name!r} must take exactly one positional parameter without a default "
        "(its input; further parameters need defaults)"
    )
    if not required:
        return f"{wanted}, and it has none"
    names = ", ".join(repr(p.name) for p in required)
    return f"{wanted}, but {len(required)} have none: {names}"


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """Resolved annotations of ``fn`` (or of its ``__call__``); empty if they cannot resolve."""
    for target in (fn, getattr(fn, "__call__", None)):  # noqa: B004 - callable objects
        try:
            return typing.get_type_hints(target)
        except Exception:  # unresolvable forward references: take the payload as it comes
            continue
    return {}


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


@dataclass(frozen=True)
class BindingUse:
    """How the configured bindings relate to one process's functions (:func:`check_bindings`)."""

    unused: dict[str, str] = field(default_factory=dict)
    """Binding name → why this process does not use it: its function is registered here but
    not active, or not registered here at all (another process sharing the file runs it)."""
    typos: list[ConfigError] = field(default_factory=list)
    """Bindings whose function is not registered here but is a close match of an active
    function: surely misspelt, each with a "did you mean" hint."""


def check_bindings(
    names: Iterable[str], pipelines: Iterable[Pipeline], registry: FunctionRegistry
) -> BindingUse:
    """Sort the binding ``names`` of a configuration for the active ``pipelines``.

    A name that is not a function binding (``<fn>-in-<n>`` / ``<fn>-out-<n>``), such as one
    used only by ``app.send``, and a binding of an active function are in use. A binding of
    a registered function (or a composition of registered functions) that is not active, or
    of a function this process does not register, is *unused*: one file serves several
    processes. Only a function that is neither registered nor active, yet a close match of
    an active one, is a *typo*. Names compare as bindings match: case and ``-``/``_`` aside.
    """
    active = {normalize_binding_name(p.name): p.name for p in pipelines}
    registered = {normalize_binding_name(n) for n in registry.names()}
    use = BindingUse()
    for name in names:
        match = _FUNCTION_BINDING.match(name)
        if match is None or normalize_binding_name(match["fn"]) in active:
            continue
        fn = match["fn"]
        if _composed_of(normalize_binding_name(fn), registered):
            use.unused[name] = f"function {fn!r} is registered but not active"
        elif close := difflib.get_close_matches(normalize_binding_name(fn), active, n=1):
            use.typos.append(_typo(name, fn, active[close[0]]))
        else:
            use.unused[name] = f"function {fn!r} is not registered in this app"
    return use


def _typo(binding: str, fn: str, active: str) -> ConfigError:
    return ConfigError(
        f"binding names function {fn!r}, which is not active and not registered "
        f"(did you mean {active!r}?)",
        path=f"binder.bindings.{binding}",
        value=binding,
    )


def _composed_of(name: str, parts: set[str]) -> bool:
    """Whether ``name`` is one or more of ``parts`` joined, as a composition's name is."""
    reached, todo = {0}, [0]
    while todo:  # linear in len(name): each start is expanded once, by each part
        start = todo.pop()
        for part in parts:
            end = start + len(part)
            if part and end not in reached and name.startswith(part, start):
                reached.add(end)
                todo.append(end)
    return len(name) in reached
