"""Kafka-compatible partition selection and the safe key-expression language."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, PrivateAttr

from binder.errors import ConfigError, ConversionError, ExpressionError
from binder.partitioning import (
    FUNCTION_NAMES,
    MAX_LENGTH,
    KeyExpression,
    compile_expression,
    murmur2,
    partition_key,
    select_partition,
    to_positive,
)

# org.apache.kafka.common.utils.UtilsTest#testMurmur2, as quoted by the Go (sarama),
# Elixir (kafka_ex) and .NET ports; the byte vector and the positive values are from
# sarama's table, generated with the JVM Kafka client 1.0.0.
KAFKA_VECTORS = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
    (bytes([12, 42, 56, 24, 109, 111]), 274204207),
]
SARAMA_POSITIVE = {
    b"21": 1173551340,
    b"foobar": 1357151166,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": 2088585677,
}
# Akka's Murmur2Spec, checked against Kafka's Utils.murmur2: one vector per tail length.
AKKA_VECTORS = [
    (b"1", -1993445489),
    (b"12", 126087238),
    (b"123", -267702483),
    (b"1234", -1614185708),
    (b"12345", -1188365604),
]

PAYLOAD = {
    "customer_id": "c-42",
    "region": " EU ",
    "n": 7,
    "items": ["first", "second"],
    "field": "n",
}
HEADERS = {"region": "west", "field": "customer_id", "empty": ""}


def evaluate(
    text: str, payload: object = PAYLOAD, headers: object = HEADERS, key: object = "k-1"
) -> object:
    return compile_expression(text).evaluate(payload, headers, key)


def java_int(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def reference_murmur2(data: bytes) -> int:
    """A line-by-line transliteration of the Java source, with Java's int wrap-around."""
    length, m = len(data), 0x5BD1E995
    h = java_int(0x9747B28C ^ length)
    for i in range(length // 4):
        b = data[i * 4 : i * 4 + 4]
        k = java_int(b[0] + (b[1] << 8) + (b[2] << 16) + (b[3] << 24))
        k = java_int(k * m)
        k = java_int(k ^ ((k & 0xFFFFFFFF) >> 24))
        k = java_int(k * m)
        h = java_int(java_int(h * m) ^ k)
    rest, base = length % 4, length & ~3
    if rest == 3:
        h = java_int(h ^ (data[base + 2] << 16))
    if rest >= 2:
        h = java_int(h ^ (data[base + 1] << 8))
    if rest >= 1:
        h = java_int(java_int(h ^ data[base]) * m)
    h = java_int(h ^ ((h & 0xFFFFFFFF) >> 13))
    h = java_int(h * m)
    return java_int(h ^ ((h & 0xFFFFFFFF) >> 15))


# ----------------------------------------------------------------------------- murmur2


@pytest.mark.parametrize(("data", "expected"), KAFKA_VECTORS + AKKA_VECTORS)
def test_murmur2_matches_kafka_vectors(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


@pytest.mark.parametrize(("data", "positive"), SARAMA_POSITIVE.items())
def test_to_positive_masks_the_sign_bit(data: bytes, positive: int) -> None:
    assert to_positive(murmur2(data)) == positive


def test_to_positive_is_not_abs() -> None:
    assert to_positive(-1) == 0x7FFFFFFF
    assert to_positive(-(2**31)) == 0


def test_murmur2_of_empty_input() -> None:
    assert murmur2(b"") == reference_murmur2(b"")


@given(st.binary(max_size=80))
def test_murmur2_equals_the_java_transliteration(data: bytes) -> None:
    assert murmur2(data) == reference_murmur2(data)
    assert -(2**31) <= murmur2(data) < 2**31


# ---------------------------------------------------------------------- partitions


@pytest.mark.parametrize(("data", "expected"), KAFKA_VECTORS)
@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 12, 100])
def test_select_partition_is_kafkas_formula(data: bytes, expected: int, count: int) -> None:
    assert select_partition(data, count) == (expected & 0x7FFFFFFF) % count


