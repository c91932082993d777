"""Debounced starts raced from several OS processes on one store (SQLite file, PostgreSQL).

Three processes (tests/debounce_worker.py) make debounced starts for the same
keys at the same moment, each naming its own instance ids. Per key, exactly one
instance is created for the open window, every call returns its id, and its held
start carries the last input: the last call of one of the processes (each
process's calls are one after the other, so the last one it made commits after
its others; which process committed last only the store knows), and a call made
after them all wins over every one of them. Then the test picks the held starts up
(a fetch, as a runtime's dispatcher does), which closes the windows: a second
burst makes exactly one new instance per key.

The test reads the store through a ManualClock set a day ahead, so the held
starts are due for its fetch whatever their quiet period (the workers run on the
system clock); nothing waits for real time to pass.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from duroxide_runtime import Client, Provider
from duroxide_runtime.messages import StartOrchestration
from duroxide_runtime.providers.base import now_ms
from duroxide_runtime.testing import ManualClock

from .support import PROVIDERS, drop_store, make_store
from .worker_process import release_together

pytestmark = pytest.mark.timeout(180)

WORKER = Path(__file__).with_name("debounce_worker.py")
PROCESSES, KEYS, CALLS = 3, 4, 5


async def _burst(kind: str, target: str, schema: str, round_: int) -> list[dict[str, list[str]]]:
    """Run the workers of one round together; what each returned, per key."""
    argvs = [[kind, target, schema, str(number), str(round_), str(KEYS), str(CALLS)] for number in range(PROCESSES)]
    outputs: list[dict[str, list[str]]] = await release_together(WORKER, argvs)
    return outputs


async def _pick_up(store: Provider) -> dict[str, str]:
    """Fetch every held start, as a dispatcher does (closing the windows); instance id -> its input."""
    held: dict[str, str] = {}
    result = await store.fetch_orchestration_items(100, 600.0)
    for item in result.items:
        starts = [m.message for m in item.messages if isinstance(m.message, StartOrchestration)]
        assert len(starts) == 1, (item.instance_id, starts)
        held[item.instance_id] = starts[0].input
    return held


def _one_instance_per_key(outputs: list[dict[str, list[str]]], created: set[str]) -> dict[str, str]:
    """Per key, the one instance every call of the burst returned (and that was created then)."""
    window: dict[str, str] = {}
    for k in range(KEYS):
        key = f"key-{k}"
        returned = [iid for output in outputs for iid in output[key]]
        assert len(returned) == PROCESSES * CALLS
        ids = set(returned)
        assert len(ids) == 1, (key, Counter(returned))  # one window: one instance, whoever opened it
        window[key] = ids.pop()
        assert window[key].startswith(f"{key}-") and window[key] in created, (key, window[key])
    return window


@pytest.mark.parametrize("kind", [k for k in PROVIDERS if k in ("sqlite", "postgres")])
async def test_debounced_starts_from_three_processes_make_one_instance_per_window_with_the_last_input(
        kind: str, tmp_path: Path) -> None:
    clock = ManualClock(start_ms=now_ms() + 86_400_000)
    store = await make_store(kind, tmp_path, clock=clock)
    try:
        target, schema = (str(getattr(store, "path")), "-") if kind == "sqlite" else (
            str(getattr(store, "url")), str(getattr(store, "schema")))
        client = Client(store)

        first = await _burst(kind, target, schema, 1)
        window = _one_instance_per_key(first, {i.instance_id for i in await store.list_instances()})
        assert len(await store.list_instances()) == KEYS
        # A call after all of them joins the same window, and its input is the one that runs.
        for key, iid in list(window.items())[:2]:
            assert await client.start_orchestration(f"{key}-late", "Digest", "late", debounce=timedelta(seconds=1),
                                                    debounce_key=key) == iid
        clock.advance(1)  # its quiet period, by the test's clock
        held = await _pick_up(store)
        assert set(held) == set(window.values())
        lasts = {f"p{n}-t{CALLS - 1}" for n in range(PROCESSES)}
        for n, (key, iid) in enumerate(window.items()):
            assert held[iid] == "late" if n < 2 else held[iid] in lasts, (key, held[iid])

        # Picked up: the windows are closed, and the next burst opens one new instance per key.
        second = await _burst(kind, target, schema, 2)
        instances = {i.instance_id for i in await store.list_instances()}
        again = _one_instance_per_key(second, instances - set(window.values()))
        assert len(instances) == 2 * KEYS and all("-r2-" in iid for iid in again.values())
        assert {iid: text in lasts for iid, text in (await _pick_up(store)).items()} == {
            iid: True for iid in again.values()}
    finally:
        await drop_store(store)
