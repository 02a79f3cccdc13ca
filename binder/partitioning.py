"""Partition selection as Kafka's Java client does it, and the safe key-expression language.

A key lands on ``(murmur2(key bytes) & 0x7fffffff) % partition_count``, the partition
a Java producer with the default partitioner would pick for the same bytes.

A binding's ``partition-key-expression`` is compiled once, at start-up, by
:func:`compile_expression`; anything outside the language below is an
:class:`~binder.errors.ExpressionError` then, never at run time. The compiler walks
the tree from ``ast.parse(text, mode="eval")`` into plain closures: nothing is
ever handed to ``eval``/``exec``. The accepted grammar::

    expr     := operand ("+" operand)*          str + str, number + number, str + number
    operand  := atom trailer*
    atom     := "payload" | "headers" | "key"
                | literal | "-" number | call | "(" expr ")"
    trailer  := "." NAME                         item of a Mapping, else a public attribute
                | "[" expr "]"                   Mapping key, or int index of a sequence
                | "." FUNCTION "(" args ")"      method form: x.f(a) is f(x, a)
    call     := FUNCTION "(" args ")"            positional arguments only
    literal  := str | int | float | True | False | None | true | false | null
    FUNCTION := str | int | lower | upper | strip | len | concat | coalesce | substr

``NAME`` and constant string keys must not start with ``_``. The text is at most
:data:`MAX_LENGTH` characters and at most :data:`MAX_DEPTH` syntax levels deep.

Filters (:func:`compile_filter`, e.g. ``binder dlq replay --filter``) are the same language
with comparisons and boolean logic added::

    filter   := disjunct ("or" disjunct)*
    disjunct := negation ("and" negation)*
    negation := "not" negation | comparison
    comparison := expr (("==" | "!=" | "in" | "not in") (expr | list))*
    list     := "[" literal ("," literal)* "]" | "(" literal ("," literal)* ")"

``a in b`` is a substring test when ``b`` is a str, membership in a list, a key of a
mapping. A key, index or attribute that is not there reads as ``None`` in a comparison
(``headers['x-exception-type'] == 'X'`` is false for a letter without that header).

At run time :meth:`KeyExpression.evaluate` raises only
:class:`~binder.errors.ConversionError`, naming the expression and the part that
was missing or of the wrong type.
"""

from __future__ import annotations

import ast
import struct
from collections.abc import Callable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple, NoReturn

from binder.errors import ConversionError, ExpressionError
from binder.message import key_bytes

__all__ = [
    "FUNCTION_NAMES",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "Filter",
    "KeyExpression",
    "compile_expression",
    "compile_filter",
    "murmur2",
    "partition_key",
    "select_partition",
    "to_positive",
]

MAX_LENGTH = 500
"""Longest expression text :func:`compile_expression` accepts."""
MAX_DEPTH = 32
"""Deepest syntax-tree nesting :func:`compile_expression` accepts."""

# ---------------------------------------------------------------------------- murmur2

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_SEED = 0x9747B28C
_blocks = struct.Struct("<I").iter_unpack


def _hash32(data: bytes) -> int:
    """Kafka's murmur2 as an unsigned 32-bit value (Java ints, kept in 0..2**32-1)."""
    length = len(data)
    h = _SEED ^ length
    tail = length & ~3
    for (k,) in _blocks(data[:tail]):
        k = k * _M & _MASK
        h = (h * _M & _MASK) ^ ((k ^ k >> 24) * _M & _MASK)
    if tail != length:  # the 1-3 trailing bytes, little-endian, as Java's switch fall-through
        h = (h ^ int.from_bytes(data[tail:], "little")) * _M & _MASK
    h = (h ^ h >> 13) * _M & _MASK
    return h ^ h >> 15


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2``: the signed 32-bit hash Java returns for ``data``."""
    h = _hash32(data)
    return h - 0x1_0000_0000 if h & 0x8000_0000 else h


def to_positive(number: int) -> int:
    """Kafka's ``Utils.toPositive``: ``number & 0x7fffffff`` (not ``abs``)."""
    return number & 0x7FFF_FFFF


