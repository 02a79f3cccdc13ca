"""Lifecycle: redelivery after a consumer dies, pause/resume, batches, stopping without loss."""

from __future__ import annotations

import asyncio
from typing import Any

from binder.bindings import BindingState
from binder.spi import OutboundRecord
from binder.testing.conformance.groups import consumer_app, duplicates, payloads_of, send_all
from binder.testing.conformance.support import (
    TIMEOUT,
    Conformance,
    Inbox,
    fetch_records,
    keys_for_partitions,
    require,
    run,
)

__all__ = [
    "test_batch_mode_function_gets_a_list",
    "test_graceful_shutdown_loses_nothing",
    "test_graceful_shutdown_loses_nothing_under_concurrency",
    "test_lag_grows_while_paused_and_drains_to_zero",
    "test_pause_holds_messages_until_resume",
    "test_pause_outlasts_a_reassignment",
    "test_stop_and_start_one_binding_at_run_time",
    "test_stop_during_retry_backoff_leaves_the_message_for_the_next_start",
    "test_unacknowledged_message_is_redelivered_after_its_consumer_dies",
]


def test_unacknowledged_message_is_redelivered_after_its_consumer_dies(
    conformance: Conformance, dest: str, group: str
) -> None:
    require(conformance.capabilities, "consumer_groups", "redelivery_on_failure")

    async def scenario() -> tuple[list[bytes], list[bytes], list[bytes]]:
        await conformance.provision(dest, 1)
        async with conformance.binder() as binder:
            dying = await conformance.consumer(binder, dest, group)
            await conformance.send_raw(binder, dest, [OutboundRecord(b"one", b"k")])
            taken = await asyncio.wait_for(dying.fetch(), TIMEOUT)
            await dying.close()  # dies without committing
            heir = await conformance.consumer(binder, dest, group)
            again = await fetch_records(heir, 1)  # fetched and committed
            await heir.close()
            successor = await conformance.consumer(binder, dest, group)
            await conformance.send_raw(binder, dest, [OutboundRecord(b"two", b"k")])
            after_commit = await fetch_records(successor, 1)
            await successor.close()
        return ([r.value for r in taken], [r.value for r in again], [r.value for r in after_commit])

    taken, again, after_commit = run(scenario())
    assert taken == [b"one"]
    assert again == [b"one"], "a record fetched but not committed goes to the next member"
    assert after_commit == [b"two"], "a committed record is not delivered again"


def test_pause_holds_messages_until_resume(conformance: Conformance, dest: str, group: str) -> None:
    require(conformance.capabilities, "consumer_groups")
    held = [{"n": 1}, {"n": 2}, {"n": "end"}]

    async def scenario() -> tuple[list[Any], list[Any], list[BindingState]]:
        await conformance.provision(dest, 1)
        inbox: Inbox[tuple[str, Any]] = Inbox()
        subject = consumer_app(conformance, dest, group, inbox, "subject")
        witness = consumer_app(conformance, dest, f"{group}-witness", inbox, "witness")
        async with subject, witness:
            await send_all(conformance, dest, [{"n": 0}])
            await inbox.wait_until(lambda items: len(items) == 2, "both groups get n=0")
            binding = subject.binding("subject-in-0")
            states = [binding.state]
            binding.pause()
            states.append(binding.state)
            await send_all(conformance, dest, held)
            await inbox.wait_for(("witness", held[-1]))  # the paused group could have had them
            while_paused = payloads_of(inbox.items, "subject")
            binding.resume()
            states.append(binding.state)
            await inbox.wait_for(("subject", held[-1]))
        return while_paused, payloads_of(inbox.items, "subject"), states

    while_paused, after_resume, states = run(scenario())
    assert states == [BindingState.RUNNING, BindingState.PAUSED, BindingState.RUNNING]
    assert while_paused == [{"n": 0}], "nothing is handled while paused"
    assert after_resume == [{"n": 0}, *held], "what was held arrives after resume, in order"


