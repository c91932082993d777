"""Order processing: typed payloads (dataclasses), several activities, typed start/wait.

Run:  python examples/order_processing.py
"""

import duroxide_macros.install  # noqa: F401

import asyncio
from dataclasses import dataclass

from duroxide_macros.prelude import *


@dataclass
class Order:
    id: str
    customer_email: str
    total: float
    state: str


@dataclass
class Receipt:
    order_id: str
    transaction_id: str
    total: float


@activity(typed=True)
async def validate_inventory(order: Order) -> bool:
    durable_trace_info("Checking inventory for order: {}", order.id)
    await asyncio.sleep(0.01)
    return True


@activity(typed=True)
async def charge_payment(order: Order, amount: float) -> str:
    durable_trace_info("Charging ${:.2f} for order: {}", amount, order.id)
    if amount > 10000.0:
        raise ValueError("Amount exceeds limit")
    return f"TXN-{order.id}"


@activity(typed=True)
async def send_email(email: str, subject: str, body: str) -> None:
    durable_trace_info("Sending email to {}: {}", email, subject)


@orchestration
async def process_order(ctx: OrchestrationContext, order: Order) -> Receipt:
    durable_trace_info("Processing order: {}", order.id)
    if not await durable(validate_inventory(order)):
        raise RuntimeError("Out of stock")
    total = round(order.total * (1 + 0.0725), 2)
    transaction_id = await durable(charge_payment(order, total))
    body = f"Your order {order.id} has been processed! Total: ${total:.2f}"
    await durable(send_email(order.customer_email, "Order Confirmation", body))
    return Receipt(order.id, transaction_id, total)


@duroxide_main
async def main() -> None:
    order = Order(id="ORD-12345", customer_email="customer@example.com", total=100.0, state="CA")
    await process_order.start("order-1", order)
    match await process_order.wait("order-1", timedelta(seconds=30)):
        case OrchestrationStatus.Completed(output=receipt):
            print(f"SUCCESS: {receipt.order_id} {receipt.transaction_id} {receipt.total:.2f}")
        case OrchestrationStatus.Failed(error=error):
            print(f"FAILED: {error}")
        case other:
            print(f"unexpected: {other}")


if __name__ == "__main__":
    main()
