"""A misspelled orchestration name fails at the call when this process's runtime knows every name.

While a runtime of the same store object runs in this process, ``start_orchestration``
(and the typed ``start()``/``run()``) refuses a name, or an explicit version, none
of its runtimes registered: ``UnknownOrchestrationError`` with a "did you mean",
raised before anything is stored. Without such a runtime (a client-only process,
a client on a store object of its own, ``check_names=False``), an unknown name is
stored and the runtimes back off until one knows it - the rolling deploy.
Sub-orchestrations started by orchestration code are not client starts: they
are never refused. Every test runs on every store.

Names of decorated functions start with ``ff_``: discovery is global per process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
import logging
from pathlib import Path
from typing import Any

import pytest

from duroxide_macros.prelude import (
    Client,
    OrchestrationContext,
    OrchestrationRegistry,
    OrchestrationStatus,
    Provider,
    Runtime,
    RuntimeOptions,
    SqliteProvider,
    orchestration,
)
from duroxide_runtime import ErrorCode, UnknownOrchestrationError

from .support import PROVIDERS, TEST_OPTIONS, drop_store, eventually, make_store

pytestmark = pytest.mark.timeout(120)


@orchestration
async def ff_greet(ctx: OrchestrationContext, name: str) -> str:
    return f"hello {name}"


@orchestration(version="2.0.0")
async def ff_greet_v2(ctx: OrchestrationContext, name: str) -> str:
    return f"hi {name}"


@orchestration
async def ff_not_in_this_runtime(ctx: OrchestrationContext, name: str) -> str:
    return name


async def ff_parent_of_unknown(ctx: OrchestrationContext, name: str) -> str:
    return await ctx.schedule_sub_orchestration("ff_no_such_child", name, instance_id="child-of-p")


def _registry() -> OrchestrationRegistry:
    return (OrchestrationRegistry.builder()
            .register("ff_greet", ff_greet.registered_function)
            .register_versioned("ff_greet", "2.0.0", ff_greet_v2.registered_function)
            .register("ff_refund", ff_greet.registered_function)
            .register("ff_parent_of_unknown", ff_parent_of_unknown)
            .build())


async def _runtime(store: Provider, registry: OrchestrationRegistry | None = None, **options: Any) -> Runtime:
    return await (Runtime.builder().store(store).orchestrations(registry or _registry())
                  .options(RuntimeOptions(**{**TEST_OPTIONS, **options})).start())


@pytest.fixture(params=PROVIDERS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Provider]:
    s = await make_store(request.param, tmp_path)
    try:
        yield s
    finally:
        await drop_store(s)


async def _nothing_stored(store: Provider) -> None:
    assert await store.list_instances(status=None, name=None, limit=10) == []


async def test_a_misspelled_name_is_refused_with_a_suggestion_before_anything_is_stored(store: Provider) -> None:
    rt = await _runtime(store)
    try:
        client = Client(store)
        with pytest.raises(UnknownOrchestrationError) as info:
            await client.start_orchestration("i-1", "ff_gret", "Ann")
        err = info.value
        assert err.code is ErrorCode.UNKNOWN_ORCHESTRATION and (err.name, err.version) == ("ff_gret", None)
        assert err.suggestion == "ff_greet"
        assert "did you mean 'ff_greet'?" in str(err)
        assert "registered: ff_greet, ff_parent_of_unknown, ff_refund" in str(err)
        assert "check_names=False" in (err.fix or "")
        await _nothing_stored(store)
        # The runtime's own client checks too; a known name starts and runs.
        with pytest.raises(UnknownOrchestrationError):
            await rt.client().start_orchestration("i-1", "FF_GREET", "Ann")
        await client.start_orchestration("i-1", "ff_greet", '"Ann"')
        assert await client.wait_for_orchestration("i-1", 30) == OrchestrationStatus.Completed(output='"hi Ann"')
    finally:
        await rt.shutdown(grace=2)


async def test_an_unknown_explicit_version_is_refused_and_known_ones_start(store: Provider) -> None:
    rt = await _runtime(store)
    try:
        client = Client(store)
        with pytest.raises(UnknownOrchestrationError) as info:
            await client.start_orchestration("v-1", "ff_greet", '"Ann"', version="3.0.0")
        assert (info.value.name, info.value.version) == ("ff_greet", "3.0.0")
        assert "registered versions of 'ff_greet': 1.0.0, 2.0.0" in str(info.value)
        await _nothing_stored(store)
        await client.start_orchestration("v-1", "ff_greet", '"Ann"', version="1.0.0")
        assert await client.wait_for_orchestration("v-1", 30) == OrchestrationStatus.Completed(output='"hello Ann"')
        with pytest.raises(UnknownOrchestrationError, match="version '9.9.9'"):
            await ff_greet.start(client, "v-2", "Bo", version="9.9.9")
    finally:
        await rt.shutdown(grace=2)


async def test_typed_start_and_run_of_an_orchestration_this_runtime_does_not_run_fail_fast(store: Provider) -> None:
    rt = await _runtime(store)
    try:
        client = Client(store)
        with pytest.raises(UnknownOrchestrationError, match="'ff_not_in_this_runtime'"):
            await ff_not_in_this_runtime.run(client, "t-1", "x", timeout=30)
        with pytest.raises(UnknownOrchestrationError):
            await ff_not_in_this_runtime.start(client, "t-2", "x")
        await _nothing_stored(store)
        assert await ff_greet.run(client, "t-3", "Cy", timeout=30) == "hello Cy"
    finally:
        await rt.shutdown(grace=2)


async def test_without_a_local_runtime_an_unknown_name_waits_for_a_runtime_that_knows_it(
        store: Provider, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="duroxide")
    client = Client(store)
    # No runtime of this store runs here: the name may be known elsewhere (a rolling deploy).
    await client.start_orchestration("r-1", "ff_late", '"Di"')
    old = await _runtime(store, max_attempts=1000)
    try:
        await eventually(lambda: any(getattr(r, "instance_id", None) == "r-1" and "'ff_late'" in r.getMessage()
                                     for r in caplog.records), what="the old runtime to back off from 'ff_late'")
        assert not (await client.get_orchestration_status("r-1")).is_terminal
        # A client on a store object of its own has no local runtime either (SQLite: another handle).
        if isinstance(store, SqliteProvider):
            other = await SqliteProvider.new(f"sqlite://{store.path}")
            try:
                await Client(other).start_orchestration("r-2", "ff_late", '"Ed"')
            finally:
                await other.close()
        # check_names=False leaves the name to the runtimes although one runs here.
        await Client(store, check_names=False).start_orchestration("r-3", "ff_late", '"Fa"')
        late = OrchestrationRegistry.builder().register("ff_late", ff_greet.registered_function).build()
        new = await _runtime(store, late, max_attempts=1000)
        try:
            for iid, name in [("r-1", "Di"), ("r-3", "Fa")] + ([("r-2", "Ed")] if isinstance(store, SqliteProvider)
                                                                else []):
                status = await client.wait_for_orchestration(iid, timedelta(seconds=30))
                assert status == OrchestrationStatus.Completed(output=f'"hello {name}"'), (iid, status)
        finally:
            await new.shutdown(grace=2)
    finally:
        await old.shutdown(grace=2)


async def _exists(store: Provider, instance_id: str) -> bool:
    return await store.get_instance(instance_id) is not None


async def test_names_of_every_local_runtime_count_and_a_stopped_runtime_no_longer_checks(store: Provider) -> None:
    # Each runtime backs off from the other's names until the one that knows them takes them.
    first = await _runtime(store, max_attempts=1000)
    second = await _runtime(store, OrchestrationRegistry.builder()
                            .register("ff_other", ff_greet.registered_function).build(), max_attempts=1000)
    client = Client(store)
    try:
        await client.start_orchestration("n-1", "ff_other", '"Gu"')  # only the second knows it
        await client.start_orchestration("n-2", "ff_refund", '"Ha"')  # only the first knows it
        with pytest.raises(UnknownOrchestrationError) as info:
            await client.start_orchestration("n-3", "ff_othr", '"x"')
        assert info.value.suggestion == "ff_other" and "ff_greet" in str(info.value)
        for iid in ("n-1", "n-2"):
            assert isinstance(await client.wait_for_orchestration(iid, 30), OrchestrationStatus.Completed)
    finally:
        await second.shutdown(grace=2)
        await first.shutdown(grace=2)
    # Both stopped: nothing to check against, the start is stored for a runtime to come.
    await client.start_orchestration("n-4", "ff_othr", '"x"')
    assert isinstance(await client.get_orchestration_status("n-4"), OrchestrationStatus.Pending)


async def test_a_sub_orchestration_of_an_unknown_name_is_not_refused(store: Provider) -> None:
    rt = await _runtime(store, max_attempts=1000)
    try:
        client = Client(store)
        await client.start_orchestration("p-1", "ff_parent_of_unknown", '"Io"')
        # The child was created by orchestration code, not a client: it waits for a runtime that knows it.
        await eventually(lambda: _exists(store, "child-of-p"), what="the child instance")
        child = await store.get_instance("child-of-p")
        assert child is not None and child.name == "ff_no_such_child" and child.status in ("Pending", "Running")
        assert not (await client.get_orchestration_status("p-1")).is_terminal
        await client.cancel_instance("p-1", "done")
        await client.wait_for_orchestration("p-1", 30)
    finally:
        await rt.shutdown(grace=2)
