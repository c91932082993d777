"""The seed's examples, written in the Python form and run on real runtimes and stores.

Function names follow the seed; the names they are *registered* under carry a
``seed.`` prefix (``@activity(typed=True, name="seed.greet")``), because
discovery is global per process and other test modules may declare a ``greet``
too. Where two seed examples use one name with different signatures, the
e-commerce one is prefixed ``ecom_``. Sleeps of the seed are shortened.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from pydantic import TypeAdapter

from duroxide_macros.prelude import (
    ActivityFailed,
    Client,
    Event,
    InMemoryProvider,
    OrchestrationContext,
    OrchestrationFailedError,
    OrchestrationRegistry,
    OrchestrationStatus,
    Provider,
    Runtime,
    RuntimeOptions,
    SqliteProvider,
    activity,
    durable,
    durable_trace_debug,
    durable_trace_error,
    durable_trace_info,
    duroxide_main,
    orchestration,
    trace_info,
)
from duroxide_runtime.history import HistoryEvent

pytestmark = pytest.mark.timeout(60)

FAST: dict[str, Any] = dict(poll_interval=0.05, unknown_name_backoff=0.01, unknown_name_max_backoff=0.05)


@asynccontextmanager
async def running(store: Provider, *, replay_from_scratch: bool = False) -> AsyncIterator[Runtime]:
    rt = await (Runtime.builder().store(store).discover_activities().discover_orchestrations()
                .options(RuntimeOptions(replay_from_scratch=replay_from_scratch, **FAST)).start())
    try:
        yield rt
    finally:
        await rt.shutdown(grace=2)


async def until_history_has(client: Client, instance_id: str, kind: type, timeout: float = 15.0) -> list[Any]:
    """Poll the history until an event of ``kind`` is recorded (robust on a loaded machine)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = of_kind(await client.read_history(instance_id), kind)
        if found or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.02)


def names_of(history: list[HistoryEvent], kind: type) -> list[str]:
    return [getattr(e, "name") for e in history if isinstance(e, kind)]


def of_kind(history: list[HistoryEvent], kind: type) -> list[Any]:
    return [e for e in history if isinstance(e, kind)]


# =============================================================================================
# Hello world (Progressive Features: Basic Usage)
# =============================================================================================


@activity(typed=True, name="seed.greet")
async def greet(name: str) -> str:
    return f"Hello, {name}!"


@orchestration(name="seed.hello_world")
async def hello_world(ctx: OrchestrationContext, name: str) -> str:
    durable_trace_info("Greeting: {}", name)
    greeting = await durable(greet(name))
    trace_info("Greeted", greeting=greeting)
    return greeting


@pytest.mark.parametrize("from_scratch", [False, True], ids=["cached", "from_scratch"])
async def test_hello_world(from_scratch: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="duroxide")
    store = InMemoryProvider()
    async with running(store, replay_from_scratch=from_scratch) as rt:
        client = rt.client()
        assert await hello_world.run(client, "hello-1", "World", timeout=15) == "Hello, World!"
        history = await hello_world.history(client, "hello-1")
    assert [type(e).__name__ for e in history] == ["OrchestrationStarted", "ActivityScheduled",
                                                    "ActivityCompleted", "OrchestrationCompleted"]
    started, scheduled, completed, done = history
    assert isinstance(started, Event.OrchestrationStarted) and isinstance(scheduled, Event.ActivityScheduled)
    assert isinstance(completed, Event.ActivityCompleted) and isinstance(done, Event.OrchestrationCompleted)
    assert started.name == "seed.hello_world" and started.version == "1.0.0"
    assert (scheduled.name, scheduled.input) == ("seed.greet", '"World"')
    assert completed.result == '"Hello, World!"' and done.output == '"Hello, World!"'
    # Trace forms log once, never again on replay, with the instance fields attached.
    greetings = [r for r in caplog.records if r.getMessage() == "Greeting: World"]
    assert len(greetings) == 1, [r.getMessage() for r in caplog.records]
    assert getattr(greetings[0], "instance_id", None) == "hello-1"
    assert getattr(greetings[0], "orchestration", None) == "seed.hello_world"
    greeted = [r for r in caplog.records if r.getMessage() == "Greeted"]
    assert len(greeted) == 1 and getattr(greeted[0], "greeting", None) == "Hello, World!"