def select_partition(key: bytes, partition_count: int) -> int:
    """The partition Kafka's Java default partitioner picks for ``key``.

    Returns ``to_positive(murmur2(key)) % partition_count``, in ``0..partition_count-1``.
    Raises ``ValueError`` when ``partition_count`` is below 1. Messages without a key
    are not this function's business: the producer spreads them.
    """
    if partition_count < 1:
        raise ValueError(f"partition_count must be at least 1, got {partition_count}")
    return (_hash32(key) & 0x7FFF_FFFF) % partition_count


# ------------------------------------------------------------------- run-time helpers

_Scope = tuple[Any, Any, Any]  # (payload, headers, key)
_Eval = Callable[[_Scope], Any]


class _Failure(Exception):
    """A run-time problem; :meth:`KeyExpression.evaluate` reports it as ConversionError."""


class _Missing(_Failure):
    """A key, index or attribute that is not there, or a step through None.

    ``coalesce`` reads it as None; everywhere else it is a plain failure.
    """


def _need(value: Any, where: str) -> Any:
    if value is None:
        raise _Failure(f"`{where}` is None where a value is needed")
    return value


def _need_str(value: Any, where: str) -> str:
    if isinstance(_need(value, where), str):
        return str(value)
    raise _Failure(f"`{where}` is {type(value).__name__}, not str")


def _need_int(value: Any, where: str) -> int:
    if isinstance(_need(value, where), int) and not isinstance(value, bool):
        return int(value)
    raise _Failure(f"`{where}` is {type(value).__name__}, not int")


def _is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float


def _lookup(mapping: Mapping[Any, Any], key: Any, where: str) -> Any:
    try:
        return mapping[key]
    except KeyError:
        raise _Missing(f"`{where}` has no key {key!r}") from None
    except TypeError:  # an unhashable key
        raise _Failure(f"`{where}` cannot have a {type(key).__name__} key") from None


def _read_attribute(obj: Any, name: str, where: str) -> Any:
    """``obj.name``: the item of a Mapping, else a public, non-callable attribute."""
    if type(obj) is dict or isinstance(obj, Mapping):
        return _lookup(obj, name, where)
    if obj is None:
        raise _Missing(f"`{where}` is None, so it has no {name!r}")
    try:
        value = getattr(obj, name)
    except AttributeError:
        raise _Missing(f"`{where}` ({type(obj).__name__}) has no attribute {name!r}") from None
    if callable(value):  # values only: a method is never returned, so never called
        raise _Failure(f"`{where}.{name}` is callable, not a value")
    return value


def _read_item(obj: Any, index: Any, where: str) -> Any:
    """``obj[index]``: a Mapping by key, a sequence by int index."""
    if type(obj) is dict or isinstance(obj, Mapping):
        return _lookup(obj, index, where)
    if isinstance(obj, Sequence):
        if type(index) is not int:
            raise _Failure(f"`{where}` is a sequence: its index must be an int, not {index!r}")
        try:
            return obj[index]
        except IndexError:
            raise _Missing(f"`{where}` has no index {index}") from None
    if obj is None:
        raise _Missing(f"`{where}` is None, so it has no [{index!r}]")
    raise _Failure(f"`{where}` ({type(obj).__name__}) cannot be indexed")


def _text(value: Any, where: str) -> str:
    """The text a key would become: str as is, bytes as UTF-8, else its JSON text."""
    if isinstance(_need(value, where), str):
        return str(value)
    try:
        return (key_bytes(value) or b"").decode()
    except (TypeError, ValueError) as exc:
        raise _Failure(f"`{where}` has no text form ({exc})") from None


def _add(left: Any, right: Any, where: tuple[str, str]) -> Any:
    _need(left, where[0])
    _need(right, where[1])
    if isinstance(left, str) and (isinstance(right, str) or _is_number(right)):
        return left + str(right)
    if _is_number(left) and isinstance(right, str):
        return str(left) + right
    if _is_number(left) and _is_number(right):
        return left + right
    kinds = f"{type(left).__name__} + {type(right).__name__}"
    raise _Failure(f"`{where[0]} + {where[1]}` adds {kinds}: only str and numbers")