def test_lag_grows_while_paused_and_drains_to_zero(
    conformance: Conformance, dest: str, group: str
) -> None:
    """The binder's ``Consumer.lag()`` (``streambinder_consumer_lag``): messages the group
    has not committed, so it counts what waits while the binding is paused and falls back to
    zero once they were handled."""
    require(conformance.capabilities, "consumer_groups")
    waiting = [{"n": n} for n in range(5)]

    async def until(binding: Any, wanted: Any, what: str) -> int:
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while True:
            total = sum(binding.stats.lag.values())
            if wanted(total):
                return total
            assert asyncio.get_running_loop().time() < deadline, f"lag {total}: {what}"
            await asyncio.sleep(0.05)

    async def scenario() -> tuple[int, int]:
        await conformance.provision(dest, 1)
        inbox: Inbox[tuple[str, Any]] = Inbox()
        subject = consumer_app(conformance, dest, group, inbox, "subject")
        async with subject:
            await send_all(conformance, dest, [{"n": "first"}])
            await inbox.wait_until(lambda items: len(items) == 1, "the first message")
            binding = subject.binding("subject-in-0")
            binding.pause()
            await send_all(conformance, dest, waiting)
            behind = await until(binding, lambda total: total >= len(waiting), "while paused")
            binding.resume()
            await inbox.wait_until(lambda items: len(items) == 1 + len(waiting), "all of them")
            after = await until(binding, lambda total: total == 0, "after draining")
        return behind, after

    behind, after = run(scenario())
    assert behind == len(waiting), "what waits while paused, no more"
    assert after == 0


def test_pause_outlasts_a_reassignment(conformance: Conformance, dest: str, group: str) -> None:
    """A paused member stays paused while a second member joins (taking a partition from it)
    and leaves (giving it back): the partitions it is given meanwhile are paused too."""
    require(conformance.capabilities, "consumer_groups", "native_partitions")
    keys = keys_for_partitions(2)

    async def send(stage: str) -> None:
        async with conformance.app() as sender:
            for p, key in enumerate(keys):
                await sender.send(dest, {"stage": stage, "p": p}, key=key)

    async def scenario() -> tuple[list[Any], list[Any]]:
        await conformance.provision(dest, 2)
        inbox: Inbox[tuple[str, Any]] = Inbox()
        subject = consumer_app(conformance, dest, group, inbox, "subject")
        witness = consumer_app(conformance, dest, f"{group}-witness", inbox, "witness")
        async with subject, witness:
            await send("before")
            await inbox.wait_until(lambda items: len(items) == 4, "both groups get 'before'")
            subject.binding("subject-in-0").pause()
            async with consumer_app(conformance, dest, group, inbox, "member"):
                await send("joined")  # the member takes one partition and handles its message
                await inbox.wait_until(
                    lambda items: any(who == "member" for who, _ in items), "the member's"
                )
            await send("left")  # the paused member holds both partitions again
            await inbox.wait_until(
                lambda items: len(payloads_of(items, "witness")) == 6, "all to the witness"
            )
            while_paused = payloads_of(inbox.items, "subject")
            subject.binding("subject-in-0").resume()
            await inbox.wait_until(
                lambda items: sum(p["stage"] == "left" for p in payloads_of(items, "subject")) == 2,
                "the held messages after resume",
            )
        return while_paused, payloads_of(inbox.items, "subject")

    while_paused, after_resume = run(scenario())
    assert [p["stage"] for p in while_paused] == ["before", "before"], "nothing while paused"
    assert {(p["stage"], p["p"]) for p in after_resume} >= {("left", 0), ("left", 1)}


def test_batch_mode_function_gets_a_list(conformance: Conformance, dest: str, group: str) -> None:
    require(conformance.capabilities, "consumer_groups")
    payloads = [{"n": n} for n in range(20)]

    async def scenario() -> list[Any]:
        sender = conformance.app(
            {"sender": {"destination": dest, "producer": {"required-groups": [group]}}}
        )
        async with sender:  # sent before the consumer starts, so one fetch finds several
            for payload in payloads:
                await sender.send("sender", payload)
        app = conformance.app(
            {"bulk-in-0": {"destination": dest, "group": group, "consumer": {"batch-mode": True}}}
        )
        calls: Inbox[Any] = Inbox()

        @app.consumer
        async def bulk(batch: list[dict[str, Any]]) -> None:
            calls.add(batch)

        async with app:
            return await calls.wait_until(
                lambda items: sum(len(batch) for batch in items) >= len(payloads),
                f"{len(payloads)} messages in batches",
            )

    calls = run(scenario())
    assert all(type(batch) is list for batch in calls), [type(b) for b in calls]
    assert [item for batch in calls for item in batch] == payloads
    assert max(len(batch) for batch in calls) > 1, "waiting messages come as one batch"