# =============================================================================================
# Order processing (the "Complete Example")
# =============================================================================================


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


SENT_EMAILS: list[tuple[str, str, str]] = []


@activity(typed=True, name="seed.validate_inventory")
async def validate_inventory(order: Order) -> bool:
    trace_info("Checking inventory for order: {}", order.id)
    await asyncio.sleep(0.01)
    return order.state != "OUT-OF-STOCK"


@activity(typed=True, name="seed.charge_payment")
async def charge_payment(order: Order, amount: float) -> str:
    trace_info("Charging ${:.2f} for order: {}", amount, order.id)
    await asyncio.sleep(0.01)
    if amount > 10000.0:
        raise ValueError("Amount exceeds limit")
    return f"TXN-{uuid4()}"


@activity(typed=True, name="seed.send_email")
async def send_email(email: str, subject: str, body: str) -> None:
    trace_info("Sending email to {}: {}", email, subject)
    SENT_EMAILS.append((email, subject, body))


@orchestration(name="seed.process_order")
async def process_order(ctx: OrchestrationContext, order: Order) -> Receipt:
    trace_info("Processing order: {}", order.id)
    inventory_ok = await durable(validate_inventory(order))
    if not inventory_ok:
        durable_trace_error("Insufficient inventory")
        raise RuntimeError("Out of stock")
    trace_info("Inventory validated")

    tax_rate = 0.0725
    total = order.total * (1.0 + tax_rate)
    trace_info("Total with tax: ${:.2f}", total)

    transaction_id = await durable(charge_payment(order, total))
    trace_info("Payment successful: {}", transaction_id)

    email_body = (f"Your order {order.id} has been processed!\nTotal: ${total:.2f}\n"
                  f"Transaction: {transaction_id}")
    try:  # fire-and-forget: `let _ = durable!(send_email(...)).await;`
        await durable(send_email(order.customer_email, "Order Confirmation", email_body))
    except ActivityFailed:
        pass
    trace_info("Order processing complete")
    return Receipt(order.id, transaction_id, total)


async def test_order_processing(duroxide_runtime: Runtime, duroxide_client: Client) -> None:
    client = duroxide_client
    SENT_EMAILS.clear()
    order = Order("ORD-12345", "customer@example.com", 100.0, "CA")
    await process_order.start(client, "order-1", order)
    match await process_order.wait(client, "order-1", timedelta(seconds=30)):
        case OrchestrationStatus.Completed(output=output):
            receipt = output
        case OrchestrationStatus.Failed(error=error):
            pytest.fail(f"FAILED: {error}")
        case other:
            pytest.fail(f"unexpected {other}")
    assert isinstance(receipt, Receipt)
    assert receipt.order_id == "ORD-12345" and receipt.total == pytest.approx(107.25)
    assert receipt.transaction_id.startswith("TXN-")
    history = await process_order.history(client, "order-1")
    assert names_of(history, Event.ActivityScheduled) == ["seed.validate_inventory", "seed.charge_payment",
                                                          "seed.send_email"]
    charge = of_kind(history, Event.ActivityScheduled)[1]
    assert json.loads(charge.input) == [{"id": "ORD-12345", "customer_email": "customer@example.com",
                                         "total": 100.0, "state": "CA"}, pytest.approx(107.25)]
    email = json.loads(of_kind(history, Event.ActivityScheduled)[2].input)
    assert email[:2] == ["customer@example.com", "Order Confirmation"]
    assert f"Transaction: {receipt.transaction_id}" in email[2] and "Total: $107.25" in email[2]
    assert SENT_EMAILS == [tuple(email)]
    assert of_kind(history, Event.ActivityCompleted)[2].result == "null"  # send_email returns None


