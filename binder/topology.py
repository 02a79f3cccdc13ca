"""The graph of an app: which of its functions read and write which destinations.

:func:`topology` reads it from an app's registered functions and loaded configuration,
wired as ``App.start`` would wire them (the active pipelines of ``function-definition``,
their bindings' destinations and groups, dead-letter and delayed-retry destinations, the
configured bindings only ``app.send`` uses), without starting the app or connecting to
anything. :func:`mermaid` (``flowchart LR``) and :func:`dot` (Graphviz) draw it: one node
per function and per destination (destinations grouped by binder), an edge destination →
function labelled with the group, function → destination for outputs, and dashed edges to
dead-letter and retry destinations. Both sort everything, so one app and configuration
always give the same text (``binder docs topology`` is snapshot-tested). :mod:`binder.asyncapi`
describes the same flows.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from binder.app import BINDING_NAME  # the same test App.start uses for app.send's bindings
from binder.config import BinderSection, BindingConfig
from binder.functions import Pipeline, parse_definition
from binder.retry import ANONYMOUS, dead_letter_destination, retry_destination

if TYPE_CHECKING:
    from binder.app import App

__all__ = [
    "SEND",
    "Action",
    "Edge",
    "Flow",
    "Node",
    "Role",
    "Topology",
    "dot",
    "mermaid",
    "topology",
]

SEND = "app.send"
"""The name standing in for a function for the bindings only ``app.send`` uses."""

Action = Literal["receive", "send"]
Role = Literal["binding", "dead-letter", "retry"]
"""``binding``: a function's input or output (or an ``app.send`` binding); ``dead-letter``: an
input's dead letters; ``retry``: an input's delayed retries (``retry-mode: delayed``)."""

_LABELS = {"dead-letter": "dead letters", "retry": "retries"}


@dataclass(frozen=True)
class Flow:
    """Messages going one way between a destination and an active pipeline (or ``app.send``)."""

    action: Action
    role: Role
    binding: str
    """The binding's name: ``<fn>-in-0``, ``<fn>-out-0``, ``<fn>-in-0.dlq``, ``<fn>-in-0.retry``."""
    function: str
    """The pipeline's name (its bindings' prefix, ``validateenrich``), or :data:`SEND`."""
    destination: str
    config: BindingConfig
    """The binding's configuration, resolved (for dead letters and retries: their input's)."""
    pipeline: Pipeline | None = None
    """``None`` for :data:`SEND`."""

    @property
    def binder(self) -> str:
        """The name of the binder the destination lives on."""
        return self.config.binder or ""

    @property
    def label(self) -> str:
        """What the function is called in a drawing: ``validate|enrich``, ``app.send``."""
        if self.pipeline is None:
            return self.function
        return "|".join(stage.name for stage in self.pipeline.stages)

    @property
    def group(self) -> str | None:
        """The group that reads (a receive) or whose letters or retries these are."""
        return None if self.role == "binding" and self.action == "send" else self.config.group


@dataclass(frozen=True)
class Topology:
    """Every flow of one app, in the order of ``function-definition``, then ``app.send``'s."""

    flows: tuple[Flow, ...]
    binder_types: dict[str, str]
    """Binder name → its ``type``, for every configured binder."""


@dataclass(frozen=True)
class Node:
    """One function or destination of a drawing; ``binder`` is set for destinations."""

    id: str
    label: str
    binder: str | None = None


@dataclass(frozen=True, order=True)
class Edge:
    """One arrow between two node ids, dashed for dead letters and retries."""

    source: str
    target: str
    label: str
    dashed: bool


def topology(app: App) -> Topology:
    """The flows of ``app``'s active pipelines and of its ``app.send`` bindings.

    Raises :class:`~binder.errors.ConfigError` as ``App.start`` does for a
    ``function-definition`` naming an unknown function or an impossible composition.
    """
    section = app.config
    pipelines = parse_definition(section.function_definition, app.functions)
    flows = [flow for pipeline in pipelines for flow in _pipeline_flows(pipeline, section)]
    flows += _send_flows(section)
    types = {name: entry.type for name, entry in section.binders.items()}
    return Topology(tuple(flows), types)


def _resolved(section: BinderSection, name: str) -> BindingConfig:
    """Binding ``name``'s configuration with its destination and binder filled in."""
    config = section.binding(name) or BindingConfig()
    destination = name if config.destination is None else config.destination
    binder = config.binder or section.default_binder
    return config.model_copy(update={"destination": destination, "binder": binder})


def _pipeline_flows(pipeline: Pipeline, section: BinderSection) -> Iterator[Flow]:
    if pipeline.has_input:
        yield from _input_flows(pipeline, _resolved(section, pipeline.input_binding))
    if pipeline.has_output:
        name = pipeline.output_binding
        config = _resolved(section, name)
        yield Flow(
            "send", "binding", name, pipeline.name, config.destination or "", config, pipeline
        )


