"""A runtime process that acknowledges writes one by one, for the power-cut test (tests/test_power_loss.py).

Run:  python tests/power_cut/worker.py DBPATH DURABILITY [LANES] [MAX_INSTANCES]

It opens ``SqliteProvider.new(DBPATH, durability=Durability(DURABILITY))``
(``full`` or ``relaxed``), runs a runtime with one activity (``Echo``) and one
orchestration (``PowerFlow``: the activity, then a wait for the event ``Go``),
prints ``READY``, and then, in LANES concurrent lanes, starts instances one by
one. Each lane starts an instance, raises its event (every fifth instance is
cancelled instead), and waits until it finishes. Right after each
acknowledgment returns it prints one line and flushes stdout:

* ``ACK start ID``        ``start_orchestration`` returned;
* ``ACK event ID``        ``raise_event`` returned True (delivered);
* ``ACK cancel ID``       ``cancel_instance`` returned True;
* ``ACK done ID OUTPUT``  ``wait_for_orchestration`` returned Completed with OUTPUT;
* ``ACK failed ID``       ``wait_for_orchestration`` returned Failed (a cancelled instance).

Anything unexpected (an event not delivered, a wait that ends otherwise) prints
``ERROR ...`` and exits 1. After MAX_INSTANCES instances it prints ``FINISHED``
and exits: the test is meant to kill it long before. Every line is written by
one ``write`` on the pipe, so it never interleaves with the lines the power-cut
shim (tests/power_cut/shim.c) writes to the same stdout.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys

from duroxide_runtime import (
    ActivityRegistry,
    Client,
    Durability,
    OrchestrationContext,
    OrchestrationRegistry,
    OrchestrationStatus,
    Runtime,
    RuntimeOptions,
    SqliteProvider,
)

ORCHESTRATION = "PowerFlow"
ACTIVITY = "Echo"
EVENT = "Go"
#: Every CANCEL_EVERY-th instance (by number) is cancelled instead of receiving its event.
CANCEL_EVERY = 5
#: The longest a lane waits for one instance (a bound, not a pace: instances finish in milliseconds).
WAIT_BOUND = 120.0


def instance_id(number: int) -> str:
    """The id of instance ``number``."""
    return f"pc-{number:05d}"


def is_cancelled(number: int) -> bool:
    """Whether instance ``number`` is cancelled instead of receiving its event."""
    return number % CANCEL_EVERY == CANCEL_EVERY - 1


def event_data(iid: str) -> str:
    """The data of the ``Go`` event raised to ``iid``."""
    return f"go:{iid}"


def activity_result(input: str) -> str:
    """What ``Echo`` returns for ``input``."""
    return f"echo:{input}"


def expected_output(iid: str) -> str:
    """The output of a ``PowerFlow`` instance ``iid`` (its input is its id) that got its event."""
    return f"{activity_result(iid)}|{event_data(iid)}"


async def echo(input: str) -> str:
    """The activity: a pure function of its input."""
    return activity_result(input)


async def power_flow(ctx: OrchestrationContext, input: str) -> str:
    """An activity (its completion is a store write), then a wait for the external event ``Go``."""
    echoed = await ctx.schedule_activity(ACTIVITY, input)
    data = await ctx.schedule_wait(EVENT)
    return f"{echoed}|{data}"


def registries() -> tuple[ActivityRegistry, OrchestrationRegistry]:
    """The activity and orchestration registries (the test runs the same ones after the cut)."""
    return (ActivityRegistry.builder().register(ACTIVITY, echo).build(),
            OrchestrationRegistry.builder().register(ORCHESTRATION, power_flow).build())


def say(line: str) -> None:
    """One line on stdout, flushed now: the test reads acknowledgments as they happen."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def lane(client: Client, numbers: itertools.count[int], last: int) -> None:
    """Start, deliver to, and wait for instances one at a time until number ``last``."""
    for number in numbers:
        if number > last:
            return
        iid = instance_id(number)
        await client.start_orchestration(iid, ORCHESTRATION, iid)
        say(f"ACK start {iid}")
        if is_cancelled(number):
            if not await client.cancel_instance(iid, "power-cut test"):
                say(f"ERROR cancel of {iid} not delivered")
                raise SystemExit(1)
            say(f"ACK cancel {iid}")
        else:
            if not await client.raise_event(iid, EVENT, event_data(iid)):
                say(f"ERROR event to {iid} not delivered")
                raise SystemExit(1)
            say(f"ACK event {iid}")
        match await client.wait_for_orchestration(iid, WAIT_BOUND):
            case OrchestrationStatus.Completed(output=output) if not is_cancelled(number):
                say(f"ACK done {iid} {output}")
            case OrchestrationStatus.Failed() if is_cancelled(number):
                say(f"ACK failed {iid}")
            case other:
                say(f"ERROR {iid} ended as {other!r}")
                raise SystemExit(1)


def worker_options() -> RuntimeOptions:
    """Short locks and leases: after the cut, a fresh runtime takes over the killed one's work soon."""
    return RuntimeOptions(poll_interval=0.05, orchestration_lock_timeout=1.0, activity_lock_timeout=2.0)


async def main(db_path: str, durability: Durability, lanes: int, max_instances: int) -> None:
    store = await SqliteProvider.new(os.path.abspath(db_path), durability=durability)
    activities, orchestrations = registries()
    rt = await (Runtime.builder().store(store).activities(activities).orchestrations(orchestrations)
                .options(worker_options()).start())
    client = Client(store)
    say(f"READY {os.getpid()}")
    numbers = itertools.count()
    await asyncio.gather(*(lane(client, numbers, max_instances - 1) for _ in range(lanes)))
    say("FINISHED")
    await rt.shutdown(grace=2)
    await store.close()


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4, 5):
        raise SystemExit("usage: python tests/power_cut/worker.py DBPATH full|relaxed [LANES] [MAX_INSTANCES]")
    asyncio.run(main(sys.argv[1], Durability(sys.argv[2]),
                     int(sys.argv[3]) if len(sys.argv) > 3 else 4,
                     int(sys.argv[4]) if len(sys.argv) > 4 else 5000))
