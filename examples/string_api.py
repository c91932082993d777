"""Hello world with the string API of duroxide_runtime (no macros, no import hook).

Run:  python examples/string_api.py
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from datetime import timedelta
from pathlib import Path

from duroxide_runtime import (
    ActivityRegistry,
    Client,
    OrchestrationContext,
    OrchestrationRegistry,
    OrchestrationStatus,
    Runtime,
    SqliteProvider,
)


async def greet(name: str) -> str:
    """An activity: the place for side effects. Input and output are strings."""
    return f"Hello, {name}!"


async def hello_world(ctx: OrchestrationContext, name: str) -> str:
    """An orchestration: deterministic code that coordinates activities."""
    ctx.trace("INFO", f"greeting {name}")
    greeting = await ctx.schedule_activity("Greet", name)
    await asyncio.sleep(0.1)  # a durable timer: survives a restart
    shout = await ctx.schedule_activity("Greet", greeting.upper())
    return json.dumps({"greeting": greeting, "shout": shout})


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = await SqliteProvider.new(f"sqlite://{Path(tmp) / 'hello.db'}")
        rt = await (Runtime.builder()
                    .store(store)
                    .activities(ActivityRegistry.builder().register("Greet", greet).build())
                    .orchestrations(OrchestrationRegistry.builder().register("HelloWorld", hello_world).build())
                    .start())
        client = Client(store)
        await client.start_orchestration("hello-1", "HelloWorld", "World")
        match await client.wait_for_orchestration("hello-1", timedelta(seconds=10)):
            case OrchestrationStatus.Completed(output=output):
                print("Completed:", json.loads(output)["greeting"])
            case other:
                raise SystemExit(f"unexpected status: {other}")
        await rt.shutdown()
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