def test_select_partition_known_results() -> None:
    assert [select_partition(b"foobar", n) for n in (3, 4, 12)] == [0, 2, 6]
    assert [select_partition(b"21", n) for n in (3, 4, 12)] == [0, 0, 0]
    assert [select_partition(b"abc", n) for n in (3, 4, 12)] == [0, 3, 3]


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=10_000))
def test_partition_always_in_range(key: bytes, count: int) -> None:
    assert 0 <= select_partition(key, count) < count


@pytest.mark.parametrize("count", [0, -1])
def test_select_partition_refuses_no_partitions(count: int) -> None:
    with pytest.raises(ValueError, match="partition_count"):
        select_partition(b"k", count)


# -------------------------------------------------------------------- the language


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("payload", PAYLOAD),
        ("key", "k-1"),
        ("payload.customer_id", "c-42"),
        ("payload['customer_id']", "c-42"),
        ("headers['region']", "west"),
        ("headers.region", "west"),
        ("payload.items[0]", "first"),
        ("payload.items[-1]", "second"),
        ("payload[headers['field']]", "c-42"),
        ("payload[headers.field]", "c-42"),
        ("(payload.customer_id)", "c-42"),
        ("  payload.n  ", 7),
    ],
)
def test_access(text: str, expected: object) -> None:
    assert evaluate(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("'fixed'", "fixed"),
        ('"fixed"', "fixed"),
        ("42", 42),
        ("-3", -3),
        ("1.5", 1.5),
        ("-1.5", -1.5),
        ("True", True),
        ("true", True),
        ("False", False),
        ("false", False),
        ("None", None),
        ("null", None),
    ],
)
def test_literals(text: str, expected: object) -> None:
    assert evaluate(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("payload.customer_id + '/' + headers['region']", "c-42/west"),
        ("payload.n + 1", 8),
        ("payload.n + 0.5", 7.5),
        ("'n' + payload.n", "n7"),
        ("payload.n + '!'", "7!"),
    ],
)
def test_plus_concatenates_or_adds(text: str, expected: object) -> None:
    assert evaluate(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("str(payload.n)", "7"),
        ("str(true)", "true"),
        ("str(payload.items)", '["first","second"]'),
        ("int('12')", 12),
        ("int(' 12 ')", 12),
        ("int(3.9)", 3),
        ("lower(headers['region'])", "west"),
        ("upper(payload.customer_id)", "C-42"),
        ("strip(payload.region)", "EU"),
        ("len(payload.items)", 2),
        ("len(payload.customer_id)", 4),
        ("concat(payload.customer_id, '-', payload.n)", "c-42-7"),
        ("concat('only')", "only"),
        ("coalesce(null, payload.n)", 7),
        ("coalesce(headers['tenant'], payload.customer_id)", "c-42"),
        ("coalesce(payload.missing.deeper, key)", "k-1"),
        ("coalesce(headers['empty'], 'x')", ""),
        ("coalesce(null, headers['tenant'])", None),
        ("substr(payload.customer_id, 2)", "42"),
        ("substr(payload.customer_id, 0, 1)", "c"),
        ("substr(payload.customer_id, -2)", "42"),
    ],
)
def test_functions(text: str, expected: object) -> None:
    assert evaluate(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("payload.region.strip().lower()", "eu"),
        ("headers['region'].upper()", "WEST"),
        ("payload.customer_id.substr(2)", "42"),
        ("payload.items.len()", 2),
        ("payload.n.str()", "7"),
        ("headers.tenant.coalesce(key)", "k-1"),
        ("payload.customer_id.concat(':', key)", "c-42:k-1"),
    ],
)
def test_method_form(text: str, expected: object) -> None:
    assert evaluate(text) == expected


def test_function_names_are_the_allow_list() -> None:
    expected = {"str", "int", "lower", "upper", "strip", "len", "concat", "coalesce", "substr"}
    assert expected == FUNCTION_NAMES


def test_key_is_the_message_key() -> None:
    assert evaluate("key.upper()", key="abc") == "ABC"
    assert evaluate("coalesce(key, payload.n)", key=None) == 7