# --------------------------------------------------------------------- the functions


def _to_int(where: tuple[str, ...], value: Any) -> int:
    if not isinstance(_need(value, where[0]), int | float | str):
        raise _Failure(f"`{where[0]}` is {type(value).__name__}, not a number or str")
    try:
        return int(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        raise _Failure(f"`{where[0]}` is {value!r}, not an integer") from None


def _length(where: tuple[str, ...], value: Any) -> int:
    if not isinstance(_need(value, where[0]), Sized):
        raise _Failure(f"`{where[0]}` ({type(value).__name__}) has no length")
    return len(value)


def _substr(where: tuple[str, ...], text: Any, start: Any, end: Any = None) -> str:
    stop = None if len(where) < 3 else _need_int(end, where[2])
    return _need_str(text, where[0])[_need_int(start, where[1]) : stop]


class _Function(NamedTuple):
    min_args: int
    max_args: int | None  # None: any number
    impl: Callable[..., Any] | None  # impl(where, *values), where naming each argument


_FUNCTIONS: dict[str, _Function] = {
    "str": _Function(1, 1, lambda w, v: _text(v, w[0])),
    "int": _Function(1, 1, _to_int),
    "lower": _Function(1, 1, lambda w, v: _need_str(v, w[0]).lower()),
    "upper": _Function(1, 1, lambda w, v: _need_str(v, w[0]).upper()),
    "strip": _Function(1, 1, lambda w, v: _need_str(v, w[0]).strip()),
    "len": _Function(1, 1, _length),
    "concat": _Function(1, None, lambda w, *vs: "".join(map(_text, vs, w))),
    "coalesce": _Function(1, None, None),  # lazy, so compiled apart: see _coalesce
    "substr": _Function(2, 3, _substr),
}
FUNCTION_NAMES = frozenset(_FUNCTIONS)
"""The allow-list of callable names (each also usable in method form, ``x.lower()``)."""


def _call(impl: Callable[..., Any], args: list[_Eval], where: tuple[str, ...]) -> _Eval:
    return lambda scope: impl(where, *[arg(scope) for arg in args])


def _coalesce(args: list[_Eval]) -> _Eval:
    """First argument that is present and not None, evaluated left to right; else None."""

    def first(scope: _Scope) -> Any:
        for arg in args:
            try:
                value = arg(scope)
            except _Missing:
                continue
            if value is not None:
                return value
        return None

    return first


def _constant(value: Any) -> _Eval:
    return lambda scope: value


# ----------------------------------------------------------------------- the compiler

_VARIABLES = {"payload": 0, "headers": 1, "key": 2}
_SPRING_LITERALS = {"true": True, "false": False, "null": None}
_LITERAL_TYPES = (str, int, float, bool, type(None))
_KINDS: dict[type[ast.AST], str] = {
    **dict.fromkeys((ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp), "a comprehension"),
    ast.Lambda: "a lambda",
    ast.JoinedStr: "an f-string",
    ast.Starred: "a starred argument",
    ast.Slice: "a slice",
    ast.NamedExpr: "an assignment (:=)",
    ast.Compare: "a comparison",
    ast.BoolOp: "a boolean operator",
    ast.IfExp: "a conditional",
}


class _Compiler:
    """Turns one parsed expression into closures, refusing anything outside the grammar
    (with ``comparisons``: the filter grammar)."""

    def __init__(self, source: str, path: str, *, comparisons: bool = False) -> None:
        self.source = source
        self.path = path
        self.kind = "filter expression" if comparisons else "partition-key expression"
        self._handlers = _FILTER_HANDLERS if comparisons else _KEY_HANDLERS

    def refuse(self, node: ast.AST, problem: str) -> NoReturn:
        where = self.segment(node)
        message = f"{self.kind} {self.source!r} refused at {where!r}: {problem}"
        raise ExpressionError(message, path=self.path, value=self.source)

    def segment(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.source, node) or ast.unparse(node)

    def public(self, node: ast.AST, name: str) -> str:
        if name.startswith("_"):
            self.refuse(node, f"{name!r} starts with '_': private and dunder names are refused")
        return name

    def node(self, node: ast.AST, depth: int) -> _Eval:
        if depth > MAX_DEPTH:
            self.refuse(node, f"nested deeper than {MAX_DEPTH} levels")
        handler = self._handlers.get(type(node))
        if handler is None:
            kind = _KINDS.get(type(node), f"{type(node).__name__} syntax")
            self.refuse(node, f"{kind} is not part of the {self.kind} language")
        return handler(self, node, depth + 1)

    def name(self, node: ast.Name, depth: int) -> _Eval:
        if node.id in _VARIABLES:
            return itemgetter(_VARIABLES[node.id])
        if node.id in _SPRING_LITERALS:
            return _constant(_SPRING_LITERALS[node.id])
        self.public(node, node.id)
        self.refuse(node, f"unknown name {node.id!r}; the names are payload, headers and key")

    def constant(self, node: ast.Constant, depth: int) -> _Eval:
        if not isinstance(node.value, _LITERAL_TYPES):
            self.refuse(node, "literals are str, int, float, True/False/None only")
        return _constant(node.value)

    def negative(self, node: ast.UnaryOp, depth: int) -> _Eval:
        value = node.operand.value if isinstance(node.operand, ast.Constant) else None
        if isinstance(node.op, ast.USub) and isinstance(value, int | float) and _is_number(value):
            return _constant(-value)
        if isinstance(node.op, ast.Not) and self._handlers is _FILTER_HANDLERS:  # filters only
            operand = self.node(node.operand, depth)
            return lambda scope: not _truth(operand, scope)
        allowed = "'-' before a number" + (
            ", and 'not'" if self.kind == "filter expression" else ""
        )
        self.refuse(node, f"the only unary operators are {allowed}")

    def boolop(self, node: ast.BoolOp, depth: int) -> _Eval:
        parts = [self.node(value, depth) for value in node.values]
        if isinstance(node.op, ast.And):
            return lambda scope: all(_truth(part, scope) for part in parts)
        return lambda scope: any(_truth(part, scope) for part in parts)

    def compare(self, node: ast.Compare, depth: int) -> _Eval:
        operands = [self.node(node.left, depth)]
        tests: list[Callable[[Any, Any], bool]] = []
        for op, right in zip(node.ops, node.comparators, strict=True):
            test = _COMPARISONS.get(type(op))
            if test is None:
                self.refuse(
                    node, f"operator {type(op).__name__} is refused; ==, !=, in, not in are"
                )
            tests.append(test)
            if isinstance(op, ast.In | ast.NotIn) and isinstance(right, ast.List | ast.Tuple):
                operands.append(self.literals(right))
            else:
                operands.append(self.node(right, depth))
        where = self.segment(node)

        def compared(scope: _Scope) -> bool:
            left = _present(operands[0], scope)
            for test, operand in zip(tests, operands[1:], strict=True):
                right = _present(operand, scope)
                try:
                    if not test(left, right):
                        return False
                except TypeError as exc:
                    raise _Failure(f"`{where}`: {exc}") from None
                left = right
            return True

        return compared

    def literals(self, node: ast.List | ast.Tuple) -> _Eval:
        """A list of literals (the right side of ``in``)."""
        values = []
        for element in node.elts:
            if not isinstance(element, ast.Constant) or not isinstance(
                element.value, _LITERAL_TYPES
            ):
                self.refuse(element, "a list after 'in' holds literals only")
            values.append(element.value)
        return _constant(tuple(values))

    def attribute(self, node: ast.Attribute, depth: int) -> _Eval:
        target, name = self.node(node.value, depth), self.public(node, node.attr)
        where = self.segment(node.value)
        return lambda scope: _read_attribute(target(scope), name, where)

    def subscript(self, node: ast.Subscript, depth: int) -> _Eval:
        index = node.slice
        if isinstance(index, ast.Constant) and isinstance(index.value, str):
            self.public(index, index.value)
        target, key = self.node(node.value, depth), self.node(index, depth)
        where = self.segment(node.value)
        return lambda scope: _read_item(target(scope), key(scope), where)

    def binop(self, node: ast.BinOp, depth: int) -> _Eval:
        if not isinstance(node.op, ast.Add):
            self.refuse(node, f"operator {type(node.op).__name__} is refused; only + is allowed")
        left, right = self.node(node.left, depth), self.node(node.right, depth)
        where = (self.segment(node.left), self.segment(node.right))
        return lambda scope: _add(left(scope), right(scope), where)

    def call(self, node: ast.Call, depth: int) -> _Eval:
        if node.keywords:
            self.refuse(node, "keyword arguments are refused")
        name, args = self.callee(node)
        self.public(node.func, name)
        compiled = [self.node(arg, depth) for arg in args]  # the innermost refusal first
        function = _FUNCTIONS.get(name)
        if function is None:
            allowed = ", ".join(_FUNCTIONS)
            self.refuse(node.func, f"{name!r} is not an allowed function ({allowed})")
        self.arity(node, name, function, len(args))
        if function.impl is None:
            return _coalesce(compiled)
        return _call(function.impl, compiled, tuple(self.segment(arg) for arg in args))

    def callee(self, node: ast.Call) -> tuple[str, list[ast.expr]]:
        """The function's name and its arguments, the receiver first in method form."""
        if isinstance(node.func, ast.Name):
            return node.func.id, list(node.args)
        if isinstance(node.func, ast.Attribute):
            return node.func.attr, [node.func.value, *node.args]
        self.refuse(node.func, "only the allowed functions can be called")

    def arity(self, node: ast.Call, name: str, function: _Function, count: int) -> None:
        low, high = function.min_args, function.max_args
        if count < low or (high is not None and count > high):
            wanted = f"at least {low}" if high is None else f"{low} to {high}"
            wanted = f"{low}" if low == high else wanted
            plural = "" if low == 1 and high in (1, None) else "s"
            self.refuse(node, f"{name} takes {wanted} argument{plural} ({count} given)")


_Handler = Callable[[_Compiler, Any, int], _Eval]
_KEY_HANDLERS: Mapping[type[ast.AST], _Handler] = {
    ast.Name: _Compiler.name,
    ast.Constant: _Compiler.constant,
    ast.UnaryOp: _Compiler.negative,
    ast.Attribute: _Compiler.attribute,
    ast.Subscript: _Compiler.subscript,
    ast.BinOp: _Compiler.binop,
    ast.Call: _Compiler.call,
}
_FILTER_HANDLERS: Mapping[type[ast.AST], _Handler] = {
    **_KEY_HANDLERS,
    ast.BoolOp: _Compiler.boolop,
    ast.Compare: _Compiler.compare,
}


def _contains(item: Any, container: Any) -> bool:
    if isinstance(container, str):
        if not isinstance(item, str):
            raise TypeError(f"'in <str>' needs a str on its left, not {type(item).__name__}")
        return item in container
    if isinstance(container, Mapping | tuple | list):
        try:
            return item in container
        except TypeError:  # an unhashable item against a mapping
            return False
    if container is None:
        return False
    raise TypeError(
        f"'in' needs a str, a list or a mapping on its right, not {type(container).__name__}"
    )


_COMPARISONS: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: lambda a, b: bool(a == b),
    ast.NotEq: lambda a, b: bool(a != b),
    ast.In: _contains,
    ast.NotIn: lambda a, b: not _contains(a, b),
}