async def test_order_processing_failures(duroxide_runtime: Runtime, duroxide_client: Client) -> None:
    client = duroxide_client
    # The charge fails: the ActivityFailed propagates (the seed's `?`) and the order ends Failed.
    with pytest.raises(OrchestrationFailedError, match="Amount exceeds limit") as info:
        await process_order.run(client, "order-big", Order("ORD-9", "c@x", 20000.0, "CA"), timeout=15)
    assert info.value.details is not None and "ValueError" in info.value.error
    history = await process_order.history(client, "order-big")
    assert names_of(history, Event.ActivityScheduled) == ["seed.validate_inventory", "seed.charge_payment"]
    failed = of_kind(history, Event.ActivityFailed)
    assert len(failed) == 1 and failed[0].details.error_type == "ValueError"
    assert isinstance(history[-1], Event.OrchestrationFailed)

    with pytest.raises(OrchestrationFailedError, match="Out of stock"):
        await process_order.run(client, "order-oos", Order("ORD-0", "c@x", 5.0, "OUT-OF-STOCK"), timeout=15)
    assert names_of(await process_order.history(client, "order-oos"), Event.ActivityScheduled) == [
        "seed.validate_inventory"]


# =============================================================================================
# E-commerce order processing (select2 payment vs timer, compensation)
# =============================================================================================


@dataclass
class LineItem:
    sku: str
    quantity: int
    price: float


@dataclass
class EcomOrder:
    id: str
    customer_id: str
    items: list[LineItem]
    subtotal: float
    state: str


@dataclass
class EcomReceipt:
    order_id: str
    transaction_id: str
    tracking_number: str
    total: float


#: The seed's 30 s payment timeout and the payment provider's latency (tests shorten / lengthen them).
PAYMENT_TIMEOUT_S = 30.0
PAYMENT_DELAY_S = 0.01
RELEASED: list[str] = []


@activity(typed=True, name="seed.ecom.validate_inventory")
async def ecom_validate_inventory(order: EcomOrder) -> bool:
    trace_info("Validating inventory for order: {}", order.id)
    for item in order.items:
        durable_trace_debug("Checking SKU {}: qty {}", item.sku, item.quantity)
    return True


@activity(typed=True, name="seed.ecom.reserve_inventory")
async def reserve_inventory(order: EcomOrder) -> str:
    return f"RESERVATION-{order.id}"


@activity(typed=True, name="seed.ecom.charge_payment")
async def ecom_charge_payment(order_id: str, amount: float) -> str:
    trace_info("Charging ${:.2f} for order: {}", amount, order_id)
    await asyncio.sleep(PAYMENT_DELAY_S)
    if amount > 10000.0:
        raise ValueError("Amount exceeds limit")
    return f"TXN-{uuid4()}"


@activity(typed=True, name="seed.ecom.create_shipment")
async def create_shipment(order: EcomOrder) -> str:
    return f"TRACK-{order.id}"


@activity(typed=True, name="seed.ecom.send_confirmation_email")
async def send_confirmation_email(customer_id: str, order_id: str, receipt_text: str) -> None:
    trace_info("Sending confirmation to customer: {}", customer_id)


@activity(typed=True, name="seed.ecom.release_inventory")
async def release_inventory(reservation_id: str) -> None:
    trace_info("Releasing inventory: {}", reservation_id)
    RELEASED.append(reservation_id)


TAX_RATES = {"CA": 0.0725, "NY": 0.08875, "TX": 0.0625}


