"""The application: configuration + functions + binders, wired into running bindings."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import re
import signal
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

from binder import metrics, plugins
from binder.bindings import BindingState, InputBinding, SupplierBinding
from binder.clock import SYSTEM, Clock, millis_of, seconds_of
from binder.config import BinderSection, BindingConfig, load_config, load_yaml
from binder.converters import ConverterRegistry
from binder.errors import BinderError, CapabilityError, ConfigError
from binder.functions import (
    FunctionDef,
    FunctionRegistry,
    Pipeline,
    check_bindings,
    parse_definition,
)
from binder.health import HealthServer, health
from binder.invoke import Invoker
from binder.message import DELAY, EXPIRES_AT
from binder.outputs import Observer, OutputBinding
from binder.retry import RetryPolicy, dead_letter_destination, retry_destination
from binder.spi import Binder, ConsumerSpec
from binder.tracing import Tracing, tracing

if TYPE_CHECKING:
    from binder.testing.harness import TestHarness

__all__ = ["App"]

log = logging.getLogger("binder.app")
F = TypeVar("F", bound=Callable[..., Any])
BinderFactory = Callable[[str, Any], Binder]
BINDING_NAME = re.compile(r"^(?P<fn>.+)-(?P<dir>in|out)-(?P<index>\d+)$")
"""A function's binding name, ``<function>-in|out-<n>``; any other binding is one ``app.send``
uses."""
_MAX_SEND_OUTPUTS = 128


class App:
    """A streambinder application.

    ``App.from_yaml(path)`` or ``App(config=doc)`` (the same mapping as the YAML
    file, top-level ``binder:`` key included); ``App()`` takes configuration from
    the environment only. Configuration errors raise :class:`ConfigError` here;
    errors that need the registered functions (an unknown function in
    ``function-definition``, an impossible composition, a binding whose function is
    a misspelling of an active one) raise when the app starts.

    One file can serve several processes: a binding of a function that is not
    active here, or not registered here, is accepted and logged once at INFO
    ("bindings not used by this app: ...").
    """

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        metrics_registry: Any = None,
        tracer_provider: Any = None,
        clock: Clock | None = None,
    ) -> None:
        self._environ = environ
        self.metrics_registry = metrics_registry
        """The ``prometheus_client`` registry ``/metrics`` serves (``None``: the default one)."""
        self.tracer_provider = tracer_provider
        """The OpenTelemetry tracer provider of this app's spans (``None``: the global one,
        as it is when the app starts)."""
        self._tracing: Tracing | None = None
        self.clock: Clock = clock if clock is not None else SYSTEM
        """What time it is for this app: when delayed messages are due, when messages expire
        (``app.test(clock=ManualClock())`` moves it by hand)."""
        self.config: BinderSection = load_config(
            config, environ, plugins.option_models(), plugins.binding_option_models()
        )
        self.functions = FunctionRegistry()
        self.converters = ConverterRegistry(plugins.converters())
        self._binder_factory: BinderFactory | None = None
        self._observers: list[Observer] = []
        self._reset()

    def _reset(self) -> None:
        self._binders: dict[str, Binder] = {}
        self._outputs: dict[str, OutputBinding] = {}
        self._send_outputs: OrderedDict[str, OutputBinding] = OrderedDict()
        self._opening: dict[str, list[tuple[Any, Any, Any, asyncio.Future[None]]]] = {}
        self._openers: set[asyncio.Future[None]] = set()  # the tasks opening them
        self._bindings: dict[str, InputBinding | SupplierBinding] = {}
        self._pipelines: list[Pipeline] = []
        self._started = False
        self._fatal: asyncio.Future[BaseException] | None = None

    def reconfigure(self, config: Mapping[str, Any] | None) -> None:
        """Replace the configuration (same form as the constructor's) before the app starts."""
        if self._started:
            raise BinderError("cannot reconfigure a running app; stop it first")
        self.config = load_config(
            config, self._environ, plugins.option_models(), plugins.binding_option_models()
        )

    @classmethod
    def from_yaml(cls, path: str | Path, *, environ: Mapping[str, str] | None = None) -> App:
        """An app configured by the YAML file at ``path`` plus environment overrides."""
        return cls(load_yaml(path), environ=environ)

    # -- seams (the test harness, the conformance suite, tools) ------------------------------

    def use_binder_factory(self, factory: BinderFactory | None) -> None:
        """Make the app's binders with ``factory(name, entry)`` instead of their registered
        type (``entry`` is the binder's configuration: ``entry.type``, ``entry.options``);
        ``None`` restores the registered types. Takes effect for binders made from now on:
        call it before :meth:`start` (``app.test()`` swaps every binder this way)."""
        self._binder_factory = factory

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(destination, record)`` after every record a backend accepted from
        this app (every output: functions, ``app.send``, dead letters), on the app's loop.
        It must not block or raise; ``app.test()`` records what was sent this way."""
        self._observers.append(observer)

    def remove_observer(self, observer: Observer) -> None:
        """Stop calling ``observer``; nothing when it is not there."""
        if observer in self._observers:
            self._observers.remove(observer)

    # -- registration -----------------------------------------------------------------------

    @overload
    def function(self, fn: F, *, name: str | None = None) -> F: ...
    @overload
    def function(self, fn: None = None, *, name: str | None = None) -> Callable[[F], F]: ...

    def function(self, fn: F | None = None, *, name: str | None = None) -> F | Callable[[F], F]:
        """Register a function: one input, one output (``<name>-in-0`` → ``<name>-out-0``).

        Used bare (``@app.function``) or called (``@app.function(name=...)``); either way the
        function itself is returned, with its type, so it stays callable and type-checked.

        The function takes exactly one parameter without a default, its input (the first
        positional one); further parameters need defaults and are left to them.
        """
        return self._register(fn, "function", name)

    @overload
    def consumer(self, fn: F, *, name: str | None = None) -> F: ...
    @overload
    def consumer(self, fn: None = None, *, name: str | None = None) -> Callable[[F], F]: ...

    def consumer(self, fn: F | None = None, *, name: str | None = None) -> F | Callable[[F], F]:
        """Register a consumer: one input (``<name>-in-0``), no output. Returns the function.

        As for :meth:`function`, one parameter without a default (the input); others keep
        their defaults.
        """
        return self._register(fn, "consumer", name)

    @overload
    def supplier(self, fn: F, *, interval: float = 1.0, name: str | None = None) -> F: ...
    @overload
    def supplier(
        self, fn: None = None, *, interval: float = 1.0, name: str | None = None
    ) -> Callable[[F], F]: ...

    def supplier(
        self, fn: F | None = None, *, interval: float = 1.0, name: str | None = None
    ) -> F | Callable[[F], F]:
        """Register a supplier, called every ``interval`` seconds; output ``<name>-out-0``.
        Returns the function."""
        return self._register(fn, "supplier", name, interval=interval)

    def _register(
        self, fn: F | None, kind: Any, name: str | None, **kw: Any
    ) -> F | Callable[[F], F]:
        def decorate(target: F) -> F:
            self.functions.add(FunctionDef.inspect(target, kind, name, **kw))
            return target

        return decorate if fn is None else decorate(fn)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Validate against the functions, connect binders, start every binding."""
        if self._started:
            return
        self._started = True
        self._tracing = tracing(self.tracer_provider)
        if self.config.metrics.enabled:
            metrics.register(self, self.metrics_registry)
        try:
            self._pipelines = parse_definition(self.config.function_definition, self.functions)
            self._check_binding_names()
            for pipeline in self._pipelines:
                await self._bind(pipeline)
            await self._open_send_bindings()
            bindings = list(self._bindings.values())
            await _all([b.start() for b in bindings if not isinstance(b, SupplierBinding)])
            for binding in bindings:  # suppliers once what they feed can receive
                if isinstance(binding, SupplierBinding):
                    await binding.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop suppliers, drain and commit inputs, close producers and binders. Idempotent."""
        openers = list(self._openers)
        for opener in openers:  # first sends still waiting for their output are abandoned
            opener.cancel()
        await asyncio.gather(*openers, return_exceptions=True)
        bindings = list(self._bindings.values())
        for binding in sorted(bindings, key=lambda b: not isinstance(b, SupplierBinding)):
            await _quietly(binding.stop())
        for output in [*self._outputs.values(), *self._send_outputs.values()]:
            await _quietly(output.close())
        for binder in self._binders.values():
            await _quietly(binder.close())
        metrics.unregister(self, self.metrics_registry)
        self._reset()

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def run(self) -> None:
        """Run until SIGINT or SIGTERM, then drain in-flight work, commit, and return.

        With ``binder.on-binding-failure: exit``, a binding that cannot go on stops the app
        the same way, and ``run`` then exits with status 1 (``SystemExit(1)``).

        When logging is not configured (the root logger has no handler), it is set up at
        INFO to stderr, so a plain ``python shop.py`` says it runs and, last, ``stopped``."""
        if not logging.getLogger().handlers:
            logging.basicConfig(
                level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
            )
        try:
            failure = asyncio.run(self._run_until_signalled())
        finally:
            log.info("stopped")
        if failure is not None:
            raise SystemExit(1)

    async def _run_until_signalled(self) -> BaseException | None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        served = self.config.metrics
        server = None
        if served.port is not None:
            server = HealthServer(self.health, self._metrics_text(), served.host, served.port)
            await server.start()
        try:
            return await self._serve_until(stop)
        finally:
            if server is not None:
                await server.close()

    async def _serve_until(self, stop: asyncio.Event) -> BaseException | None:
        async with self:
            log.info("running: %s", ", ".join(self._bindings) or "no bindings")
            fatal = self._fatal_future()
            signalled = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait([signalled, fatal], return_when=asyncio.FIRST_COMPLETED)
            finally:
                signalled.cancel()
            failure = fatal.result() if fatal.done() else None
            if failure is not None:
                log.error("stopping: a binding failed (on-binding-failure: exit): %s", failure)
            else:
                log.info("stopping: draining in-flight messages")
        return failure

    def _fatal_future(self) -> asyncio.Future[BaseException]:
        if self._fatal is None:
            self._fatal = asyncio.get_running_loop().create_future()
        return self._fatal

    def _binding_failed(self, binding: InputBinding, exc: BaseException) -> None:
        """``on-binding-failure: exit``: the first failure ends :meth:`run`."""
        fatal = self._fatal_future()
        if not fatal.done():
            fatal.set_result(exc)

    @property
    def failure(self) -> BaseException | None:
        """With ``on-binding-failure: exit``, the failure that stopped a binding for good
        (``app.run()`` exits with status 1 on it); ``None`` while none has."""
        fatal = self._fatal
        return fatal.result() if fatal is not None and fatal.done() else None

    def test(self, *, broker: str | None = None, clock: Clock | None = None) -> TestHarness:
        """A harness that runs this app with every binder swapped for an in-memory log.

        The log is private to the harness unless ``broker`` names one that several
        apps under test share. ``BINDER_TEST_BINDER=<type>`` runs on that binder type.
        ``clock`` (a :class:`~binder.clock.ManualClock`) is the time the app goes by while
        under test: delayed messages become due, and messages expire, when the test moves it
        (``clock.advance(60)``), without sleeping.
        """
        from binder.testing.harness import TestHarness

        return TestHarness(self, broker=broker, clock=clock)

    # -- sending ----------------------------------------------------------------------------

    def send(
        self,
        name: str,
        payload: Any,
        *,
        key: Any = None,
        headers: Mapping[str, Any] | None = None,
        delay: float | timedelta | None = None,
        ttl: float | timedelta | None = None,
    ) -> asyncio.Future[None]:
        """Send to the binding called ``name`` (its destination and producer settings),
        else to the destination ``name`` on the default binder.

        ``delay`` (seconds or a ``timedelta``) holds the message back: no consumer gets it
        before then (the header ``x-delay``, in milliseconds, does the same); it arrives with
        ``x-deliver-at``, its due time in epoch ms. ``ttl`` makes it expire that long after
        this call (``x-expires-at``; the binding's ``producer.ttl`` when not given): a
        consumer receiving it later does not handle it. Both need no code on the consumer.

        Returns an awaitable that completes once the backend accepted (or, delayed, holds) the
        message. Sends made in one loop iteration go to the backend together, and no task is
        made per send, so ``await asyncio.gather(*(app.send(...) for ...))`` runs at the
        client's speed.
        """
        if not self._started:
            raise BinderError("the app is not running: use `async with app:` or app.run()")
        if delay is not None or ttl is not None:
            headers = self._timed_headers(headers, delay, ttl)
        output = self._outputs.get(name) or self._cached_send_output(name)
        if output is not None:
            return output.submit(payload, key, headers)
        return self._first_send(name, payload, key, headers)

    def _timed_headers(
        self,
        headers: Mapping[str, Any] | None,
        delay: float | timedelta | None,
        ttl: float | timedelta | None,
    ) -> dict[str, Any]:
        """``headers`` with ``x-delay`` for ``delay`` and ``x-expires-at`` for ``ttl``."""
        timed = dict(headers) if headers else {}
        if delay is not None:
            if seconds_of(delay) < 0:
                raise ValueError(f"delay must be 0 or more seconds, got {delay!r}")
            timed[DELAY] = str(millis_of(delay))
        if ttl is not None:
            if seconds_of(ttl) <= 0:
                raise ValueError(f"ttl must be more than 0 seconds, got {ttl!r}")
            timed[EXPIRES_AT] = str(int(self.clock.time() * 1000) + millis_of(ttl))
        return timed

    def _first_send(
        self, name: str, payload: Any, key: Any, headers: Mapping[str, Any] | None
    ) -> asyncio.Future[None]:
        """Queue a send while ``name``'s output opens (once, however many sends wait for
        it); the queue is submitted in call order before any later send can overtake it."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = self._opening.get(name)
        if waiting is None:
            waiting = self._opening[name] = []
            task = asyncio.ensure_future(self._open_for_sends(name))
            self._openers.add(task)
            task.add_done_callback(self._openers.discard)
        waiting.append((payload, key, headers, future))
        return future

    async def _open_for_sends(self, name: str) -> None:
        """Open the output ``app.send(name, ...)`` uses: the binding called ``name``, else
        the destination ``name`` (a name means the same for the app's whole life, so it is
        the cache key). The output is started first, so records are placed over the
        destination's real partition count. The waiting sends are submitted in the same step
        as the output is cached, so no later send can overtake them."""
        binding = self.config.binding(name)
        try:
            output = await self._output(name, binding or BindingConfig(destination=name))
            await output.start()  # its real partition count, before any record is placed
        except Exception as exc:
            for *_, future in self._opening.pop(name, []):
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled by stop()
            for *_, future in self._opening.pop(name, []):
                future.cancel()
            raise
        self._send_outputs[name] = output
        for payload, key, headers, future in self._opening.pop(name, []):
            _chain(output.submit(payload, key, headers), future)
        if len(self._send_outputs) > _MAX_SEND_OUTPUTS:
            _, evicted = self._send_outputs.popitem(last=False)
            await evicted.close()

    def _cached_send_output(self, name: str) -> OutputBinding | None:
        output = self._send_outputs.get(name)
        if output is not None:
            self._send_outputs.move_to_end(name)
        return output

    # -- introspection and control ----------------------------------------------------------

    @property
    def bindings(self) -> dict[str, InputBinding | SupplierBinding]:
        """Running input and supplier bindings by name (each can stop/start/pause/resume)."""
        return dict(self._bindings)

    def outputs(self) -> list[OutputBinding]:
        """Every output binding opened so far (functions' outputs, dead letters, ``app.send``)."""
        return [*self._outputs.values(), *self._send_outputs.values()]

    def health(self) -> dict[str, Any]:
        """``{"status": "up"|"down", "bindings": {name: {"state": ..., "error": ...}}}``:
        ``up`` when every binding is ``running`` or ``paused`` (what ``GET /health/ready``
        of ``binder run --metrics-port`` answers, 200 when up, else 503)."""
        return health(self._bindings)

    def _metrics_text(self) -> Callable[[], bytes] | str:
        """What ``/metrics`` serves, or why nothing (off, or no ``prometheus_client``)."""
        if not self.config.metrics.enabled:
            return "metrics are off (binder.metrics.enabled: false)"
        try:
            import prometheus_client
        except ImportError:
            return "metrics need prometheus_client: pip install 'streambinder[metrics]'"
        registry = self.metrics_registry or prometheus_client.REGISTRY
        return lambda: prometheus_client.generate_latest(registry)

    def binding(self, name: str) -> InputBinding | SupplierBinding:
        """The running binding called ``name``; KeyError naming the known ones otherwise."""
        for candidate, binding in self._bindings.items():
            if _same_name(candidate, name):
                return binding
        raise KeyError(f"no binding {name!r}; running: {', '.join(self._bindings) or 'none'}")

    def states(self) -> dict[str, BindingState]:
        """Each binding's state."""
        return {name: binding.state for name, binding in self._bindings.items()}

    def destination_of(self, name: str) -> str:
        """The destination a binding name (or a destination name) refers to."""
        binding = self.config.binding(name)
        return binding.destination or name if binding else name

    # -- wiring -----------------------------------------------------------------------------

    def _check_binding_names(self) -> None:
        """Refuse misspelt function bindings; log once those another process would use."""
        use = check_bindings(self.config.bindings, self._pipelines, self.functions)
        if use.typos:
            raise use.typos[0]
        if use.unused:
            log.info("bindings not used by this app: %s", ", ".join(use.unused))

    async def _bind(self, pipeline: Pipeline) -> None:
        output = None
        if pipeline.has_output:
            config = self._binding_config(pipeline.output_binding)
            output = await self._output(pipeline.output_binding, config)
            await output.start()  # provisions the destination and its required groups now
            self._outputs[pipeline.output_binding] = output
        if pipeline.kind == "supplier":
            assert output is not None
            self._bindings[pipeline.output_binding] = SupplierBinding(
                pipeline.output_binding, _supplier_call(pipeline), output, pipeline.interval
            )
        else:
            self._bindings[pipeline.input_binding] = await self._input(pipeline, output)

    def _binding_config(self, name: str) -> BindingConfig:
        return self.config.binding(name) or BindingConfig()

    async def _open_send_bindings(self) -> None:
        """Open (and so provision) every configured binding that no function binds: the
        ones ``app.send`` uses, so their partition counts and required groups exist before
        any consumer starts. Bindings of functions not active here are another process's."""
        for name, config in self.config.bindings.items():
            if BINDING_NAME.match(name) is not None or name in self._outputs:
                continue
            output = await self._output(name, config)
            await output.start()
            self._outputs[name] = output

    async def _provision_input(self, binder: Binder, destination: str) -> None:
        """Create an input's destination with the partition count of a producer binding of
        the same destination and binder in this configuration, when there is one (so a
        consumer starting first does not create it with the binder's default)."""
        counts = [
            b.producer.partition_count
            for b in self.config.bindings.values()
            if b.destination == destination  # bindings come resolved: binder is set
            and b.binder == binder.name
            and b.producer.partition_count > 1
        ]
        if counts:
            await binder.provision(destination, max(counts))

    async def _output(self, name: str, config: BindingConfig) -> OutputBinding:
        path = f"binder.bindings.{name}"
        self.converters.require(config.content_type, f"{path}.content-type")
        binder = await self._binder(config.binder, path)
        producer = config.producer
        if producer.required_groups and not binder.capabilities.consumer_groups:
            raise CapabilityError(
                f"required-groups needs consumer_groups, which binder {binder.name!r} lacks",
                path=f"{path}.producer.required-groups",
            )
        return OutputBinding(
            name,
            config.destination or name,
            binder,
            self.converters,
            content_type=config.content_type,
            partition_count=producer.partition_count,
            key_expression=producer.key_expression,
            required_groups=producer.required_groups,
            observers=self._observers,
            binder_options=producer.binder_options,
            tracing=self._tracing,
            clock=self.clock,
            ttl=producer.ttl,
        )

    async def _input(self, pipeline: Pipeline, output: OutputBinding | None) -> InputBinding:
        name = pipeline.input_binding
        path = f"binder.bindings.{name}"
        config = self._binding_config(name)
        options = config.consumer
        options.warn_unknown_exceptions(f"{path}.consumer")
        self.converters.require(config.content_type, f"{path}.content-type")
        binder = await self._binder(config.binder, path)
        _check_consumer_capabilities(binder, config, path)
        destination = config.destination or name
        await self._provision_input(binder, destination)
        spec = ConsumerSpec(
            destination=destination,
            group=config.group,
            instance_index=options.instance_index,
            instance_count=options.instance_count,
            start=options.start_offset,
            max_records=max(options.batch_size, 500),
            concurrency=options.concurrency,
            options=options.binder_options,
        )
        dead_letters = None
        if options.dead_letter:
            dlq = dead_letter_destination(
                destination, config.group, options.dead_letter_destination
            )
            dead_letters = OutputBinding(
                f"{name}.dlq",
                dlq,
                binder,
                self.converters,
                observers=self._observers,
                dead_letters_of=destination,
                binder_options=options.binder_options,
                tracing=self._tracing,
                clock=self.clock,
            )
            self._outputs[dead_letters.name] = dead_letters
        invoker = Invoker(pipeline, self.converters, config.content_type, options.batch_mode)
        later = None
        if options.retry_mode == "delayed":
            later = await self._retry_output(name, binder, destination, config)
        made = functools.partial(
            InputBinding,
            binder=binder,
            invoker=invoker,
            output=output,
            dead_letters=dead_letters,
            policy=RetryPolicy.from_options(options),
            concurrency=options.concurrency,
            batch_size=options.batch_size,
            on_fatal=self._binding_failed if self.config.on_binding_failure == "exit" else None,
            tracing=self._tracing,
            timed=self.config.metrics.enabled,
            clock=self.clock,
            drop_expired=options.expired == "drop",
            retry_output=later,
        )
        if later is not None:  # the retries are read by a binding of their own, in the group
            retries = dataclasses.replace(spec, destination=later.destination)
            retrying = made(f"{name}.retry", retries, retries_of=destination)
            self._bindings[retrying.name] = retrying
        return made(name, spec)

    async def _retry_output(
        self, name: str, binder: Binder, destination: str, config: BindingConfig
    ) -> OutputBinding:
        """The output a binding with ``retry-mode: delayed`` schedules its retries to:
        ``<destination>.<group>.retry``, with as many partitions as the destination."""
        path = f"binder.bindings.{name}.consumer.retry-mode"
        if config.group is None:
            raise ConfigError(
                "delayed retries need a group (the retries are the group's)", path=path
            )
        if not binder.capabilities.delayed_delivery:
            raise CapabilityError(
                f"delayed retries need delayed_delivery, which binder {binder.name!r} lacks",
                path=path,
            )
        count = await binder.provision(destination, 1)
        later = OutputBinding(
            f"{name}.retry",
            retry_destination(destination, config.group),
            binder,
            self.converters,
            content_type=config.content_type,
            partition_count=count,
            observers=self._observers,
            binder_options=config.consumer.binder_options,
            tracing=self._tracing,
            clock=self.clock,
        )
        await later.start()
        self._outputs[later.name] = later
        return later

    async def _binder(self, name: str | None, path: str) -> Binder:
        name = name or self.config.default_binder
        assert name is not None
        binder = self._binders.get(name)
        if binder is not None:
            return binder
        entry = self.config.binders.get(name)
        if entry is None:
            raise ConfigError("unknown binder", path=f"{path}.binder", value=name)
        binder = self._create_binder(name, entry)
        if hasattr(binder, "clock"):  # a binder that holds delayed records goes by the app's
            binder.clock = self.clock
        await binder.start()
        raced = self._binders.get(name)  # started meanwhile by a concurrent first send
        if raced is not None:
            await binder.close()
            return raced
        self._binders[name] = binder
        return binder

    def _create_binder(self, name: str, entry: Any) -> Binder:
        if self._binder_factory is not None:
            return self._binder_factory(name, entry)
        kind = plugins.binder_types()[entry.type]
        return kind.create(name, entry.options)


def _chain(source: asyncio.Future[None], target: asyncio.Future[None]) -> None:
    """Complete ``target`` as ``source`` completes."""

    def copy(done: asyncio.Future[None]) -> None:
        if target.done():
            return
        if done.cancelled():
            target.cancel()
        elif (exc := done.exception()) is not None:
            target.set_exception(exc)
        else:
            target.set_result(None)

    source.add_done_callback(copy)


async def _all(starts: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``starts`` concurrently (joining consumer groups one after another would add
    up their join delays); at the first failure cancel the rest, wait, and raise it."""
    tasks = [asyncio.ensure_future(start) for start in starts]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _check_consumer_capabilities(binder: Binder, config: BindingConfig, path: str) -> None:
    caps = binder.capabilities
    if config.group and not caps.consumer_groups:
        raise CapabilityError(
            f"binder {binder.name!r} lacks consumer_groups",
            path=f"{path}.group",
            value=config.group,
        )
    if config.consumer.instance_count > 1 and not caps.native_partitions:
        raise CapabilityError(
            f"static partition assignment needs native_partitions, which "
            f"binder {binder.name!r} lacks",
            path=f"{path}.consumer.instance-count",
            value=config.consumer.instance_count,
        )
    if config.group is None and not caps.anonymous_consumers:
        raise CapabilityError(
            f"binder {binder.name!r} lacks anonymous_consumers: set a group", path=f"{path}.group"
        )


def _supplier_call(pipeline: Pipeline) -> Callable[[], Any]:
    """A coroutine function returning the supplier pipeline's outputs."""
    first, rest = pipeline.stages[0], pipeline.stages[1:]

    async def call() -> list[Any]:
        value = await first.fn() if first.is_async else await asyncio.to_thread(first.fn)
        if value is None:
            return []
        if not rest:
            return Invoker.single_output(value)
        return await Invoker.feed(Pipeline(name=pipeline.name, stages=rest), value)

    return call


def _same_name(a: str, b: str) -> bool:
    return a.replace("_", "-").lower() == b.replace("_", "-").lower()


async def _quietly(step: Any) -> None:
    with contextlib.suppress(Exception):
        await step