def test_expression_keeps_its_source_and_compares_by_it() -> None:
    expression = compile_expression("payload.customer_id")
    assert isinstance(expression, KeyExpression)
    assert expression.source == "payload.customer_id"
    assert expression == compile_expression("payload.customer_id")
    assert "payload.customer_id" in repr(expression)


# ---------------------------------------------------------------- pydantic payloads


class Customer(BaseModel):
    id: str
    region: str | None = None


class Order(BaseModel):
    customer: Customer
    items: list[int]
    labels: dict[str, str] = {}
    _secret: str = PrivateAttr(default="s3cret")

    @property
    def broken(self) -> str:
        raise ValueError("computed field failed")


ORDER = Order(customer=Customer(id="c-9", region="EU"), items=[5, 6], labels={"tier": "gold"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("payload.customer.id", "c-9"),
        ("payload.customer.region.lower()", "eu"),
        ("payload.items[1]", 6),
        ("payload.labels.tier", "gold"),
        ("payload.labels['tier']", "gold"),
        ("concat(payload.customer.id, '@', payload.customer.region)", "c-9@EU"),
    ],
)
def test_pydantic_model_fields(text: str, expected: object) -> None:
    assert evaluate(text, payload=ORDER) == expected


def test_pydantic_methods_are_not_values() -> None:
    with pytest.raises(ConversionError, match=r"payload\.model_dump` is callable"):
        evaluate("payload.model_dump", payload=ORDER)


def test_a_failing_property_becomes_conversion_error() -> None:
    with pytest.raises(ConversionError, match="computed field failed") as caught:
        evaluate("payload.broken", payload=ORDER)
    assert isinstance(caught.value.__cause__, ValueError)


def test_a_callable_attribute_is_never_called() -> None:
    calls: list[str] = []

    class Payload:
        def action(self) -> str:
            calls.append("called")
            return "x"

    with pytest.raises(ConversionError):
        evaluate("payload.action", payload=Payload())
    with pytest.raises(ExpressionError):
        compile_expression("payload.action()")
    assert calls == []


# ------------------------------------------------------------------------ hostility

HOSTILE = [
    ("payload.__class__.__mro__", "__class__"),
    ("payload.__class__.__subclasses__()", "__subclasses__"),
    ("__import__('os').system('x')", "__import__"),
    ("().__class__", "()"),
    ("''.__class__.__base__", "__class__"),
    ("open('/etc/passwd')", "open"),
    ("getattr(payload, 'x')", "getattr"),
    ("eval('1')", "eval"),
    ("exec('1')", "exec"),
    ("compile('1', '', 'eval')", "compile"),
    ("globals()", "globals"),
    ("[x for x in payload]", "for x in payload"),
    ("{x: 1 for x in payload}", "for x in payload"),
    ("(x for x in payload)", "for x in payload"),
    ("lambda: 1", "lambda"),
    ("payload._secret", "_secret"),
    ("payload.customer._private", "_private"),
    ("headers['__class__']", "__class__"),
    ("headers['_hidden']", "_hidden"),
    ('"a" * 10**9', "*"),
    ("payload.n ** 99999", "**"),
    ("T(java.lang.Runtime).getRuntime().exec('calc')", "java"),
    ("T(java.lang.Runtime)", "java"),
    ("f'{payload}'", "f'"),
    ("lower(*payload)", "*payload"),
    ("payload[0:10]", "0:10"),
    ("(x := payload)", ":="),
    ("payload.n == 1", "=="),
    ("payload and key", "and"),
    ("not payload", "not"),
    ("payload if key else headers", "if"),
    ("str(object=payload)", "keyword"),
    ("payload.customer_id.format(payload)", "format"),
    ("payload.items.pop()", "pop"),
    ("[payload]", "[payload]"),
    ("{'a': 1}", "{'a': 1}"),
    ("b'raw'", "b'raw'"),
    ("...", "..."),
    ("self", "self"),
    ("builtins", "builtins"),
    ("await payload", "await"),
]