@orchestration(name="seed.ecom.process_order", version="1.0.0")
async def ecom_process_order(ctx: OrchestrationContext, order: EcomOrder) -> EcomReceipt:
    durable_trace_info("Starting order processing: {}", order.id)
    durable_trace_debug("Order details: {} items, subtotal ${:.2f}", len(order.items), order.subtotal)

    inventory_ok = await durable(ecom_validate_inventory(order))
    if not inventory_ok:
        durable_trace_error("Insufficient inventory for order: {}", order.id)
        raise RuntimeError("Insufficient inventory")

    reservation_id = await durable(reserve_inventory(order))

    tax = order.subtotal * TAX_RATES.get(order.state, 0.05)
    total = order.subtotal + tax

    payment_future = durable(ecom_charge_payment(order.id, total))
    timeout_future = ctx.schedule_timer(timedelta(seconds=PAYMENT_TIMEOUT_S))
    match await ctx.select2(payment_future, timeout_future):
        case (0, result):
            try:
                transaction_id = result.result()
                durable_trace_info("Payment successful: {}", transaction_id)
            except ActivityFailed as e:
                durable_trace_error("Payment failed: {}", e)
                await durable(release_inventory(reservation_id))  # compensate
                raise RuntimeError(f"Payment failed: {e.details.message}") from None
        case _:
            durable_trace_error("Payment timeout after {} seconds", PAYMENT_TIMEOUT_S)
            await durable(release_inventory(reservation_id))  # compensate
            raise TimeoutError("Payment timeout")

    tracking_number = await durable(create_shipment(order))
    email_body = (f"Your order {order.id} has been processed!\nTotal: ${total:.2f}\n"
                  f"Transaction: {transaction_id}\nTracking: {tracking_number}")
    try:
        await durable(send_confirmation_email(order.customer_id, order.id, email_body))
    except ActivityFailed:
        pass
    return EcomReceipt(order.id, transaction_id, tracking_number, total)


def ecom_order(subtotal: float = 109.97) -> EcomOrder:
    return EcomOrder("ORD-12345", "CUST-789", [LineItem("WIDGET-001", 2, 29.99), LineItem("GADGET-002", 1, 49.99)],
                     subtotal, "CA")


@pytest.mark.parametrize("from_scratch", [False, True], ids=["cached", "from_scratch"])
async def test_ecommerce_payment_succeeds_before_the_timeout(from_scratch: bool, tmp_path: Path) -> None:
    store = await SqliteProvider.new(f"sqlite://{tmp_path / 'ecommerce.db'}")
    try:
        async with running(store, replay_from_scratch=from_scratch) as rt:
            client = rt.client()
            await ecom_process_order.start(client, "order-12345", ecom_order())
            match await ecom_process_order.wait(client, "order-12345", timedelta(seconds=30)):
                case OrchestrationStatus.Completed(output=receipt):
                    pass
                case other:
                    pytest.fail(f"unexpected {other}")
            history = await ecom_process_order.history(client, "order-12345")
    finally:
        await store.close()
    assert isinstance(receipt, EcomReceipt)
    assert receipt.order_id == "ORD-12345" and receipt.tracking_number == "TRACK-ORD-12345"
    assert receipt.total == pytest.approx(117.94, abs=0.005)
    assert receipt.transaction_id.startswith("TXN-")
    assert names_of(history, Event.ActivityScheduled) == [
        "seed.ecom.validate_inventory", "seed.ecom.reserve_inventory", "seed.ecom.charge_payment",
        "seed.ecom.create_shipment", "seed.ecom.send_confirmation_email"]
    assert len(of_kind(history, Event.TimerCreated)) == 1 and of_kind(history, Event.TimerFired) == []
    assert "seed.ecom.release_inventory" not in names_of(history, Event.ActivityScheduled)


@pytest.mark.parametrize("from_scratch", [False, True], ids=["cached", "from_scratch"])
async def test_ecommerce_payment_failure_releases_inventory(from_scratch: bool, tmp_path: Path) -> None:
    RELEASED.clear()
    store = await SqliteProvider.new(f"sqlite://{tmp_path / 'ecommerce.db'}")
    try:
        async with running(store, replay_from_scratch=from_scratch) as rt:
            client = rt.client()
            with pytest.raises(OrchestrationFailedError) as info:
                await ecom_process_order.run(client, "order-fail", ecom_order(20000.0), timeout=30)
            history = await ecom_process_order.history(client, "order-fail")
    finally:
        await store.close()
    assert "Payment failed: Amount exceeds limit" in info.value.error
    assert info.value.details is not None and info.value.details.error_type == "RuntimeError"
    scheduled = of_kind(history, Event.ActivityScheduled)
    assert [e.name for e in scheduled] == ["seed.ecom.validate_inventory", "seed.ecom.reserve_inventory",
                                           "seed.ecom.charge_payment", "seed.ecom.release_inventory"]
    assert scheduled[-1].input == '"RESERVATION-ORD-12345"'
    failed = of_kind(history, Event.ActivityFailed)
    assert len(failed) == 1 and failed[0].details.message == "Amount exceeds limit"
    # compensation ran after the failure, and no shipment was made
    assert history.index(failed[0]) < history.index(scheduled[-1])
    assert RELEASED == ["RESERVATION-ORD-12345"]
    assert isinstance(history[-1], Event.OrchestrationFailed)


