"""Human in the loop: a large order waits for a manager's approval (an external event).

Run:  python examples/approval.py
The approval is raised before the orchestration waits for it: it is kept and delivered.
``APPROVAL`` binds the event's name to its type: the wait decodes into it, and a
type checker reports data of another type passed to ``raise_event``.
"""

import duroxide_macros.install  # noqa: F401

from dataclasses import dataclass

from duroxide_macros.prelude import *


@dataclass
class Order:
    id: str
    total: float


@dataclass
class Approval:
    approved: bool
    manager: str


APPROVAL = TypedEvent("approval", Approval)


@activity(typed=True)
async def fulfil(order: Order) -> str:
    return f"FULFILLED-{order.id}"


@orchestration
async def process_large_order(ctx: OrchestrationContext, order: Order) -> str:
    if order.total > 10000.0:
        ctx.set_custom_status("waiting for approval")
        decision = await ctx.wait_for_event(APPROVAL)
        durable_trace_info("Received approval from {}: {}", decision.manager, decision.approved)
        if not decision.approved:
            return f"REJECTED by {decision.manager}"
        ctx.set_custom_status(f"approved by {decision.manager}")
    return await durable(fulfil(order))


@duroxide_main
async def main() -> None:
    await process_large_order.start("order-big", Order("B1", 25000.0))
    await process_large_order.start("order-small", Order("S1", 50.0))
    # Raised at once, maybe before the orchestration waits for it: it is kept until then.
    await process_large_order.raise_event("order-big", APPROVAL, Approval(True, "Alice"))
    match await process_large_order.wait("order-big", 10):
        case OrchestrationStatus.Completed(output=out, custom_status=custom):
            print(f"big: {out} ({custom})")
        case other:
            print(f"big: {other}")
    info = await process_large_order.metadata("order-big")
    print("status:", info.status)
    print("small:", await process_large_order.run("order-small-again", Order("S2", 10.0), timeout=10))


if __name__ == "__main__":
    main()