@pytest.mark.parametrize(("text", "offending"), HOSTILE)
def test_hostile_expressions_fail_at_compile_time(text: str, offending: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(text)
    assert repr(text) in str(caught.value)
    assert offending in str(caught.value)


def test_a_bound_method_is_not_a_key() -> None:
    with pytest.raises(ConversionError, match="callable, not a value"):
        evaluate("payload.customer_id.lower")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("payload.", "not valid syntax"),
        ("payload..x", "not valid syntax"),
        ("payload.\0", "not valid syntax"),
        ("import os", "not valid syntax"),
        ("payload; key", "not valid syntax"),
        ("customer_id", "unknown name 'customer_id'"),
        ("lower()", "takes 1 argument (0 given)"),
        ("substr('a')", "takes 2 to 3 arguments (1 given)"),
        ("concat()", "takes at least 1 argument (0 given)"),
        ("payload.customer_id()", "'customer_id' is not an allowed function"),
        ("payload.n()()", "only the allowed functions"),
        ("-payload.n", "unary"),
        ("1j", "literals"),
    ],
)
def test_refusals_explain_themselves(text: str, problem: str) -> None:
    with pytest.raises(ExpressionError, match=re.escape(problem)):
        compile_expression(text)


def test_length_limit() -> None:
    fits = "'" + "a" * (MAX_LENGTH - 2) + "'"
    assert compile_expression(fits).evaluate(None, None, None) == "a" * (MAX_LENGTH - 2)
    with pytest.raises(ExpressionError, match="longer than 500"):
        compile_expression("'" + "a" * MAX_LENGTH + "'")


def test_nesting_limit() -> None:
    assert evaluate("payload" + ".a" * 20, payload=_nested(20)) == "leaf"
    with pytest.raises(ExpressionError, match="nested deeper than 32"):
        compile_expression("payload" + ".a" * 40)
    with pytest.raises(ExpressionError):
        compile_expression("lower(" * 100 + "key" + ")" * 100)


def _nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


def test_refusal_is_a_config_error_naming_the_key_path() -> None:
    path = "binder.bindings.orders-out-0.producer.partition-key-expression"
    with pytest.raises(ConfigError) as caught:
        compile_expression("payload.__dict__", path=path)
    assert str(caught.value).startswith(f"{path}: ")
    assert caught.value.value == "payload.__dict__"


def test_eval_and_exec_are_never_used(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("eval/exec called")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    assert evaluate("concat(payload.customer_id.upper(), key)") == "C-42k-1"


EXPRESSION_CHARS = "payloadheaderskeyconcatsubstrlowerint_.,[]()'\"+-*0123456789 :"


@given(st.one_of(st.text(max_size=60), st.text(alphabet=EXPRESSION_CHARS, max_size=60)))
def test_random_text_raises_only_expression_error(text: str) -> None:
    try:
        expression = compile_expression(text)
    except ExpressionError:
        return
    with contextlib.suppress(ConversionError):
        expression.evaluate(PAYLOAD, HEADERS, "k")


_ATOMS = st.sampled_from(
    ["payload", "headers", "key", "'a'", "''", "1", "-2", "1.5", "true", "null"]
)
_FIELDS = st.sampled_from(["customer_id", "items", "n", "region", "field", "missing"])
_UNARY = st.sampled_from(sorted(FUNCTION_NAMES - {"substr"}))


def _grow(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds("({}).{}".format, inner, _FIELDS),
        st.builds("({})[{}]".format, inner, inner),
        st.builds("({} + {})".format, inner, inner),
        st.builds("{}({})".format, _UNARY, inner),
        st.builds("({}).{}()".format, inner, _UNARY),
        st.builds("substr({}, {}, {})".format, inner, inner, inner),
        st.lists(inner, min_size=1, max_size=3).map(lambda xs: f"coalesce({', '.join(xs)})"),
    )


@given(
    st.recursive(_ATOMS, _grow, max_leaves=12), st.sampled_from([PAYLOAD, ORDER, None, [1], "s"])
)
def test_valid_expressions_raise_only_conversion_error(text: str, payload: object) -> None:
    try:
        expression = compile_expression(text)
    except ExpressionError as exc:  # only the size limits may refuse generated text
        assert "deeper" in str(exc) or "longer" in str(exc)
        return
    try:
        key = partition_key(expression, payload, HEADERS, "k")
    except ConversionError:
        return
    assert key is None or isinstance(key, bytes)


# ----------------------------------------------------------------- run-time errors


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("payload.customer", "`payload` has no key 'customer'"),
        ("headers['tenant']", "`headers` has no key 'tenant'"),
        ("payload.items[5]", "`payload.items` has no index 5"),
        ("payload.items['x']", "index must be an int"),
        ("payload.n.x", r"`payload.n` \(int\) has no attribute 'x'"),
        ("payload.n[0]", r"`payload.n` \(int\) cannot be indexed"),
        ("payload[payload.items]", "cannot have a list key"),
        ("lower(payload.n)", "`payload.n` is int, not str"),
        ("len(payload.n)", r"`payload.n` \(int\) has no length"),
        ("int(payload.customer_id)", "is 'c-42', not an integer"),
        ("int(payload.items)", "not a number or str"),
        ("substr(payload.customer_id, '1')", "is str, not int"),
        ("payload.items + 1", "adds list \\+ int"),
        ("payload.n + true", "adds int \\+ bool"),
        ("lower(null)", "`null` is None where a value is needed"),
        ("concat(payload.customer_id, null)", "`null` is None"),
        ("null + 'a'", "`null` is None"),
    ],
)
def test_runtime_failures_are_conversion_errors(text: str, problem: str) -> None:
    with pytest.raises(ConversionError, match=problem) as caught:
        evaluate(text)
    assert text.strip() in str(caught.value)