@pytest.mark.parametrize("from_scratch", [False, True], ids=["cached", "from_scratch"])
async def test_ecommerce_payment_timeout_releases_inventory(from_scratch: bool, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    RELEASED.clear()
    monkeypatch.setattr(sys.modules[__name__], "PAYMENT_TIMEOUT_S", 0.4)
    monkeypatch.setattr(sys.modules[__name__], "PAYMENT_DELAY_S", 3600.0)  # hangs until select2 cancels it
    store = await SqliteProvider.new(f"sqlite://{tmp_path / 'ecommerce.db'}")
    try:
        async with running(store, replay_from_scratch=from_scratch) as rt:
            client = rt.client()
            await ecom_process_order.start(client, "order-slow", ecom_order())
            status = await ecom_process_order.wait(client, "order-slow", 20)
            history = await ecom_process_order.history(client, "order-slow")
    finally:
        await store.close()
    match status:
        case OrchestrationStatus.Failed(error=error, details=details):
            assert "Payment timeout" in error and details is not None and details.error_type == "TimeoutError"
        case other:
            pytest.fail(f"unexpected {other}")
    scheduled = of_kind(history, Event.ActivityScheduled)
    assert [e.name for e in scheduled] == ["seed.ecom.validate_inventory", "seed.ecom.reserve_inventory",
                                           "seed.ecom.charge_payment", "seed.ecom.release_inventory"]
    fired = of_kind(history, Event.TimerFired)
    assert len(fired) == 1 and history.index(fired[0]) < history.index(scheduled[-1])
    # the payment never completed (the loser of select2 is cancelled)
    charge_id = scheduled[2].event_id
    assert not [e for e in of_kind(history, Event.ActivityCompleted) if e.source_event_id == charge_id]
    assert RELEASED == ["RESERVATION-ORD-12345"]


# =============================================================================================
# Human in the loop (::raise_event)
# =============================================================================================


@dataclass
class ApprovalResponse:
    approved: bool
    manager: str


@orchestration(name="seed.process_large_order")
async def process_large_order(ctx: OrchestrationContext, order: Order) -> str:
    if order.total > 10000.0:
        ctx.set_custom_status("awaiting approval")
        approval_json = await ctx.schedule_wait("approval")
        durable_trace_info("Received approval: {}", approval_json)
        approval = TypeAdapter(ApprovalResponse).validate_json(approval_json)
        if not approval.approved:
            raise PermissionError(f"rejected by {approval.manager}")
        ctx.set_custom_status(f"approved by {approval.manager}")
    await durable(send_email(order.customer_email, "Order accepted", f"Order {order.id} accepted"))
    return f"{order.id} processed"


async def test_human_in_the_loop_approval(duroxide_runtime: Runtime, duroxide_client: Client) -> None:
    client = duroxide_client
    big = Order("ORD-BIG", "big@example.com", 25000.0, "NY")
    await process_large_order.start(client, "order-big", big)
    assert await until_history_has(client, "order-big", Event.EventSubscribed)
    status = await process_large_order.wait(client, "order-big", 0.2)
    assert isinstance(status, OrchestrationStatus.Running)
    assert status.custom_status == "awaiting approval"
    history = await process_large_order.history(client, "order-big")
    assert [e.name for e in of_kind(history, Event.EventSubscribed)] == ["approval"]
    assert of_kind(history, Event.ActivityScheduled) == []  # nothing happens before the approval

    assert await process_large_order.raise_event(client, "order-big", "approval",
                                                 ApprovalResponse(approved=True, manager="Alice")) is True
    match await process_large_order.wait(client, "order-big", 15):
        case OrchestrationStatus.Completed(output=out, custom_status=custom):
            assert out == "ORD-BIG processed" and custom == "approved by Alice"
        case other:
            pytest.fail(f"unexpected {other}")
    history = await process_large_order.history(client, "order-big")
    raised = of_kind(history, Event.EventRaised)
    assert len(raised) == 1 and json.loads(raised[0].data) == {"approved": True, "manager": "Alice"}
    assert names_of(history, Event.ActivityScheduled) == ["seed.send_email"]

    # a small order does not wait; a rejected one fails
    assert await process_large_order.run(client, "order-small", Order("ORD-S", "s@x", 10.0, "NY"),
                                         timeout=15) == "ORD-S processed"
    await process_large_order.start(client, "order-rejected", big)
    await process_large_order.raise_event(client, "order-rejected", "approval", ApprovalResponse(False, "Bob"))
    match await process_large_order.wait(client, "order-rejected", 15):
        case OrchestrationStatus.Failed(error=error):
            assert "rejected by Bob" in error
        case other:
            pytest.fail(f"unexpected {other}")


# =============================================================================================
# Versioning: v1 and v2 of one orchestration
# =============================================================================================


@orchestration(name="seed.versioned_order", version="1.0.0")
async def process_order_v1(ctx: OrchestrationContext, order: Order) -> str:
    payment = await durable(charge_payment(order, order.total))
    return payment


@orchestration(name="seed.versioned_order", version="2.0.0")
async def process_order_v2(ctx: OrchestrationContext, order: Order) -> Receipt:
    validation = await durable(validate_inventory(order))
    if not validation:
        raise RuntimeError("Inventory check failed")
    payment = await durable(charge_payment(order, order.total))
    return Receipt(order.id, payment, order.total)


async def test_versioning_v1_and_v2_coexist(tmp_path: Path) -> None:
    order = Order("ORD-V", "v@example.com", 50.0, "TX")
    store = await SqliteProvider.new(f"sqlite://{tmp_path / 'versions.db'}")
    try:
        # Deployment 1: only v1 exists, and no activity worker yet; an instance starts and
        # stops at its first activity.
        v1_only = (OrchestrationRegistry.builder()
                   .register_versioned("seed.versioned_order", "1.0.0", process_order_v1.registered_function)
                   .build())
        rt1 = await (Runtime.builder().store(store).orchestrations(v1_only)
                     .options(RuntimeOptions(**FAST)).start())
        client = rt1.client()
        await client.start_orchestration("order-old", "seed.versioned_order", process_order_v1.encode_input(order))
        assert await until_history_has(client, "order-old", Event.ActivityScheduled)
        assert (await process_order_v1.metadata(client, "order-old")).version == "1.0.0"
        await rt1.shutdown(grace=2)

        # Deployment 2: v1 and v2 (discovered) side by side.
        async with running(store) as rt2:
            client = rt2.client()
            assert rt2.orchestration_registry.versions("seed.versioned_order") == ["1.0.0", "2.0.0"]
            # the running v1 instance finishes on v1, with v1's output type (str)
            match await process_order_v1.wait(client, "order-old", 15):
                case OrchestrationStatus.Completed(output=txn):
                    assert isinstance(txn, str) and txn.startswith("TXN-")
                case other:
                    pytest.fail(f"unexpected {other}")
            old_history = await process_order_v1.history(client, "order-old")
            assert of_kind(old_history, Event.OrchestrationStarted)[0].version == "1.0.0"
            assert names_of(old_history, Event.ActivityScheduled) == ["seed.charge_payment"]
            # a new instance started by name gets the latest version
            await client.start_orchestration("order-new", "seed.versioned_order",
                                             process_order_v2.encode_input(order))
            match await process_order_v2.wait(client, "order-new", 15):
                case OrchestrationStatus.Completed(output=receipt):
                    assert isinstance(receipt, Receipt) and receipt.order_id == "ORD-V"
                case other:
                    pytest.fail(f"unexpected {other}")
            assert (await client.get_instance_info("order-new")).version == "2.0.0"
            assert names_of(await client.read_history("order-new"), Event.ActivityScheduled) == [
                "seed.validate_inventory", "seed.charge_payment"]
            # and each version's typed helpers start their own version explicitly
            assert isinstance(await process_order_v1.run(client, "order-v1-explicit", order, timeout=15), str)
            assert (await client.get_instance_info("order-v1-explicit")).version == "1.0.0"
            v2 = await process_order_v2.run(client, "order-v2-explicit", order, timeout=15)
            assert isinstance(v2, Receipt)
    finally:
        await store.close()


# =============================================================================================
# Infrastructure provisioning: library orchestrations as sub-orchestrations, VMs in parallel
# =============================================================================================


@dataclass
class NetworkConfig:
    name: str
    cidr: str
    region: str


@dataclass
class Network:
    id: str
    cidr: str


@dataclass
class Subnet:
    id: str
    cidr: str


@dataclass
class NetworkSetup:
    network: Network
    public_subnet: Subnet
    private_subnet: Subnet


@dataclass
class VmConfig:
    name: str
    instance_type: str
    region: str


@dataclass
class VmInstance:
    id: str
    ip: str
    status: str
    name: str = ""


@dataclass
class FullInfraRequest:
    environment: str
    region: str
    vm_count: int


@dataclass
class FullInfraResult:
    network: NetworkSetup
    vms: list[VmInstance]
    environment: str
    attached: list[str] = field(default_factory=list)


@activity(typed=True, name="seed.infra.create_network")
async def create_network(config: NetworkConfig) -> Network:
    trace_info("Creating network: {}", config.name)
    return Network(f"net-{uuid4()}", config.cidr)


@activity(typed=True, name="seed.infra.create_subnet")
async def create_subnet(network_id: str, cidr: str, subnet_type: str) -> Subnet:
    trace_info("Creating {} subnet: {}", subnet_type, cidr)
    await asyncio.sleep(0.05)
    return Subnet(f"subnet-{subnet_type}-{uuid4()}", cidr)


@activity(typed=True, name="seed.infra.configure_routing")
async def configure_routing(network_id: str) -> None:
    trace_info("Configuring routing for: {}", network_id)


@activity(typed=True, name="seed.infra.attach_vm_to_network")
async def attach_vm_to_network(vm_id: str, network_id: str) -> None:
    trace_info("Attaching {} to {}", vm_id, network_id)


@activity(typed=True, name="seed.infra.create_vm")
async def create_vm(config: VmConfig) -> VmInstance:
    trace_info("Creating VM: {}", config.name)
    await asyncio.sleep(0.05)
    return VmInstance(f"vm-{uuid4()}", f"10.0.1.{len(config.name)}", "pending", config.name)


@activity(typed=True, name="seed.infra.wait_for_vm_ready")
async def wait_for_vm_ready(vm_id: str) -> None:
    await asyncio.sleep(0.05)


@activity(typed=True, name="seed.infra.install_software")
def install_software(vm_id: str, packages: list[str]) -> None:  # plain def: blocking installer
    trace_info("Installing {} packages on {}", len(packages), vm_id)


@orchestration(name="seed.infra.setup_network", version="1.0.0")
async def setup_network(ctx: OrchestrationContext, config: NetworkConfig) -> NetworkSetup:
    durable_trace_info("Setting up network: {}", config.name)
    network = await durable(create_network(config))
    # Subnets in parallel (the seed's tokio::try_join!)
    public_fut = durable(create_subnet(network.id, "10.0.1.0/24", "public"))
    private_fut = durable(create_subnet(network.id, "10.0.2.0/24", "private"))
    public_result, private_result = await asyncio.gather(public_fut, private_fut)
    await durable(configure_routing(network.id))
    return NetworkSetup(network, public_result, private_result)


@orchestration(name="seed.infra.provision_vm", version="1.0.0")
async def provision_vm(ctx: OrchestrationContext, config: VmConfig) -> VmInstance:
    durable_trace_info("Provisioning VM workflow: {}", config.name)
    vm = await durable(create_vm(config))
    await durable(wait_for_vm_ready(vm.id))
    await durable(install_software(vm.id, ["nginx", "docker"]))
    vm.status = "running"
    return vm


@orchestration(name="seed.infra.provision_full_infrastructure", version="1.0.0")
async def provision_full_infrastructure(ctx: OrchestrationContext, request: FullInfraRequest) -> FullInfraResult:
    durable_trace_info("Provisioning {} infrastructure", request.environment)
    network_config = NetworkConfig(f"{request.environment}-vpc", "10.0.0.0/16", request.region)
    network_setup = await durable(setup_network(network_config))

    vm_futures = [durable(provision_vm(VmConfig(f"{request.environment}-vm-{i}",
                                                "t3.large" if i == 0 else "t3.medium", request.region)))
                  for i in range(request.vm_count)]
    vms = await ctx.join(vm_futures)  # all VMs in parallel

    attached = []
    for vm in vms:
        await durable(attach_vm_to_network(vm.id, network_setup.network.id))
        attached.append(vm.id)
    return FullInfraResult(network_setup, vms, request.environment, attached)


def test_infrastructure_provisioning_with_duroxide_main(tmp_path: Path) -> None:
    db_path = tmp_path / "infrastructure.db"

    @duroxide_main(db_path=str(db_path), log_level="info")
    async def main() -> tuple[FullInfraResult, list[HistoryEvent], list[Any], list[HistoryEvent]]:
        request = FullInfraRequest("production", "us-west-2", 3)
        result = await provision_full_infrastructure.run("infra-prod", request, timeout=45)  # ambient client
        history = await provision_full_infrastructure.history("infra-prod")
        children = []
        for sub in of_kind(history, Event.SubOrchestrationScheduled):
            info = await provision_vm.metadata(sub.instance_id)
            children.append((sub.name, info.parent_instance_id, info.status))
        network_history = await setup_network.history(of_kind(history, Event.SubOrchestrationScheduled)[0].instance_id)
        return result, history, children, network_history

    result, history, children, network_history = main()
    assert db_path.exists()  # the store was the SQLite file asked for

    assert isinstance(result, FullInfraResult) and result.environment == "production"
    assert isinstance(result.network, NetworkSetup) and result.network.network.cidr == "10.0.0.0/16"
    assert result.network.public_subnet.cidr == "10.0.1.0/24"
    assert result.network.private_subnet.cidr == "10.0.2.0/24"
    assert [vm.name for vm in result.vms] == ["production-vm-0", "production-vm-1", "production-vm-2"]
    assert all(isinstance(vm, VmInstance) and vm.status == "running" for vm in result.vms)
    assert len({vm.id for vm in result.vms}) == 3
    assert result.attached == [vm.id for vm in result.vms]

    subs = of_kind(history, Event.SubOrchestrationScheduled)
    assert [s.name for s in subs] == ["seed.infra.setup_network"] + ["seed.infra.provision_vm"] * 3
    assert [json.loads(s.input)["name"] for s in subs[1:]] == ["production-vm-0", "production-vm-1",
                                                               "production-vm-2"]
    # parallel: all three VM sub-orchestrations were scheduled before any of them completed
    vm_sched_ids = {s.event_id for s in subs[1:]}
    vm_done = [e for e in of_kind(history, Event.SubOrchestrationCompleted) if e.source_event_id in vm_sched_ids]
    assert len(vm_done) == 3
    assert max(history.index(s) for s in subs[1:]) < min(history.index(d) for d in vm_done)
    assert names_of(history, Event.ActivityScheduled) == ["seed.infra.attach_vm_to_network"] * 3
    assert children == [(s.name, "infra-prod", "Completed") for s in subs]
    # inside setup_network both subnets were created in parallel (asyncio.gather of durable futures)
    subnet_calls = [e for e in of_kind(network_history, Event.ActivityScheduled) if e.name.endswith("create_subnet")]
    assert [json.loads(e.input)[2] for e in subnet_calls] == ["public", "private"]
    subnet_ids = {e.event_id for e in subnet_calls}
    subnet_done = [e for e in of_kind(network_history, Event.ActivityCompleted) if e.source_event_id in subnet_ids]
    assert len(subnet_done) == 2
    assert max(network_history.index(e) for e in subnet_calls) < min(network_history.index(e) for e in subnet_done)
