"""E-commerce: a payment with a durable timeout (select2) and compensation on failure or timeout.

Run:  python examples/ecommerce.py
Three orders: one pays, one is refused by the payment provider, one times out.
"""

import duroxide_macros.install  # noqa: F401

import asyncio
from dataclasses import dataclass

from duroxide_macros.prelude import *


@dataclass
class LineItem:
    sku: str
    quantity: int
    price: float


@dataclass
class Order:
    id: str
    customer_id: str
    items: list[LineItem]
    subtotal: float
    state: str


@dataclass
class Receipt:
    order_id: str
    transaction_id: str
    tracking_number: str
    total: float


RELEASED: list[str] = []  # what compensation did, for the printout


@activity(typed=True)
async def reserve_inventory(order: Order) -> str:
    return f"RESERVATION-{order.id}"


@activity(typed=True)
async def charge_payment(order_id: str, amount: float) -> str:
    if order_id.endswith("slow"):
        await asyncio.sleep(3600)  # the payment provider hangs; the timeout cancels this call
    if amount > 10000.0:
        raise ValueError(f"Amount ${amount:.2f} exceeds limit")
    return f"TXN-{order_id}"


@activity(typed=True)
async def release_inventory(reservation_id: str) -> None:
    RELEASED.append(reservation_id)


@activity(typed=True)
async def create_shipment(order: Order) -> str:
    return f"TRACK-{order.id}"


TAX = {"CA": 0.0725, "NY": 0.08875, "TX": 0.0625}


@orchestration(version="1.0.0")
async def process_order(ctx: OrchestrationContext, order: Order) -> Receipt:
    reservation = await durable(reserve_inventory(order))
    total = round(order.subtotal * (1 + TAX.get(order.state, 0.05)), 2)
    payment = durable(charge_payment(order.id, total))
    timeout = ctx.schedule_timer(timedelta(seconds=5))
    winner, _ = await ctx.select2(payment, timeout)
    if winner == 1:
        durable_trace_error("Payment timeout for {}", order.id)
        await durable(release_inventory(reservation))
        raise TimeoutError("Payment timeout")
    try:
        transaction_id = await payment  # it won: its result, or ActivityFailed
    except ActivityFailed as err:
        durable_trace_error("Payment failed: {}", err.message)
        await durable(release_inventory(reservation))
        raise RuntimeError(f"Payment failed: {err.details.message}") from None
    tracking = await durable(create_shipment(order))
    return Receipt(order.id, transaction_id, tracking, total)


@duroxide_main
async def main() -> None:
    orders = {
        "ok": Order("A1", "c1", [LineItem("sku-1", 2, 25.0)], 50.0, "CA"),
        "refused": Order("A2", "c2", [LineItem("sku-2", 1, 20000.0)], 20000.0, "NY"),
        "slow": Order("A3-slow", "c3", [LineItem("sku-3", 1, 10.0)], 10.0, "TX"),
    }
    for key, order in orders.items():
        await process_order.start(f"order-{key}", order)
    for key in orders:
        match await process_order.wait(f"order-{key}", 30):
            case OrchestrationStatus.Completed(output=receipt):
                print(f"{key}: shipped {receipt.tracking_number} total {receipt.total:.2f}")
            case OrchestrationStatus.Failed(error=error):
                print(f"{key}: failed ({error})")
            case other:
                print(f"{key}: {other}")
    print("released:", ", ".join(sorted(RELEASED)))


if __name__ == "__main__":
    main()
