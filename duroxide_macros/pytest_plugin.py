"""pytest plugin (entry point ``pytest11``): the import hook for test modules, and fixtures.

Test modules that import from ``duroxide_macros`` are rewritten by the import
hook (their ``durable(...)`` forms) and by pytest (their ``assert`` statements).

Fixtures, each cleaned up after its test:

* ``virtual_clock`` - a :class:`VirtualClock`: time jumps to the next deadline
  as soon as nothing else can run (``duroxide_store`` runs on it when a test
  asks for both);
* ``duroxide_store`` - a fresh :class:`InMemoryProvider`;
* ``duroxide_runtime`` - a started runtime over it with discovery;
* ``duroxide_client`` - a client of that store.

Example::

    async def test_hello(duroxide_runtime, duroxide_client):
        assert await hello_world.run(duroxide_client, "t1", "World") == "Hello, World!"

    async def test_a_month(virtual_clock, duroxide_runtime, duroxide_client):   # in milliseconds
        assert await monthly_report.run(duroxide_client, "r1", "june") == "sent"
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from duroxide_runtime import Client, InMemoryProvider, Runtime, VirtualClock

from .hook import install

# Test modules that import from duroxide_macros are rewritten, and keep pytest's assertion
# rewriting (the hook finds pytest's rewriter after itself on sys.meta_path and applies both);
# every other test module is left to pytest alone.
install()


@pytest.fixture
async def virtual_clock() -> AsyncIterator[VirtualClock]:
    """A :class:`VirtualClock` for the test: durable timers fire as soon as nothing else can run."""
    clock = VirtualClock()
    yield clock
    await clock.aclose()  # after the runtime and store fixtures that use it have ended


@pytest.fixture
async def duroxide_store(request: pytest.FixtureRequest) -> AsyncIterator[InMemoryProvider]:
    """A fresh in-memory store, on the test's ``virtual_clock`` if it asks for one too."""
    if "virtual_clock" in request.fixturenames:
        store = InMemoryProvider(clock=request.getfixturevalue("virtual_clock"))
    else:
        store = InMemoryProvider()
    yield store
    await store.close()


@pytest.fixture
async def duroxide_runtime(duroxide_store: InMemoryProvider) -> AsyncIterator[Runtime]:
    """A started runtime with every decorated activity and orchestration."""
    rt = await Runtime.builder().store(duroxide_store).discover_activities().discover_orchestrations().start()
    yield rt
    await rt.shutdown(grace=2)


@pytest.fixture
async def duroxide_client(duroxide_store: InMemoryProvider) -> Client:
    """A client of the fixture store."""
    return Client(duroxide_store)
