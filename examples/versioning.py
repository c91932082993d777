"""Versioning: v1 and v2 of one orchestration coexist; running instances keep their version.

Run:  python examples/versioning.py
"""

import duroxide_macros.install  # noqa: F401

from duroxide_macros.prelude import *


@activity(typed=True)
async def price(item: str) -> float:
    return {"book": 12.0, "pen": 2.5}.get(item, 1.0)


@orchestration(name="checkout", version="1.0.0")
async def checkout_v1(ctx: OrchestrationContext, item: str) -> str:
    await ctx.schedule_wait("go")  # keeps v1 instances running while v2 is registered
    amount = await durable(price(item))
    return f"v1 charged {amount:.2f}"


@orchestration(name="checkout", version="2.0.0")
async def checkout_v2(ctx: OrchestrationContext, item: str) -> str:
    await ctx.schedule_wait("go")
    amount = await durable(price(item))
    return f"v2 charged {amount * 1.1:.2f} (with fee)"


@duroxide_main
async def main() -> None:
    c = client  # the ambient client of duroxide_main
    # New instances get the latest version by default...
    await checkout_v2.start(c, "latest", "book")
    # ...or an exact one.
    await c.start_orchestration("pinned", "checkout", '"book"', version="1.0.0")
    for instance in ("latest", "pinned"):
        await c.raise_event(instance, "go", "")
        info = await c.get_instance_info(instance)
        match await checkout_v2.wait(c, instance, 10):
            case OrchestrationStatus.Completed(output=output):
                print(f"{instance}: version {info.version}: {output}")
            case other:
                print(f"{instance}: version {info.version}: {other}")


if __name__ == "__main__":
    main()