def _present(operand: _Eval, scope: _Scope) -> Any:
    """An operand's value, ``None`` when what it names is not there."""
    try:
        return operand(scope)
    except _Missing:
        return None


def _truth(operand: _Eval, scope: _Scope) -> bool:
    return bool(_present(operand, scope))


# ------------------------------------------------------------------------ public API


@dataclass(frozen=True, slots=True)
class KeyExpression:
    """A compiled partition-key expression; build one with :func:`compile_expression`.

    ``source`` is the text it was compiled from; two expressions are equal when
    their sources are. Evaluating is thread-safe and keeps no state.
    """

    source: str
    _evaluate: _Eval = field(repr=False, compare=False)

    def evaluate(self, payload: Any, headers: Mapping[str, Any] | None, key: Any) -> Any:
        """The expression's value for one message; None when it evaluates to None.

        Raises ConversionError, and only that, naming the expression and what was
        missing or of the wrong type.
        """
        try:
            return self._evaluate((payload, headers, key))
        except _Failure as exc:
            raise ConversionError(f"partition-key expression {self.source!r}: {exc}") from None
        except Exception as exc:  # a property or __getitem__ of the application's own type
            problem = f"{type(exc).__name__}: {exc}"
            raise ConversionError(f"partition-key expression {self.source!r}: {problem}") from exc


