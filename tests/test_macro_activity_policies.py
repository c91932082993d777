"""Activity policies of the macro layer: ``@activity(retry=..., timeout=..., heartbeat_timeout=...)``,
the design's ``retry=N, backoff_ms=..., timeout_ms=...``, and per call ``durable(f(x), retry=...)`` /
``f.with_options(...).call(ctx, x)``, run on every store in both replay modes.

This module is rewritten by the pytest plugin's import hook, so ``durable(..., timeout=...)``
below is the real rewrite. What was persisted (attempts, back-off timers, the heartbeat
timeout) is read from the stored history.

Names of decorated functions start with ``ap_``: discovery is global per process.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from datetime import timedelta

import pytest

from duroxide_macros.prelude import (
    ActivityFailed,
    ActivityPolicy,
    ActivityRegistry,
    ActivityWithOptions,
    Event,
    OrchestrationContext,
    OrchestrationRegistry,
    OrchestrationStatus,
    RetryPolicy,
    activity,
    durable,
    orchestration,
)
from duroxide_runtime import ActivityTimeoutError, ConfigurationError
from duroxide_runtime.history import HistoryEvent

from .support import Harness

pytestmark = pytest.mark.timeout(120)

_attempts: Counter[str] = Counter()
_attempts_lock = threading.Lock()  # the plain-def activity counts from a worker thread
_gates: dict[str, asyncio.Event] = {}


def _attempt(key: str) -> int:
    with _attempts_lock:
        _attempts[key] += 1
        return _attempts[key]


@activity(typed=True, retry=RetryPolicy(max_attempts=3, backoff=timedelta(milliseconds=20)),
          timeout=timedelta(seconds=60))
async def ap_flaky(key: str, failures: int) -> str:
    n = _attempt(key)
    if n <= failures:
        raise RuntimeError(f"attempt {n} of {key}")
    return f"{key} after {n}"


@activity(typed=True, retry=3, backoff_ms=20, timeout_ms=60_000)  # the design's spelling, a plain def
def ap_flaky_sync(key: str, failures: int) -> str:
    n = _attempt(key)
    if n <= failures:
        raise RuntimeError(f"attempt {n} of {key}")
    return f"{key} after {n}"


@activity(retry=2, backoff_ms=0)  # untyped: one str in, one str out
async def ap_flaky_text(key: str) -> str:
    n = _attempt(key)
    if n < 2:
        raise RuntimeError(f"attempt {n} of {key}")
    return f"{key} after {n}"


@activity(typed=True, heartbeat_timeout=timedelta(seconds=40))
async def ap_gate(key: str) -> str:
    await _gates[key].wait()
    return "released"


@orchestration
async def ap_flow(ctx: OrchestrationContext, key: str) -> list[str]:
    out = [await durable(ap_flaky(f"{key}:a", 2)),       # the decorator's 3 attempts
           await durable(ap_flaky_sync(f"{key}:b", 2)),  # retry=3, backoff_ms=20
           await durable(ap_flaky_text(f"{key}:c"))]     # retry=2, backoff_ms=0
    try:  # this call: 2 attempts, not enough
        await durable(ap_flaky(f"{key}:d", 2), retry=RetryPolicy(max_attempts=2, backoff=timedelta(0)))
    except ActivityFailed as err:
        out.append(f"gave up: {err.details.message}")
    # retry=N changes the number of attempts and keeps the decorator's back-off
    out.append(await ap_flaky.with_options(retry=5).call(ctx, f"{key}:e", 4))
    try:
        await durable(
            ap_gate(key),
            timeout=timedelta(milliseconds=200),
        )
    except ActivityTimeoutError as err:
        out.append(f"timed out: {err.name}")
    return out


def _registries() -> tuple[OrchestrationRegistry, ActivityRegistry]:
    acts = ActivityRegistry.builder()
    for act in (ap_flaky, ap_flaky_sync, ap_flaky_text, ap_gate):
        acts.register(act.name, act.registered_function())
    return OrchestrationRegistry.builder().register(ap_flow.name, ap_flow.registered_function).build(), acts.build()


def _backoffs_ms(history: list[HistoryEvent], key: str) -> list[int]:
    """The back-off timers after the failed attempts of the calls whose input names ``key``."""
    waits = []
    for before, event in zip(history, history[1:]):
        if isinstance(event, Event.TimerCreated) and isinstance(before, Event.ActivityFailed):
            scheduled = next(e for e in history if isinstance(e, Event.ActivityScheduled)
                             and e.event_id == before.source_event_id)
            if f'"{key}"' in scheduled.input or scheduled.input == key:
                waits.append(event.fire_at_ms - event.timestamp_ms)
    return waits


async def test_policies_retry_time_out_and_are_recorded(harness: Harness) -> None:
    key = f"flow-{harness.replay_mode}-{type(harness.store).__name__}"
    _gates[key] = asyncio.Event()
    orchs, acts = _registries()
    await harness.start(orchs, acts)
    try:
        await ap_flow.start(harness.client, key, key)
        status = await ap_flow.wait(harness.client, key, timeout=60)
    finally:
        _gates[key].set()
    assert status == OrchestrationStatus.Completed(output=[
        f"{key}:a after 3", f"{key}:b after 3", f"{key}:c after 2", f"gave up: attempt 2 of {key}:d",
        f"{key}:e after 5", "timed out: ap_gate"])
    assert {k: v for k, v in _attempts.items() if k.startswith(key)} == {
        f"{key}:a": 3, f"{key}:b": 3, f"{key}:c": 2, f"{key}:d": 2, f"{key}:e": 5}

    history = await harness.client.read_history(key)
    scheduled = [e for e in history if isinstance(e, Event.ActivityScheduled)]
    assert Counter(e.name for e in scheduled) == Counter(
        {"ap_flaky": 3 + 2 + 5, "ap_flaky_sync": 3, "ap_flaky_text": 2, "ap_gate": 1})
    # the back-off timers are durable, and as configured (doubling from the first)
    assert _backoffs_ms(history, f"{key}:a") == [20, 40]
    assert _backoffs_ms(history, f"{key}:b") == [20, 40]
    assert _backoffs_ms(history, f"{key}:c") == [0]
    assert _backoffs_ms(history, f"{key}:d") == [0]
    assert _backoffs_ms(history, f"{key}:e") == [20, 40, 80, 160]
    [gate] = [e for e in scheduled if e.name == "ap_gate"]
    assert gate.heartbeat_timeout_ms == 40_000  # the decorator's, kept by the per-call timeout
    assert all(e.heartbeat_timeout_ms is None for e in scheduled if e.name != "ap_gate")
    # the timeout is a durable timer raced against the call
    assert any(isinstance(e, Event.TimerCreated) and e.fire_at_ms - e.timestamp_ms == 200 for e in history)


def test_both_spellings_give_the_same_policy() -> None:
    assert ap_flaky_sync.policy == ActivityPolicy(retry=RetryPolicy(max_attempts=3, backoff=0.02), timeout=60.0)
    assert ap_flaky.policy == ActivityPolicy(retry=RetryPolicy(max_attempts=3, backoff=timedelta(milliseconds=20)),
                                             timeout=60.0)
    assert ap_flaky_text.policy == ActivityPolicy(retry=RetryPolicy(max_attempts=2, backoff=0.0))
    assert ap_gate.policy == ActivityPolicy(heartbeat_timeout=40.0)


def test_with_options_overrides_only_what_it_is_given() -> None:
    call = ap_flaky.with_options(timeout=timedelta(seconds=5))
    assert isinstance(call, ActivityWithOptions) and call.activity is ap_flaky
    assert call.policy == ActivityPolicy(retry=ap_flaky.policy.retry, timeout=5.0)
    assert ap_flaky.with_options(retry=RetryPolicy(max_attempts=9)).policy.retry == RetryPolicy(max_attempts=9)
    assert ap_flaky.with_options(retry=4).policy.retry == RetryPolicy(max_attempts=4,
                                                                      backoff=timedelta(milliseconds=20))
    assert ap_gate.with_options(retry=2).policy == ActivityPolicy(retry=RetryPolicy(max_attempts=2),
                                                                  heartbeat_timeout=40.0)
    assert ap_gate.with_options(heartbeat_timeout=3).policy == ActivityPolicy(heartbeat_timeout=3.0)
    assert ap_flaky.policy.timeout == 60.0  # the activity itself is unchanged


@pytest.mark.parametrize("options, needles", [
    (dict(timeout=timedelta(seconds=5), timeout_ms=5000), ["both timeout and timeout_ms", "pass only one"]),
    (dict(retry=RetryPolicy(max_attempts=3), backoff_ms=1000), ["both retry=RetryPolicy(...) and backoff_ms",
                                                               "retry=3, backoff_ms=1000"]),
    (dict(backoff_ms=1000), ["without retry", "add retry=N"]),
    (dict(retry=0), ["retry=0 allows no attempt", "retry=1"]),
    (dict(retry=2.5), ["retry must be a RetryPolicy or a number of attempts, got float", "retry=3"]),
    (dict(retry=True), ["got bool", "retry=3"]),
    (dict(timeout=0), ["timeout must be from 1 ms to 100 years", "timeout=timedelta"]),
    (dict(timeout_ms=-5), ["timeout_ms must be from 1 ms", "timeout_ms="]),
    (dict(timeout_ms="5000"), ["timeout_ms must be a number of milliseconds", "timeout_ms=1000"]),
    (dict(timeout=float("nan")), ["timeout must be from 1 ms", "timeout="]),
    (dict(heartbeat_timeout="30s"), ["heartbeat_timeout must be a timedelta or a number of seconds", "fix" ]),
    (dict(retry=3, backoff_ms=-1), ["backoff_ms must be from 0", "backoff_ms=1000"]),
])
def test_bad_policies_fail_at_decoration_naming_the_fix(options: dict[str, object], needles: list[str]) -> None:
    from duroxide_macros import discovered_activities

    with pytest.raises(ConfigurationError) as caught:
        @activity(typed=True, **options)  # type: ignore[arg-type]  # wrong on purpose
        async def ap_never_registered(x: int) -> int:
            return x
    text = str(caught.value).replace("Fix:", "fix")
    assert "activity 'ap_never_registered'" in text
    for needle in needles:
        assert needle in text
    assert "ap_never_registered" not in discovered_activities().names()  # nothing half-registered


@pytest.mark.parametrize("options, needle", [
    (dict(retry=0), "retry=0 allows no attempt"),
    (dict(timeout=-1.0), "timeout must be from 1 ms"),
    (dict(heartbeat_timeout=timedelta(microseconds=10)), "heartbeat_timeout must be from 1 ms"),
])
def test_bad_per_call_options_fail_before_anything_is_scheduled(options: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        ap_flaky.with_options(**options)  # type: ignore[arg-type]  # wrong on purpose


def test_an_orchestration_takes_no_call_options() -> None:
    # What `durable(sub(x), timeout=...)` runs into when the hook cannot tell `sub` is an orchestration.
    with pytest.raises(ConfigurationError, match=r"timeout= given for orchestration 'ap_flow', but retry, timeout "
                                                 r"and heartbeat_timeout are for activity calls only.*@activity"):
        ap_flow.with_options(timeout=5)
