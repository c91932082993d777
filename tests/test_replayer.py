"""The replayer checks new code against recorded histories, without a store."""

from __future__ import annotations

from pathlib import Path

import pytest

from duroxide_runtime import NonDeterminismError, OrchestrationContext
from duroxide_runtime.replayer import history_from_json, history_to_json, replay_history

from .support import Harness


async def double(x: str) -> str:
    return x * 2


async def v1(ctx: OrchestrationContext, data: str) -> str:
    a = await ctx.schedule_activity("Double", data)
    b = await ctx.schedule_activity("Double", a)
    return b


async def v1_renamed_call(ctx: OrchestrationContext, data: str) -> str:
    a = await ctx.schedule_activity("Triple", data)
    return a


async def v1_returns_early(ctx: OrchestrationContext, data: str) -> str:
    return await ctx.schedule_activity("Double", data)


async def test_replayer_accepts_same_code_and_rejects_changed_code(harness: Harness, tmp_path: Path) -> None:
    await harness.start({"V1": v1}, {"Double": double})
    await harness.run("r1", "V1", "ab")
    events = await harness.client.read_history("r1")
    file = tmp_path / "r1.json"
    file.write_bytes(history_to_json(events))
    assert history_from_json(file.read_bytes()) == events

    replay_history(v1, file)  # same code: no error
    with pytest.raises(NonDeterminismError) as err:
        replay_history(v1_renamed_call, events)
    assert "'Double'" in str(err.value) and "'Triple'" in str(err.value)
    replay_history(v1_returns_early, events)  # ending earlier than history is allowed (SEMANTICS 4)
    with pytest.raises(NonDeterminismError, match="ends Completed .* now ends Failed"):
        replay_history(fails_after_first, events)


async def fails_after_first(ctx: OrchestrationContext, data: str) -> str:
    await ctx.schedule_activity("Double", data)
    raise ValueError("new bug")