def compile_expression(text: str, *, path: str = "") -> KeyExpression:
    """Compile ``text`` (see the module docstring for the grammar) once, at start-up.

    Raises ExpressionError, naming the expression and the offending part, for
    anything outside the language; ``path`` (the configuration key, if any) goes
    into the error. Never evaluates anything.
    """
    source, tree = _parse(text, path, "partition-key expression")
    return KeyExpression(text, _Compiler(source, path).node(tree.body, 1))


@dataclass(frozen=True, slots=True)
class Filter:
    """A compiled filter; build one with :func:`compile_filter`."""

    source: str
    _evaluate: _Eval = field(repr=False, compare=False)

    def matches(self, payload: Any, headers: Mapping[str, Any] | None, key: Any) -> bool:
        """Whether one message passes. Raises ConversionError, and only that, naming the
        filter and the part that failed (a type that cannot be compared, say)."""
        try:
            return bool(self._evaluate((payload, headers, key)))
        except _Failure as exc:
            raise ConversionError(f"filter expression {self.source!r}: {exc}") from None
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
            raise ConversionError(f"filter expression {self.source!r}: {problem}") from exc


def compile_filter(text: str, *, path: str = "") -> Filter:
    """Compile a filter (the key-expression language with ``==``, ``!=``, ``in``,
    ``not in``, ``and``, ``or``, ``not``; see the module docstring) once. Raises
    ExpressionError naming the offending part for anything else; never evaluates."""
    source, tree = _parse(text, path, "filter expression")
    whole = _Compiler(source, path, comparisons=True).node(tree.body, 1)
    return Filter(text, lambda scope: _truth(whole, scope))


