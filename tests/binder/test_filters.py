"""Filters: the key-expression language with ``==``, ``!=``, ``in``, ``not in``, ``and``,
``or``, ``not``; parsed once, refusing everything else, fuzzed."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from binder.errors import ConversionError, ExpressionError
from binder.partitioning import MAX_DEPTH, compile_expression, compile_filter

LETTER = {
    "x-exception-type": "builtins.ValueError",
    "x-original-destination": "orders",
    "x-replay-count": "2",
}


def matches(text: str, payload: Any = None, headers: Any = None, key: Any = None) -> bool:
    return compile_filter(text).matches(payload, LETTER if headers is None else headers, key)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("headers['x-exception-type'] == 'builtins.ValueError'", True),
        ("headers['x-exception-type'] != 'builtins.ValueError'", False),
        ("headers['x-exception-type'] in ['builtins.KeyError', 'builtins.ValueError']", True),
        ("headers['x-exception-type'] not in ('builtins.ValueError',)", False),
        ("'ValueError' in headers['x-exception-type']", True),
        ("'x-replay-count' in headers", True),
        ("'x-missing' in headers", False),
        ("int(headers['x-replay-count']) == 2", True),
        ("headers['x-original-destination'] == 'orders' and key == 'k-1'", True),
        ("headers['x-original-destination'] == 'billing' or key == 'k-1'", True),
        ("not headers['x-original-destination'] == 'orders'", False),
        ("not (key == 'k-2' or key == 'k-3')", True),
        ("headers['x-absent'] == 'x'", False),
        ("headers['x-absent'] == null", True),
        ("payload.customer.region == 'EU'", True),
        ("payload.customer.region.lower() in ['eu', 'us']", True),
        ("payload.total == 10.5", True),
        ("payload.customer.missing.deeper == 1", False),
        ("key", True),
        ("headers['x-absent']", False),
        ("1 == 1 == 1", True),
        ("1 == 1 != 1", False),
    ],
)
def test_filters_evaluate(text: str, expected: bool) -> None:
    payload = {"customer": {"region": "EU"}, "total": 10.5}
    assert matches(text, payload=payload, key="k-1") is expected


@pytest.mark.parametrize(
    ("text", "offending"),
    [
        ("payload.n < 3", "Lt"),
        ("payload.n >= 3", "GtE"),
        ("headers['a'] is None", "Is"),
        ("key in [payload]", "literals only"),
        ("key in [x for x in payload]", "for x in payload"),
        ("payload.__class__ == 1", "__class__"),
        ("headers['_private'] == 1", "_private"),
        ("open('/etc/passwd') == 1", "open"),
        ("lambda: 1", "lambda"),
        ("key if key else key", "conditional"),
        ("(x := 1) == 1", ":="),
        ("payload.n * 2 == 4", "Mult"),
        ("~key", "unary"),
        ("", "empty"),
        ("key ==", "not valid syntax"),
    ],
)
def test_filters_refuse_everything_else_naming_it(text: str, offending: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_filter(text)
    assert offending in str(caught.value)


def test_key_expressions_still_refuse_comparisons() -> None:
    for text in ("key == 'a'", "key and key", "not key", "key in ['a']"):
        with pytest.raises(ExpressionError, match="partition-key expression"):
            compile_expression(text)


def test_a_comparison_of_types_that_cannot_be_compared_is_a_conversion_error() -> None:
    with pytest.raises(ConversionError, match="filter expression"):
        matches("1 in 'abc'")
    with pytest.raises(ConversionError, match="'in' needs"):
        matches("'a' in 3")


def test_deep_nesting_and_long_text_are_refused_at_once() -> None:
    deep = "not " * (MAX_DEPTH + 1) + "key"
    started = time.perf_counter()
    with pytest.raises(ExpressionError, match="deeper"):
        compile_filter(deep)
    with pytest.raises(ExpressionError, match="longer than"):
        compile_filter("key == '" + "a" * 1000 + "'")
    assert time.perf_counter() - started < 1.0


# -- fuzzing ----------------------------------------------------------------------------------

OPERANDS = st.sampled_from(
    [
        "key",
        "headers['a']",
        "headers['b']",
        "headers['missing']",
        "payload.n",
        "payload.s",
        "'x'",
        "'y'",
        "1",
        "2",
        "null",
    ]
)
CONTAINERS = st.sampled_from(["['x', 'y', 1]", "('y',)", "headers", "payload"])
MEMBERS = st.sampled_from(["key", "payload.s", "headers['a']"])


@st.composite
def filters(draw: Any, depth: int = 0) -> str:
    """A random filter of the grammar, in Python syntax whose meaning is Python's."""
    kind = draw(st.sampled_from(["eq", "ne", "in", "not", "and", "or"] if depth < 3 else ["eq"]))
    if kind in ("eq", "ne"):
        op = "==" if kind == "eq" else "!="
        return f"{draw(OPERANDS)} {op} {draw(OPERANDS)}"
    if kind == "in":
        return f"{draw(MEMBERS)} in {draw(CONTAINERS)}"
    if kind == "not":
        return f"not ({draw(filters(depth + 1))})"
    join = " and " if kind == "and" else " or "
    return join.join(f"({draw(filters(depth + 1))})" for _ in range(draw(st.integers(2, 3))))


SCOPE = {"payload": {"n": 1, "s": "x"}, "headers": {"a": "x", "b": "y"}, "key": "y"}


def _python(text: str) -> bool:
    """What Python says the same text means (a missing header reads as None, as in filters)."""

    class Headers(dict):  # type: ignore[type-arg]
        def __missing__(self, name: str) -> None:
            return None

    class Payload(dict):  # type: ignore[type-arg]
        def __getattr__(self, name: str) -> Any:
            return self.get(name)

    namespace = {
        "payload": Payload(SCOPE["payload"]),
        "headers": Headers(SCOPE["headers"]),
        "key": SCOPE["key"],
        "null": None,
    }
    return bool(eval(text, {"__builtins__": {}}, namespace))


@settings(max_examples=300, deadline=None)
@given(filters())
def test_random_filters_mean_what_python_says(text: str) -> None:
    expected = _python(text)
    assert (
        compile_filter(text).matches(SCOPE["payload"], SCOPE["headers"], SCOPE["key"]) is expected
    )


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=120))
def test_any_text_is_compiled_or_refused_and_never_fails_otherwise(text: str) -> None:
    try:
        compiled = compile_filter(text)
    except ExpressionError:
        return
    with contextlib.suppress(ConversionError):  # a failure says which part, nothing else
        compiled.matches({"a": 1}, {"b": "2"}, "k")