def test_walking_through_none_names_the_step() -> None:
    with pytest.raises(ConversionError, match=r"`payload\.customer` is None, so it has no 'id'"):
        evaluate("payload.customer.id", payload={"customer": None})
    with pytest.raises(ConversionError, match="`headers` is None"):
        evaluate("headers['region']", headers=None)


def test_runtime_errors_are_never_bare_lookups() -> None:
    for text in ("payload.x", "payload[0]", "payload.items[9]", "headers.x", "key.x"):
        with pytest.raises(ConversionError) as caught:
            evaluate(text)
        assert type(caught.value) is ConversionError
        assert caught.value.__cause__ is None


# ------------------------------------------------------------------- partition_key


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (None, None),
        (b"\x00raw", b"\x00raw"),
        ("c-42", b"c-42"),
        ("é", "é".encode()),
        (42, b"42"),
        ({"a": 1}, b'{"a":1}'),
    ],
)
def test_partition_key_without_expression_is_the_message_key(
    key: object, expected: bytes | None
) -> None:
    assert partition_key(None, PAYLOAD, HEADERS, key) == expected


def test_partition_key_from_expression() -> None:
    expression = compile_expression("payload.customer_id")
    assert partition_key(expression, PAYLOAD, HEADERS, "ignored") == b"c-42"
    assert partition_key(compile_expression("payload.n"), PAYLOAD, HEADERS, None) == b"7"
    assert (
        partition_key(compile_expression("payload.items"), PAYLOAD, HEADERS, None)
        == b'["first","second"]'
    )


def test_partition_key_none_value_means_no_key() -> None:
    assert (
        partition_key(compile_expression("coalesce(headers['tenant'])"), PAYLOAD, HEADERS, "k")
        is None
    )


def test_partition_key_that_has_no_bytes_is_conversion_error() -> None:
    with pytest.raises(ConversionError, match=r"payload\.odd"):
        partition_key(compile_expression("payload.odd"), {"odd": {(1, 2): "tuple key"}}, {}, None)


def test_partition_key_feeds_select_partition_like_kafka() -> None:
    raw = partition_key(
        compile_expression("payload.customer_id"), {"customer_id": "foobar"}, {}, None
    )
    assert raw is not None
    assert select_partition(raw, 4) == (-790332482 & 0x7FFFFFFF) % 4
