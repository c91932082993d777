"""The duroxide_main quick start: a complete durable workflow in about 20 lines.

Run:  python examples/quickstart.py
"""

import duroxide_macros.install  # noqa: F401

from dataclasses import dataclass

from duroxide_macros.prelude import *


@dataclass
class Order:
    id: str
    total: float


@dataclass
class Receipt:
    order_id: str
    transaction_id: str
    total: float


@activity(typed=True)
async def charge_payment(order: Order) -> str:
    return f"TXN-{order.id}"


@orchestration
async def process_order(ctx: OrchestrationContext, order: Order) -> Receipt:
    trace_info("Processing: {}", order.id)
    txn = await durable(charge_payment(order))
    return Receipt(order_id=order.id, transaction_id=txn, total=order.total)


@duroxide_main
async def main() -> None:
    receipt = await process_order.run("order-1", Order(id="ORD-123", total=99.99), timeout=30)
    print(f"Receipt: {receipt}")


if __name__ == "__main__":
    main()
