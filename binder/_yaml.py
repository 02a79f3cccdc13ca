"""The YAML loader of configuration documents: PyYAML's safe loader, made strict and bounded.

On top of :class:`yaml.SafeLoader` (plain data only, no Python objects) it refuses:

- a key written twice in one mapping, naming the key and both lines (PyYAML keeps the
  last one silently). A key brought in by a merge (``<<: *defaults``) may be overridden:
  that is what merges are for.
- aliases that would expand the document by more than :data:`ALIAS_BUDGET` nodes beyond
  the ones written (a "billion laughs" bomb), and an alias inside its own anchor (a
  cycle). Aliases of collections are otherwise allowed; the expanded size is counted on
  the node graph once per node, so the check is linear in the document.
- nesting deeper than :data:`MAX_DEPTH` levels.

So reading a document, and everything later done with its value, takes time linear in
the size of its text. Every refusal is a :class:`yaml.YAMLError` with the line it is at.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["ALIAS_BUDGET", "MAX_DEPTH", "StrictLoader", "safe_load"]

ALIAS_BUDGET = 100_000
"""The most nodes aliases may add to a document when it is expanded into a tree."""
MAX_DEPTH = 64
"""The deepest nesting of collections a document may have."""

_MERGE_TAG = "tag:yaml.org,2002:merge"
_KEY_CHARS = 80
_CAP = 2**62  # sizes stay machine-sized ints; far above any budget


class StrictLoader(yaml.SafeLoader):
    """A SafeLoader refusing duplicate keys, alias bombs, cycles and deep nesting."""

    def __init__(self, stream: Any, name: str | None = None) -> None:
        super().__init__(stream)
        if name is not None:
            self.name = name  # marks (line numbers in errors) name the file
        self._depth = 0
        self._checked: set[int] = set()

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                problem = f"nested deeper than {MAX_DEPTH} levels"
                raise ComposerError(None, None, problem, self.peek_event().start_mark)
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1

    def get_single_node(self) -> Node | None:
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node  # type: ignore[no-any-return]

    def flatten_mapping(self, node: MappingNode) -> None:
        if id(node) not in self._checked:  # before merges add the keys they bring
            self._checked.add(id(node))
            self._refuse_duplicates(node)
        super().flatten_mapping(node)

    def _refuse_duplicates(self, node: MappingNode) -> None:
        seen: dict[Any, Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: PyYAML refuses it itself
                continue
            if first is not key_node:
                line, first_line = key_node.start_mark.line + 1, first.start_mark.line + 1
                problem = f"duplicate key {_short(key)} on line {line} (first on line {first_line})"
                raise ConstructorError(None, None, problem, key_node.start_mark)


def _short(key: Any) -> str:
    """``repr(key)``, cut before formatting when it is long."""
    if isinstance(key, str) and len(key) > _KEY_CHARS:
        return repr(key[:_KEY_CHARS]) + "..."
    return repr(key)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: Node) -> None:
    """Refuse a cycle, or aliases adding more than :data:`ALIAS_BUDGET` nodes.

    Sizes are computed once per node of the graph (iteratively, memoized, capped), so
    this is linear in the number of written nodes whatever the aliases.
    """
    sizes: dict[int, int] = {}
    ancestors: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            ancestors.discard(id(node))
            sizes[id(node)] = min(_CAP, 1 + sum(sizes[id(c)] for c in _children(node)))
            continue
        if id(node) in sizes:
            continue
        if id(node) in ancestors:
            raise ComposerError(None, None, "an alias refers to its own anchor", node.start_mark)
        ancestors.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))
    if sizes[id(root)] - len(sizes) > ALIAS_BUDGET:
        problem = f"aliases expand the document by more than {ALIAS_BUDGET} nodes"
        raise ComposerError(None, None, problem, root.start_mark)


def safe_load(text: str, name: str | None = None) -> Any:
    """The value of YAML ``text`` read by :class:`StrictLoader`; ``name`` appears in errors."""
    loader = StrictLoader(text, name)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
