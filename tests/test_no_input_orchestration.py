"""A no-input orchestration (``async def f(ctx) -> O``) at run time, through every entry point.

Its helpers take no input - ``durable(f())``, ``f.call(ctx)``, ``f.start(client, id)``,
``f.run(client, id, timeout)`` - which is also what the type checkers accept
(tests/fixtures/typing); a ``None`` in the input's place is accepted too. An
orchestration that has an input still requires it. This module is rewritten by
the pytest plugin's import hook. Names start with ``ni_`` (discovery is global).
"""

from __future__ import annotations

import pytest

from duroxide_macros.prelude import Client, Event, OrchestrationContext, OrchestrationStatus, durable, orchestration


@orchestration
async def ni_answer(ctx: OrchestrationContext) -> int:
    return 42


@orchestration
async def ni_parent(ctx: OrchestrationContext) -> int:
    by_form = await durable(ni_answer())
    explicit = await ni_answer.call(ctx)
    return by_form + explicit


@orchestration
async def ni_counter(ctx: OrchestrationContext) -> int:
    if ctx.execution_id < 3:
        ni_counter.continue_as_new(ctx)
    return ctx.execution_id


@orchestration
async def ni_takes(ctx: OrchestrationContext, n: int) -> int:
    return n


async def test_run_start_wait_without_an_input(duroxide_runtime: object, duroxide_client: Client) -> None:
    assert await ni_answer.run(duroxide_client, "ni-1", timeout=10) == 42
    assert await ni_answer.run(duroxide_client, "ni-2", 10) == 42  # the timeout, positionally
    await ni_answer.start(duroxide_client, "ni-3")
    assert await ni_answer.wait(duroxide_client, "ni-3", 10) == OrchestrationStatus.Completed(output=42)
    history = await ni_answer.history(duroxide_client, "ni-3")
    started = [e for e in history if isinstance(e, Event.OrchestrationStarted)]
    assert [e.input for e in started] == ["null"]


async def test_none_in_the_inputs_place_is_accepted(duroxide_runtime: object, duroxide_client: Client) -> None:
    assert await ni_answer.run(duroxide_client, "ni-4", None, timeout=10) == 42
    await ni_answer.start(duroxide_client, "ni-5", None)
    assert await ni_answer.wait(duroxide_client, "ni-5", 10) == OrchestrationStatus.Completed(output=42)


async def test_sub_orchestration_and_continue_as_new_without_an_input(duroxide_runtime: object,
                                                                      duroxide_client: Client) -> None:
    assert await ni_parent.run(duroxide_client, "ni-6", timeout=10) == 84
    assert await ni_counter.run(duroxide_client, "ni-7", timeout=10) == 3


async def test_an_input_is_refused_by_a_no_input_orchestration_and_required_by_the_others(
        duroxide_runtime: object, duroxide_client: Client) -> None:
    with pytest.raises(TypeError, match="takes no input"):
        await ni_answer.start(duroxide_client, "ni-8", "an input")  # type: ignore[call-overload]  # checkers refuse it too
    with pytest.raises(TypeError, match="missing input"):
        await ni_takes.run(duroxide_client, "ni-9", timeout=10)  # type: ignore[call-overload]  # checkers refuse it too
    assert not await ni_answer.exists(duroxide_client, "ni-8")
    assert not await ni_takes.exists(duroxide_client, "ni-9")
