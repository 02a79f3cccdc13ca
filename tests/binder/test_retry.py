"""binder.retry: backoff delays, which errors are retried, and what a dead letter carries."""

from __future__ import annotations

import pytest

from binder.config import ConsumerOptions
from binder.errors import ConversionError, HandlerError
from binder.retry import RetryPolicy, dead_letter_destination, dead_letter_record
from binder.spi import InboundRecord


class AppError(Exception):
    pass


class TransientError(AppError):
    pass


def _wrapped(exc: BaseException) -> HandlerError:
    """A HandlerError as the invoker raises it, with ``exc`` as its cause."""
    try:
        raise HandlerError(f"fn raised {type(exc).__name__}") from exc
    except HandlerError as handler_error:
        return handler_error


# -- delays ----------------------------------------------------------------------------------


def test_delay_grows_exponentially() -> None:
    policy = RetryPolicy(initial=0.1, multiplier=2.0, max_interval=10.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == pytest.approx([0.1, 0.2, 0.4, 0.8])


def test_delay_is_capped_by_max_interval() -> None:
    policy = RetryPolicy(initial=1.0, multiplier=3.0, max_interval=5.0)
    assert [policy.delay(n) for n in (1, 2, 3, 10)] == [1.0, 3.0, 5.0, 5.0]


def test_multiplier_one_gives_constant_delay() -> None:
    policy = RetryPolicy(initial=0.5, multiplier=1.0)
    assert {policy.delay(n) for n in range(1, 6)} == {0.5}


def test_from_options_reads_the_consumer_options() -> None:
    options = ConsumerOptions.model_validate(
        {
            "max-attempts": 5,
            "back-off-initial-interval": 0.2,
            "back-off-multiplier": 3,
            "back-off-max-interval": 1.5,
            "retryable-exceptions": {"ValueError": False},
            "default-retryable": False,
        }
    )
    assert RetryPolicy.from_options(options) == RetryPolicy(
        max_attempts=5,
        initial=0.2,
        multiplier=3.0,
        max_interval=1.5,
        retryable={"ValueError": False},
        default_retryable=False,
    )


# -- what is retried -------------------------------------------------------------------------


def test_retries_until_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    exc = RuntimeError("x")
    assert [policy.should_retry(exc, n) for n in (1, 2, 3, 4)] == [True, True, False, False]


def test_max_attempts_one_never_retries() -> None:
    assert not RetryPolicy(max_attempts=1).should_retry(RuntimeError(), 1)


def test_conversion_error_is_never_retried() -> None:
    policy = RetryPolicy(
        max_attempts=10, retryable={"ConversionError": True}, default_retryable=True
    )
    assert not policy.should_retry(ConversionError("bad bytes"), 1)


def test_simple_name_excludes_the_class_and_its_subclasses() -> None:
    policy = RetryPolicy(retryable={"ValueError": False})
    assert not policy.should_retry(ValueError(), 1)
    assert not policy.should_retry(UnicodeDecodeError("utf-8", b"", 0, 1, "x"), 1)
    assert policy.should_retry(KeyError(), 1)


def test_most_specific_class_wins_by_mro() -> None:
    policy = RetryPolicy(
        retryable={"AppError": False, "TransientError": True}, default_retryable=True
    )
    assert policy.should_retry(TransientError(), 1)
    assert not policy.should_retry(AppError(), 1)


def test_most_specific_wins_whatever_the_mapping_order() -> None:
    policy = RetryPolicy(retryable={"TransientError": False, "Exception": True})
    assert not policy.should_retry(TransientError(), 1)
    assert policy.should_retry(AppError(), 1)


def test_dotted_name_matches_module_and_qualname() -> None:
    dotted = f"{TransientError.__module__}.TransientError"
    policy = RetryPolicy(retryable={dotted: False})
    assert not policy.should_retry(TransientError(), 1)
    assert policy.should_retry(AppError(), 1)


def test_dotted_builtin_name() -> None:
    policy = RetryPolicy(retryable={"builtins.LookupError": False})
    assert not policy.should_retry(KeyError("k"), 1)
    assert policy.should_retry(ValueError(), 1)


def test_wrong_module_in_dotted_name_does_not_match() -> None:
    policy = RetryPolicy(retryable={"elsewhere.TransientError": False})
    assert policy.should_retry(TransientError(), 1)


def test_default_retryable_false_retries_only_listed() -> None:
    policy = RetryPolicy(retryable={"TransientError": True}, default_retryable=False)
    assert policy.should_retry(TransientError(), 1)
    assert not policy.should_retry(AppError(), 1)
    assert not policy.should_retry(RuntimeError(), 1)


def test_handler_error_is_classified_by_its_cause() -> None:
    policy = RetryPolicy(retryable={"AppError": False})
    assert not policy.should_retry(_wrapped(AppError()), 1)
    assert policy.should_retry(_wrapped(RuntimeError()), 1)


def test_handler_error_without_cause_is_classified_itself() -> None:
    policy = RetryPolicy(retryable={"HandlerError": False})
    assert not policy.should_retry(HandlerError("no cause"), 1)


# -- dead letters ----------------------------------------------------------------------------


def test_dead_letter_destination() -> None:
    assert dead_letter_destination("orders", "billing", None) == "orders.billing.dlq"
    assert dead_letter_destination("orders", None, None) == "orders.anonymous.dlq"
    assert dead_letter_destination("orders", "billing", "parking") == "parking"


def _inbound(offset: int | None = 17) -> InboundRecord:
    return InboundRecord(
        destination="orders",
        partition=2,
        offset=offset,
        value=b'{"id": 1}',
        key=b"c-42",
        headers={"source": "api", "contentType": "application/json"},
    )


def test_dead_letter_record_carries_original_and_failure_headers() -> None:
    record = _inbound()
    letter = dead_letter_record(record, _wrapped(TransientError("db down")), "billing", 3)
    assert letter.value == b'{"id": 1}'
    assert letter.key == b"c-42"
    assert letter.partition == 2, "asks for its original partition"
    assert letter.headers == {
        "source": "api",
        "contentType": "application/json",
        "x-exception-type": f"{TransientError.__module__}.TransientError",
        "x-exception-message": "db down",
        "x-exception-stacktrace": f"{TransientError.__module__}.TransientError: db down",
        "x-original-destination": "orders",
        "x-original-group": "billing",
        "x-original-partition": "2",
        "x-original-offset": "17",
        "x-original-delivery-attempt": "3",
        "x-delivery-attempt": "3",
    }
    assert record.headers == {"source": "api", "contentType": "application/json"}


def test_dead_letter_of_anonymous_consumer_without_offset() -> None:
    letter = dead_letter_record(_inbound(offset=None), ConversionError("bad"), None, 1)
    assert letter.headers["x-original-group"] == "anonymous"
    assert letter.headers["x-exception-type"] == "binder.errors.ConversionError"
    assert "x-original-offset" not in letter.headers


def test_dead_letter_exception_message_is_truncated() -> None:
    letter = dead_letter_record(_inbound(), ValueError("x" * 10_000), "g", 1)
    assert letter.headers["x-exception-message"] == "x" * 4096


def test_dead_letter_replaces_a_previous_attempt_header() -> None:
    record = _inbound()
    record.headers["x-delivery-attempt"] = "1"
    letter = dead_letter_record(record, ValueError(), "g", 4)
    assert letter.headers["x-delivery-attempt"] == "4"


def test_dead_letter_without_raw_headers_has_none() -> None:
    assert dead_letter_record(_inbound(), ValueError(), "g", 1).raw_headers is None


def test_dead_letter_keeps_the_raw_headers_exactly_then_its_own() -> None:
    record = _inbound()
    record.raw_headers = (
        ("h", b"1"),
        ("x-delivery-attempt", b"1"),
        ("h", b"2"),
        ("empty", None),
        ("bin", b"\xff\xfe"),
    )
    letter = dead_letter_record(record, ValueError("no"), "g", 4)
    assert letter.raw_headers is not None
    kept, own = letter.raw_headers[:4], dict(letter.raw_headers[4:])
    assert kept == [("h", b"1"), ("h", b"2"), ("empty", None), ("bin", b"\xff\xfe")]
    assert own == {
        name: value.encode() for name, value in letter.headers.items() if name.startswith("x-")
    }
    assert own["x-delivery-attempt"] == b"4", "the letter's own replaces the original's"
    assert len(letter.raw_headers) == 4 + len(own)
