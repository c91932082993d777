"""Hello world: one typed activity, one orchestration, the zero-ceremony main.

Run:  python examples/hello_world.py
"""

import duroxide_macros.install  # noqa: F401 - first line: rewrites durable(...) in this file

from duroxide_macros.prelude import *


@activity(typed=True)
async def greet(name: str) -> str:
    return f"Hello, {name}!"


@orchestration
async def hello_world(ctx: OrchestrationContext, name: str) -> str:
    durable_trace_info("Greeting: {}", name)
    return await durable(greet(name))


@duroxide_main  # SQLite in a temp dir, discovery, runtime and client
async def main() -> None:
    result = await hello_world.run("inst-1", "World", timeout=10)
    print(f"Result: {result}")


if __name__ == "__main__":
    main()
