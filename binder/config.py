"""Settings models and their loading from a YAML document plus ``BINDER_*`` variables.

The document is ``{"binder": {...}}`` with kebab-case keys (``DESIGN.md`` shows
a full example); :func:`load_config` validates it, applies the environment
overrides and returns the :class:`BinderSection`. Every problem found is
reported in one :class:`~binder.errors.ConfigError`, one line per problem::

    binder.bindings.orders-in-0.consumer.max-attempts: Input should be ... (got 0)

Binder-specific keys under ``binder.binders.<name>`` are validated by the
options model of the binder's type, passed in as ``binder_types``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializationInfo,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from binder._exceptions import warn_unknown_exceptions
from binder._settings_env import (
    Duration,
    EnvOverrideSource,
    EnvPath,
    Problem,
    config_error,
    invalid,
    masked,
    normalize_key,
    unknown_key_message,
    with_key_hints,
)
from binder._yaml import safe_load
from binder.errors import ConfigError, ExpressionError
from binder.spi import kebab

if TYPE_CHECKING:
    from pydantic import ModelWrapValidatorHandler

    from binder.partitioning import KeyExpression

__all__ = [
    "BinderConfig",
    "BinderEntry",
    "BinderSection",
    "BinderTypes",
    "BindingConfig",
    "ConsumerOptions",
    "Duration",
    "MetricsConfig",
    "ProducerOptions",
    "Settings",
    "load_config",
    "load_yaml",
    "normalize_binding_name",
    "render_effective",
]

BinderTypes = Mapping[str, type[BaseModel]]

_DEFAULT_BINDERS: dict[str, dict[str, Any]] = {"local": {"type": "log"}}


# --- load context -----------------------------------------------------------------------


@dataclass
class _LoadState:
    """What one :func:`load_config` call passes to the validators and the env source.

    pydantic-settings offers no way to hand call arguments to a source or a
    validation context to ``BaseSettings.__init__``, hence a context variable.
    """

    environ: Mapping[str, str]
    binder_types: BinderTypes | None = None
    binding_types: BinderTypes | None = None
    origins: dict[EnvPath, str] = field(default_factory=dict)


_LOAD_STATE: ContextVar[_LoadState | None] = ContextVar("binder_config_load", default=None)


def _load_state() -> _LoadState:
    """The state of the running :func:`load_config`, or plain ``os.environ`` outside one."""
    return _LOAD_STATE.get() or _LoadState(os.environ)


# --- models -----------------------------------------------------------------------------


class _Model(BaseModel):
    """Base of the settings models: kebab-case keys, unknown keys refused with a hint."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=kebab,
        populate_by_name=True,
        coerce_numbers_to_str=True,
    )

    @model_validator(mode="wrap")
    @classmethod
    def _hint_unknown_keys(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        try:
            return handler(data)
        except ValidationError as exc:
            raise with_key_hints(exc, cls) from None


_EXCEPTION_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _check_exception_name(name: str) -> str:
    """``name`` if it is a simple or dotted Python class name."""
    if not _EXCEPTION_NAME.fullmatch(name):
        raise ValueError("expected an exception class name such as 'ValueError' or 'mod.Error'")
    return name


_ExceptionName = Annotated[str, AfterValidator(_check_exception_name)]


class _BindingPart(_Model):
    """A binding's ``consumer:`` or ``producer:``: the core's keys, and beside them the keys
    of the binding's binder type (its ``binding_options`` model, e.g. RabbitMQ's
    ``queue-type``), validated once the binding's binder is known (:class:`BinderSection`)."""

    model_config = ConfigDict(extra="allow")
    _binder_options: BaseModel | None = PrivateAttr(default=None)

    @property
    def binder_options(self) -> BaseModel | None:
        """The binder-specific keys, validated by the binder type's ``binding_options``;
        ``None`` when there are none (or the load had no binder types)."""
        return self._binder_options


class ConsumerOptions(_BindingPart):
    """How a binding consumes: concurrency, retries, dead letters, partitions, batches."""

    concurrency: int = Field(1, ge=1)
    max_attempts: int = Field(3, ge=1)
    back_off_initial_interval: Duration = 1.0
    back_off_multiplier: float = Field(2.0, ge=1)
    back_off_max_interval: Duration = 10.0
    retryable_exceptions: dict[_ExceptionName, bool] = Field(default_factory=dict)
    """Exception class name (simple or dotted) -> retry it or not, as in Spring."""
    default_retryable: bool = True
    dead_letter: bool = True
    dead_letter_destination: str | None = None
    """``None``: ``<destination>.<group>.dlq``. Whatever its name, a letter goes to its
    original partition when this destination has that many (else by key, else spread)."""
    partitioned: bool = False
    """Accepted for Spring Cloud Stream compatibility only, and changes nothing: partitions
    are native here, every consumer reads the partitions it is assigned (or, with
    ``instance-count`` > 1, the partitions ``p % instance-count == instance-index``)."""
    instance_index: int = Field(0, ge=0)
    instance_count: int = Field(1, ge=1)
    batch_mode: bool = False
    batch_size: int = Field(100, ge=1)
    start_offset: Literal["earliest", "latest"] | None = None
    """``None``: earliest for a named group that never committed, latest for anonymous."""
    retry_mode: Literal["in-place", "delayed"] = "in-place"
    """``in-place``: a failed message is retried where it is, holding back its partition (per
    key order kept). ``delayed``: a failed attempt is acknowledged and the message is sent again
    after the back-off, through delayed delivery to ``<destination>.<group>.retry`` (which the
    binding also consumes), so later messages flow meanwhile; order per key is not kept for a
    message under retry. Needs a group and a binder with ``delayed_delivery``."""
    expired: Literal["dead-letter", "drop"] = "dead-letter"
    """What happens to a message received after its ``x-expires-at``: dead-lettered with
    ``x-exception-type`` naming :class:`~binder.errors.MessageExpired` (dropped when the binding
    has no dead-letter destination), or ``drop``: dropped, logged and counted."""

    def warn_unknown_exceptions(self, path: str) -> list[str]:
        """Log a warning for each ``retryable-exceptions`` name that no loaded module defines
        (the rule is in :mod:`binder._exceptions`); ``path`` is this model's key path."""
        return warn_unknown_exceptions(self.retryable_exceptions, f"{path}.retryable-exceptions")

    @model_validator(mode="after")
    def _check_instance_index(self) -> Self:
        if self.instance_index >= self.instance_count:
            message = f"must be less than instance-count ({self.instance_count})"
            raise invalid([Problem(("instance-index",), message, self.instance_index)])
        return self


class ProducerOptions(_BindingPart):
    """How a binding produces: partitioning and groups provisioned up front."""

    partition_key_expression: str | None = None
    partition_count: int = Field(1, ge=1)
    """The fewest partitions the destination is provisioned with; records are placed over
    its real partition count, which may be higher (made elsewhere, or by the binder)."""
    required_groups: list[str] = Field(default_factory=list)
    ttl: Duration | None = None
    """How long a message this binding sends stays valid: it carries ``x-expires-at`` (the
    send time plus ``ttl``, epoch ms), and a consumer receiving it later does not handle it
    (see ``consumer.expired``). ``None``: no expiry."""
    _key_expression: KeyExpression | None = PrivateAttr(default=None)

    @property
    def key_expression(self) -> KeyExpression | None:
        """``partition-key-expression`` compiled at load time; ``None`` without one."""
        return self._key_expression

    @model_validator(mode="after")
    def _compile_key_expression(self) -> Self:
        text = self.partition_key_expression
        if text is not None:
            self._key_expression = _compile_key_expression(text)
        return self


def _compile_key_expression(text: str) -> KeyExpression:
    """``text`` compiled by the safe evaluator; a refused one fails at its key."""
    from binder.partitioning import compile_expression

    try:
        return compile_expression(text)
    except ExpressionError as exc:
        raise invalid([Problem(("partition-key-expression",), str(exc), text)]) from None


class BindingConfig(_Model):
    """One binding (``uppercase-in-0``): where it points and how it consumes or produces.

    After loading, ``destination`` and ``binder`` are resolved (binding name, default binder).
    """

    destination: str | None = None
    group: str | None = None
    """``None``: an anonymous, non-durable consumer that gets every message."""
    binder: str | None = None
    content_type: str = "application/json"
    consumer: ConsumerOptions = Field(default_factory=ConsumerOptions)
    producer: ProducerOptions = Field(default_factory=ProducerOptions)


class BinderEntry(_Model):
    """One configured binder: its ``type`` and the binder-specific keys beside it.

    ``options`` is the type's options model instance, or the raw mapping when
    the load had no ``binder_types``. Serialized flat, as written in YAML (so a
    binder cannot have an option called ``type``, nor only one called ``options``).
    """

    type: str
    options: Any = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _gather_options(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or _is_gathered(data):
            return data
        gathered: dict[str, Any] = {"options": {k: v for k, v in data.items() if k != "type"}}
        if "type" in data:
            gathered["type"] = data["type"]
        return gathered

    @model_validator(mode="after")
    def _validate_options(self) -> Self:
        types = _load_state().binder_types
        if types is not None:
            self.options = _binder_options(self.type, self.options, types)
        return self

    @model_serializer(mode="plain")
    def _flatten(self, info: SerializationInfo) -> dict[str, Any]:
        options = self.options
        if isinstance(options, BaseModel):
            options = options.model_dump(mode=info.mode, by_alias=bool(info.by_alias))
        return {"type": self.type, **options}


def _is_gathered(data: Mapping[Any, Any]) -> bool:
    """Whether ``data`` already has the attribute shape ``{type, options}`` (built in code)."""
    options = data.get("options")
    return set(data) <= {"type", "options"} and isinstance(options, Mapping | BaseModel)


def _binder_options(kind: str, options: Any, types: BinderTypes) -> BaseModel:
    """``options`` validated by the model of binder type ``kind``."""
    model = types.get(kind)
    if model is None:
        message = f"unknown binder type; known types: {', '.join(sorted(types)) or 'none'}"
        raise invalid([Problem(("type",), message, kind)])
    if isinstance(options, model):
        return options
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        raise with_key_hints(exc, model) from None


def normalize_binding_name(name: str) -> str:
    """``name`` as bindings are matched: lower case, ``_`` read as ``-``."""
    return normalize_key(name)


class MetricsConfig(_Model):
    """``binder.metrics``: whether metrics are kept, where ``binder run`` serves ``/metrics``
    and ``/health/*``."""

    enabled: bool = True
    """``false``: nothing is registered with ``prometheus_client`` and no message is timed
    (``/metrics`` answers 501; ``/health/*`` are served as ever)."""

    port: int | None = Field(None, ge=0, le=65535)
    """``None``: not served (``binder run --metrics-port`` sets it); ``0``: any free port."""
    host: str = "127.0.0.1"
    """The address to listen on; loopback unless set (``0.0.0.0`` for every interface)."""


class BinderSection(_Model):
    """The ``binder:`` section: active functions, binders and bindings."""

    function_definition: str | None = None
    """``;`` separates active functions, ``|`` composes; ``None``: every function is active."""
    default_binder: str | None = None
    """Resolved at load: the only binder when there is exactly one."""
    binders: dict[str, BinderEntry] = Field(default_factory=dict, validate_default=True)
    """Without any configured: ``{"local": {"type": "log"}}``."""
    bindings: dict[str, BindingConfig] = Field(default_factory=dict)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    on_binding_failure: Literal["restart", "exit"] = "restart"
    """What a binding that cannot go on does: ``restart`` (its consumer is replaced after a
    back-off, 1 s doubling to 30 s) or ``exit`` (``app.run()`` stops the app and exits
    with status 1, for orchestrators that restart processes)."""

    def binding(self, name: str) -> BindingConfig | None:
        """The binding called ``name``, matched as :func:`normalize_binding_name` does."""
        if name in self.bindings:
            return self.bindings[name]
        wanted = normalize_binding_name(name)
        matches = (b for n, b in self.bindings.items() if normalize_binding_name(n) == wanted)
        return next(matches, None)

    @field_validator("binders", mode="before")
    @classmethod
    def _default_binders(cls, value: Any) -> Any:
        return _DEFAULT_BINDERS if value is None or value == {} else value

    @field_validator("function_definition")
    @classmethod
    def _check_function_definition(cls, value: str | None) -> str | None:
        if value is not None and not all(_function_names(value)):
            raise ValueError("expected names like 'a|b;c' (';' separates, '|' composes)")
        return value

    @model_validator(mode="after")
    def _resolve_binders(self) -> Self:
        if self.default_binder is None and len(self.binders) == 1:
            self.default_binder = next(iter(self.binders))
        problems = [*_default_binder_problems(self), *_binding_problems(self)]
        if problems:
            raise invalid(problems)
        self.bindings = {name: _resolved(name, b, self) for name, b in self.bindings.items()}
        problems = [p for name in self.bindings for p in _binder_keys_problems(name, self)]
        if problems:
            raise invalid(problems)
        return self


def _function_names(definition: str) -> list[str]:
    """Every function name in a ``function-definition``, stripped (empty ones included)."""
    return [name.strip() for part in definition.split(";") for name in part.split("|")]


def _default_binder_problems(section: BinderSection) -> Iterator[Problem]:
    """Problems with ``default-binder``: missing among several binders, or unknown."""
    names = ", ".join(section.binders)
    if section.default_binder is None:
        message = f"required when several binders are configured ({names})"
        yield Problem(("default-binder",), message, None, kind="missing")
    elif section.default_binder not in section.binders:
        message = f"unknown binder; configured binders: {names}"
        yield Problem(("default-binder",), message, section.default_binder)


def _binding_problems(section: BinderSection) -> Iterator[Problem]:
    """Bindings naming an unknown binder, or whose names clash once normalized."""
    seen: dict[str, str] = {}
    for name, binding in section.bindings.items():
        key = normalize_binding_name(name)
        if key in seen:
            message = f"same binding as {seen[key]!r} ('-' and '_' alike, case ignored)"
            yield Problem(("bindings", name), message, name)
        seen.setdefault(key, name)
        if binding.binder is not None and binding.binder not in section.binders:
            message = f"unknown binder; configured binders: {', '.join(section.binders)}"
            yield Problem(("bindings", name, "binder"), message, binding.binder)


def _binder_keys_problems(name: str, section: BinderSection) -> Iterator[Problem]:
    """Validate the binder-specific keys of binding ``name``'s ``consumer`` and ``producer``
    with its binder type's ``binding_options`` model (kept raw when the load had none);
    such keys under a binder type that has none are unknown keys."""
    binding = section.bindings[name]
    state = _load_state()
    types = state.binding_types
    if types is None and state.binder_types is not None:
        types = {}  # binder options are validated: binding keys of no type are unknown
    entry = section.binders.get(binding.binder or "")
    for part_name in ("consumer", "producer"):
        part: _BindingPart = getattr(binding, part_name)
        extras = part.model_extra
        if not extras or types is None or entry is None:
            continue
        where = ("bindings", name, part_name)
        model = types.get(entry.type)
        if model is None:
            known = [info.alias or n for n, info in type(part).model_fields.items()]
            for key, value in extras.items():
                yield Problem((*where, key), unknown_key_message(key, known), value)
            continue
        try:
            part._binder_options = model.model_validate(extras)
        except ValidationError as exc:
            known = [
                info.alias or n
                for fields in (type(part).model_fields, model.model_fields)
                for n, info in fields.items()
            ]
            for error in exc.errors():
                message = error["msg"]
                if error["type"] == "extra_forbidden" and len(error["loc"]) == 1:
                    message = unknown_key_message(error["loc"][0], known)
                loc = tuple(str(item) for item in error["loc"])
                yield Problem((*where, *loc), message, error.get("input"))


def _resolved(name: str, binding: BindingConfig, section: BinderSection) -> BindingConfig:
    """``binding`` with its destination and binder defaults filled in."""
    destination = name if binding.destination is None else binding.destination
    binder = binding.binder or section.default_binder
    return binding.model_copy(update={"destination": destination, "binder": binder})


class Settings(BaseSettings):
    """The whole document, ``{"binder": {...}}``, with ``BINDER_*`` overrides on top of it."""

    model_config = SettingsConfigDict(
        extra="forbid",
        alias_generator=kebab,
        populate_by_name=True,
        case_sensitive=True,
    )

    binder: BinderSection = Field(default_factory=BinderSection)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment overrides first (they win), then the document given to ``__init__``."""
        state = _load_state()
        document = _init_document(init_settings)
        env = EnvOverrideSource(settings_cls, document, state.environ, state.origins)
        return env, init_settings

    @model_validator(mode="wrap")
    @classmethod
    def _hint_unknown_keys(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        try:
            return handler(data)
        except ValidationError as exc:
            raise with_key_hints(exc, cls) from None


BinderConfig = Settings
"""The top-level document model (alias of :class:`Settings`)."""


def _init_document(init_settings: PydanticBaseSettingsSource) -> Mapping[str, Any] | None:
    """The ``binder`` section given to ``Settings(...)``, whose key spellings env vars match."""
    kwargs = init_settings.init_kwargs if isinstance(init_settings, InitSettingsSource) else {}
    document = kwargs.get("binder")
    return document if isinstance(document, Mapping) else None


# --- loading ----------------------------------------------------------------------------


def load_config(
    doc: Mapping[str, Any] | None,
    environ: Mapping[str, str] | None = None,
    binder_types: BinderTypes | None = None,
    binding_types: BinderTypes | None = None,
) -> BinderSection:
    """Validate ``doc`` (``{"binder": {...}}``) with the ``BINDER_*`` overrides of ``environ``.

    ``environ`` defaults to ``os.environ``. ``binder_types`` maps a binder type
    name to its options model; ``None`` keeps binder options as raw mappings.
    ``binding_types`` maps a binder type name to the model of the keys its bindings may set
    beside the core's under ``consumer:`` and ``producer:``; such keys are unknown keys for a
    binder type it does not name, and kept unvalidated only when both maps are ``None``.
    Raises one :class:`ConfigError` listing every problem.
    """
    document = _document(doc)
    state = _LoadState(os.environ if environ is None else environ, binder_types, binding_types)
    token = _LOAD_STATE.set(state)
    try:
        return Settings(**document).binder
    except ValidationError as exc:
        raise config_error(exc, state.origins) from None
    finally:
        _LOAD_STATE.reset(token)


def _document(doc: Mapping[str, Any] | None) -> dict[str, Any]:
    """``doc`` as keyword arguments for :class:`Settings`; ``binder: null`` counts as absent."""
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise ConfigError("expected a mapping with a top-level 'binder' key", value=doc)
    for key in doc:
        if not isinstance(key, str) or key.startswith("_"):
            raise ConfigError(unknown_key_message(key, ["binder"]), path=str(key), value=doc[key])
    return {key: value for key, value in doc.items() if not (key == "binder" and value is None)}


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in YAML file ``path`` (``{}`` when empty); errors name the file.

    Read by :class:`binder._yaml.StrictLoader`: a key written twice in one mapping, aliases
    expanding the document by more than 100,000 nodes (or into themselves) and nesting
    deeper than 64 levels are refused, naming the line.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {str(path)!r}: {exc}") from None
    try:
        document = safe_load(text, str(path))
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in configuration file {str(path)!r}: {exc}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        kind = type(document).__name__
        raise ConfigError(f"configuration file {str(path)!r} must hold a mapping, not a {kind}")
    return document


# --- effective configuration ------------------------------------------------------------


def render_effective(section: BinderSection) -> str:
    """The effective configuration as YAML (defaults included), secrets masked.

    Values of keys naming a password, secret, token, credentials or api key become
    ``"***"``, and so does the password in any URL's user info.
    """
    data = {"binder": section.model_dump(mode="json", by_alias=True)}
    return yaml.safe_dump(masked(data), sort_keys=False, allow_unicode=True)