def _input_flows(pipeline: Pipeline, config: BindingConfig) -> Iterator[Flow]:
    """The input itself, its dead letters, and its delayed retries (out and back in)."""
    name, function, destination = pipeline.input_binding, pipeline.name, config.destination or ""
    yield Flow("receive", "binding", name, function, destination, config, pipeline)
    options = config.consumer
    if options.dead_letter:
        dlq = dead_letter_destination(destination, config.group, options.dead_letter_destination)
        yield Flow("send", "dead-letter", f"{name}.dlq", function, dlq, config, pipeline)
    if options.retry_mode == "delayed" and config.group is not None:
        retries = retry_destination(destination, config.group)
        actions: tuple[Action, ...] = ("send", "receive")
        for action in actions:
            yield Flow(action, "retry", f"{name}.retry", function, retries, config, pipeline)


def _send_flows(section: BinderSection) -> Iterator[Flow]:
    """The configured bindings that no function binds: the ones ``app.send`` uses."""
    for name in section.bindings:
        if BINDING_NAME.match(name) is None:
            config = _resolved(section, name)
            yield Flow("send", "binding", name, SEND, config.destination or "", config)


# -- drawing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Graph:
    binders: list[tuple[Node, list[Node]]]
    """One cluster per binder in use, sorted by name, with its destinations sorted by name."""
    functions: list[Node]
    edges: list[Edge]


def _graph(graph: Topology) -> _Graph:
    """Nodes and edges with ids unique across the drawing, everything sorted."""
    ids = _Ids()
    binders = sorted({flow.binder for flow in graph.flows})
    clusters = {
        b: Node(ids.make("b", b), f"{b} ({graph.binder_types.get(b, '?')})") for b in binders
    }
    places = sorted({(flow.binder, flow.destination) for flow in graph.flows})
    destinations = {place: Node(ids.make("d", place[1]), place[1], place[0]) for place in places}
    names = sorted({(flow.function, flow.label) for flow in graph.flows})
    functions = {name: Node(ids.make("f", name), label) for name, label in names}
    edges = {
        _edge(flow, functions[flow.function].id, destinations[flow.binder, flow.destination].id)
        for flow in graph.flows
    }
    return _Graph(
        [(clusters[b], [d for place, d in destinations.items() if place[0] == b]) for b in binders],
        list(functions.values()),
        sorted(edges),
    )


def _edge(flow: Flow, function: str, destination: str) -> Edge:
    dashed = flow.role != "binding"
    if flow.action == "receive":
        return Edge(destination, function, flow.group or ANONYMOUS, dashed=False)
    return Edge(function, destination, _LABELS.get(flow.role, ""), dashed)


class _Ids:
    """Identifiers safe in Mermaid and dot: a prefix, the name's letters and digits, a number
    when two names would read the same (``orders.x`` and ``orders_x``)."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def make(self, prefix: str, name: str) -> str:
        base = f"{prefix}_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"
        candidate, n = base, 1
        while candidate in self._taken:
            n += 1
            candidate = f"{base}_{n}"
        self._taken.add(candidate)
        return candidate


def mermaid(graph: Topology) -> str:
    """A Mermaid ``flowchart LR`` of ``graph`` (ending with a newline)."""
    drawn = _graph(graph)
    lines = ["flowchart LR"]
    for cluster, destinations in drawn.binders:
        lines.append(f'    subgraph {cluster.id}["{_mermaid_text(cluster.label)}"]')
        lines += [f'        {d.id}[("{_mermaid_text(d.label)}")]' for d in destinations]
        lines.append("    end")
    lines += [f'    {f.id}["{_mermaid_text(f.label)}"]' for f in drawn.functions]
    lines += [f"    {_mermaid_edge(edge)}" for edge in drawn.edges]
    return "\n".join(lines) + "\n"


def _mermaid_edge(edge: Edge) -> str:
    arrow = "-.->" if edge.dashed else "-->"
    label = f'|"{_mermaid_text(edge.label)}"|' if edge.label else ""
    return f"{edge.source} {arrow}{label} {edge.target}"


def _mermaid_text(text: str) -> str:
    """``text`` inside a quoted Mermaid label (quotes become the entity ``#quot;``)."""
    return text.replace('"', "#quot;")


def dot(graph: Topology) -> str:
    """A Graphviz ``digraph`` of ``graph`` (ending with a newline)."""
    drawn = _graph(graph)
    lines = ["digraph topology {", "    rankdir=LR;"]
    for cluster, destinations in drawn.binders:
        lines += [
            f"    subgraph cluster_{cluster.id} {{",
            f"        label={_dot_text(cluster.label)};",
        ]
        lines += [
            f"        {d.id} [label={_dot_text(d.label)}, shape=cylinder];" for d in destinations
        ]
        lines.append("    }")
    lines += [f"    {f.id} [label={_dot_text(f.label)}, shape=box];" for f in drawn.functions]
    lines += [f"    {_dot_edge(edge)}" for edge in drawn.edges]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_edge(edge: Edge) -> str:
    attributes = [f"label={_dot_text(edge.label)}"] if edge.label else []
    if edge.dashed:
        attributes.append("style=dashed")
    suffix = f" [{', '.join(attributes)}]" if attributes else ""
    return f"{edge.source} -> {edge.target}{suffix};"


def _dot_text(text: str) -> str:
    """``text`` as a quoted dot string."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
