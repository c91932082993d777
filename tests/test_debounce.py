"""Debounced starts (issue 16): ``start_orchestration(..., debounce=, debounce_key=)``.

A burst of debounced starts with one key makes one instance, which runs once,
after the quiet period, with the burst's last input; once a runtime picked its
start up, the next start opens a new window; windows are per (orchestration
name, key), the key defaulting to the instance id. Bad input is refused before
anything is stored. Every store, both replay modes (``clocked``), time driven
by the test's ManualClock: nothing waits for real time to pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from duroxide_macros import discovery
from duroxide_macros.prelude import OrchestrationContext, orchestration
from duroxide_runtime import (
    Client, ConfigurationError, InMemoryProvider, InstanceAlreadyExistsError, InvalidInputError, OrchestrationStatus,
)
from duroxide_runtime.testing import ManualClock

from .support import Harness

pytestmark = pytest.mark.timeout(90)

QUIET = timedelta(seconds=5)
#: Real seconds a condition may take to hold (generous: the suite runs while both cores are busy).
BOUND = 30.0


async def _until(clock: ManualClock, holds: Callable[[], bool], what: str) -> None:
    """Until ``holds()``. A dispatcher that was fetching when the test moved the clock waits from
    the new time, so time is nudged on (0.1 s a step) while nothing happens."""
    for _ in range(int(BOUND * 10)):
        for _ in range(10):
            if holds():
                return
            await asyncio.sleep(0.01)
        clock.advance(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _recording(runs: list[tuple[str, str]]) -> Callable[[OrchestrationContext, str], Any]:
    async def digest(ctx: OrchestrationContext, input: str) -> str:
        if not ctx.is_replaying:
            runs.append((ctx.instance_id, input))
        return f"sent {input}"

    return digest


def _manual(h: Harness) -> ManualClock:
    clock = h.store.clock
    assert isinstance(clock, ManualClock)
    return clock


async def _status(h: Harness, instance_id: str) -> str:
    info = await h.client.get_instance_info(instance_id)
    return info.status


async def test_a_burst_of_debounced_starts_runs_one_instance_once_after_the_quiet_period_with_the_last_input(
        clocked: Harness) -> None:
    clock = _manual(clocked)
    runs: list[tuple[str, str]] = []
    await clocked.start({"Digest": _recording(runs)})
    ids = []
    for n in range(5):
        ids.append(await clocked.client.start_orchestration(f"digest-{n}", "Digest", f"input {n}",
                                                            debounce=QUIET, debounce_key="user-7"))
        clock.advance(4)  # within the quiet period of the start before
    assert ids == ["digest-0"] * 5  # every start joined the first one's instance
    assert [i.instance_id for i in await clocked.client.list_instances()] == ["digest-0"]
    # 4 s after the last start (1 s before its quiet period ends): held back, not run.
    await asyncio.sleep(0.2)
    assert runs == [] and await _status(clocked, "digest-0") == "Pending"
    clock.advance(1)
    await _until(clock, lambda: bool(runs), "the debounced instance to run")
    status = await clocked.client.wait_for_orchestration("digest-0", timedelta(seconds=BOUND))
    assert isinstance(status, OrchestrationStatus.Completed) and status.output == "sent input 4"
    assert runs == [("digest-0", "input 4")]


async def test_a_debounced_start_after_the_instance_ran_opens_a_new_window(clocked: Harness) -> None:
    clock = _manual(clocked)
    runs: list[tuple[str, str]] = []
    await clocked.start({"Digest": _recording(runs)})
    client = clocked.client
    assert await client.start_orchestration("d-1", "Digest", "a", debounce=QUIET, debounce_key="k") == "d-1"
    clock.advance(5)
    await client.wait_for_orchestration("d-1", timedelta(seconds=BOUND))
    # The window closed when d-1 was picked up: this start opens a new one, with its own id.
    assert await client.start_orchestration("d-2", "Digest", "b", debounce=QUIET, debounce_key="k") == "d-2"
    assert await client.start_orchestration("d-3", "Digest", "c", debounce=QUIET, debounce_key="k") == "d-2"
    clock.advance(5)
    status = await client.wait_for_orchestration("d-2", timedelta(seconds=BOUND))
    assert isinstance(status, OrchestrationStatus.Completed) and status.output == "sent c"
    # A new window's id must be free, as for any start; "return_existing" returns the one there.
    with pytest.raises(InstanceAlreadyExistsError):
        await client.start_orchestration("d-1", "Digest", "d", debounce=QUIET, debounce_key="k")
    assert await client.start_orchestration("d-1", "Digest", "d", debounce=QUIET, debounce_key="k",
                                            if_exists="return_existing") == "d-1"
    assert sorted(runs) == [("d-1", "a"), ("d-2", "c")]
    assert sorted(i.instance_id for i in await client.list_instances()) == ["d-1", "d-2"]


async def test_debounce_windows_are_per_key_and_name_and_the_key_defaults_to_the_instance_id(
        clocked: Harness) -> None:
    clock = _manual(clocked)
    runs: list[tuple[str, str]] = []
    await clocked.start({"Digest": _recording(runs), "Report": _recording(runs)})
    client = clocked.client
    started = [
        await client.start_orchestration("u-1", "Digest", "1", debounce=QUIET, debounce_key="user-1"),
        await client.start_orchestration("u-2", "Digest", "2", debounce=QUIET, debounce_key="user-2"),
        await client.start_orchestration("r-1", "Report", "3", debounce=QUIET, debounce_key="user-1"),
        # No key: the window is the instance id's, so a repeated start of one id joins it.
        await client.start_orchestration("n-1", "Digest", "4", debounce=2.5),
        await client.start_orchestration("n-1", "Digest", "5", debounce=2.5),
    ]
    assert started == ["u-1", "u-2", "r-1", "n-1", "n-1"]
    clock.advance(5)
    await _until(clock, lambda: len(runs) == 4, "four instances to run")
    for iid in ("u-1", "u-2", "r-1", "n-1"):
        assert isinstance(await client.wait_for_orchestration(iid, timedelta(seconds=BOUND)),
                          OrchestrationStatus.Completed)
    assert sorted(runs) == [("n-1", "5"), ("r-1", "3"), ("u-1", "1"), ("u-2", "2")]


async def test_bad_debounce_input_is_refused_before_anything_is_stored() -> None:
    store = InMemoryProvider()
    client = Client(store)
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        (dict(debounce=0), InvalidInputError, "at least 1 ms"),
        (dict(debounce=timedelta(seconds=-1)), InvalidInputError, "at least 1 ms"),
        (dict(debounce=timedelta(days=8)), InvalidInputError, "over the limit"),
        (dict(debounce=float("inf")), InvalidInputError, "over the limit"),
        (dict(debounce=float("-inf")), InvalidInputError, "at least 1 ms"),
        (dict(debounce=float("nan")), ConfigurationError, "NaN"),
        (dict(debounce="5s"), ConfigurationError, "timedelta or a number of seconds"),
        (dict(debounce_key="k"), InvalidInputError, "without debounce"),
        (dict(debounce=5, debounce_key=""), InvalidInputError, "debounce_key"),
        (dict(debounce=5, debounce_key="a\x00b"), InvalidInputError, "debounce_key"),
        (dict(debounce=5, idempotency_key="req-1"), InvalidInputError, "drop idempotency_key"),
        (dict(debounce=5, deadline=timedelta(hours=1)), InvalidInputError, "drop deadline"),
        (dict(debounce=5, if_exists="replace"), InvalidInputError, "never deletes"),
        (dict(debounce=5, queue="emails"), InvalidInputError, "start without queue="),
    ]
    for options, error, needle in cases:
        with pytest.raises(error) as caught:
            await client.start_orchestration("bad-1", "Digest", "x", **options)
        assert needle in str(caught.value), (options, str(caught.value))
    # Nothing was stored, and a good debounced start still goes through.
    assert await store.list_instances() == []
    assert await client.start_orchestration("good-1", "Digest", "x", debounce=5, queue="default") == "good-1"


@orchestration(queue="db_mail")
async def db_mail(ctx: OrchestrationContext, to: str) -> str:
    return f"mailed {to}"


discovery._orchestrations.pop((db_mail.name, db_mail.version))  # out of other tests' duroxide_main


async def test_the_macro_start_passes_debounce_through_and_a_declared_queue_must_be_overridden() -> None:
    store = InMemoryProvider(clock=ManualClock())
    client = Client(store)
    # The declared queue cannot hold a debounced start: refused with the way out.
    with pytest.raises(InvalidInputError, match="queue='default' overrides"):
        await db_mail.start(client, "m-1", "ann", debounce=QUIET)
    first = await db_mail.start(client, "m-1", "ann", debounce=QUIET, debounce_key="ann", queue="default")
    second = await db_mail.start(client, "m-2", "bob", debounce=QUIET, debounce_key="ann", queue="default")
    assert (first, second) == ("m-1", "m-1")
    assert [i.instance_id for i in await client.list_instances()] == ["m-1"]