async def _stop_mid_stream(
    conformance: Conformance, dest: str, group: str, total: int, concurrency: int
) -> tuple[list[Any], list[Any]]:
    await conformance.provision(dest, 1)
    payloads = [{"n": n} for n in range(total)]
    options = {"concurrency": concurrency}
    first: Inbox[tuple[str, Any]] = Inbox()
    app = consumer_app(conformance, dest, group, first, consumer=options, delay=0.002)
    async with app:
        await asyncio.gather(
            *(app.send(dest, payload, key=f"k{payload['n'] % 8}") for payload in payloads)
        )
        await first.wait_count(total // 10, f"{total // 10} handled before stopping")
    stopped_at = payloads_of(first.items)
    second: Inbox[tuple[str, Any]] = Inbox()
    end = {"n": "end"}
    async with consumer_app(conformance, dest, group, second, consumer=options):
        await send_all(conformance, dest, [end])
        await second.wait_for(("sink", end))
    # read once stopped: what was fetched before the sentinel has been handled by then
    return stopped_at, [payload for payload in payloads_of(second.items) if payload != end]


def _check_nothing_lost(total: int, before: list[Any], after: list[Any]) -> None:
    union = [*before, *after]
    assert not duplicates(union), "a graceful stop commits what it finished"
    assert sorted(item["n"] for item in union) == list(range(total)), "nothing is lost"


def test_graceful_shutdown_loses_nothing(conformance: Conformance, dest: str, group: str) -> None:
    require(conformance.capabilities, "consumer_groups")
    before, after = run(_stop_mid_stream(conformance, dest, group, 300, 1))
    _check_nothing_lost(300, before, after)


def test_graceful_shutdown_loses_nothing_under_concurrency(
    conformance: Conformance, dest: str, group: str
) -> None:
    require(conformance.capabilities, "consumer_groups")
    before, after = run(_stop_mid_stream(conformance, dest, group, 300, 4))
    _check_nothing_lost(300, before, after)


def test_stop_and_start_one_binding_at_run_time(
    conformance: Conformance, dest: str, group: str
) -> None:
    require(conformance.capabilities, "consumer_groups")

    async def scenario() -> tuple[list[Any], list[BindingState]]:
        await conformance.provision(dest, 1)
        inbox: Inbox[tuple[str, Any]] = Inbox()
        app = consumer_app(conformance, dest, group, inbox)
        async with app:
            binding = app.binding("sink-in-0")
            await send_all(conformance, dest, [{"n": 0}])
            await inbox.wait_for(("sink", {"n": 0}))
            await binding.stop()
            states = [binding.state]
            await send_all(conformance, dest, [{"n": 1}, {"n": 2}])
            await binding.start()
            states.append(binding.state)
            await inbox.wait_for(("sink", {"n": 2}))
            states.append(app.states()["sink-in-0"])
        return payloads_of(inbox.items), states

    received, states = run(scenario())
    assert states == [BindingState.STOPPED, BindingState.RUNNING, BindingState.RUNNING]
    assert received == [{"n": 0}, {"n": 1}, {"n": 2}], "a restarted binding resumes at its commit"


def test_stop_during_retry_backoff_leaves_the_message_for_the_next_start(
    conformance: Conformance, dest: str, group: str
) -> None:
    require(conformance.capabilities, "consumer_groups")
    never = {"max-attempts": 3, "back-off-initial-interval": TIMEOUT * 10}

    async def scenario() -> tuple[list[Any], list[Any]]:
        await conformance.provision(dest, 1)
        attempts: Inbox[Any] = Inbox()
        failing = conformance.app(
            {"flaky-in-0": {"destination": dest, "group": group, "consumer": never}}
        )

        @failing.consumer
        def flaky(payload: dict[str, Any]) -> None:  # synchronous: runs in a worker thread
            attempts.add(payload)
            raise RuntimeError("not yet")

        async with failing:
            await send_all(conformance, dest, [{"n": 1}, {"n": 2}])
            await attempts.wait_for({"n": 1})
        # stopped while waiting to retry {"n": 1}: neither message was acknowledged
        inbox: Inbox[tuple[str, Any]] = Inbox()
        async with consumer_app(conformance, dest, group, inbox):
            received = await inbox.wait_for(("sink", {"n": 2}))
        return attempts.items, payloads_of(received)

    attempts, received = run(scenario())
    assert attempts == [{"n": 1}], "stopping cuts the backoff short, without another attempt"
    assert received == [{"n": 1}, {"n": 2}], "the next member gets both, in order"