def _parse(text: str, path: str, kind: str) -> tuple[str, ast.Expression]:
    """``text`` stripped and parsed, within the length limit; ExpressionError otherwise."""
    source = text.strip()
    if not source:
        raise ExpressionError(f"{kind} is empty", path=path, value=text)
    if len(source) > MAX_LENGTH:
        problem = f"is longer than {MAX_LENGTH} characters"
        raise ExpressionError(f"{kind} {source[:60]!r}... {problem}", path=path, value=text)
    try:
        return source, ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        detail = getattr(exc, "msg", None) or str(exc) or type(exc).__name__
        message = f"{kind} {source!r} is not valid syntax: {detail}"
        raise ExpressionError(message, path=path, value=text) from None


def partition_key(
    expression: KeyExpression | None,
    payload: Any,
    headers: Mapping[str, Any] | None,
    key: Any,
) -> bytes | None:
    """The bytes to partition a message by, or None when it has no key.

    The expression's value, or the message key when there is no expression,
    converted by :func:`binder.message.key_bytes`. Raises ConversionError when the
    expression fails or its value has no byte form.
    """
    value = key if expression is None else expression.evaluate(payload, headers, key)
    try:
        return key_bytes(value)
    except (TypeError, ValueError) as exc:
        what = "message key" if expression is None else f"value of {expression.source!r}"
        raise ConversionError(f"the {what} cannot become key bytes: {exc}") from None
