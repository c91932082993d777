"""Fixtures: every runtime test runs on each provider and in both replay modes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from duroxide_runtime import Provider

from .support import PROVIDERS, REPLAY_MODES, Harness, drop_store, make_store


@pytest.fixture(params=PROVIDERS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Provider]:
    """A fresh store of each provider kind."""
    s = await make_store(request.param, tmp_path)
    yield s
    await drop_store(s)


@pytest.fixture(params=REPLAY_MODES)
def replay_mode(request: pytest.FixtureRequest) -> str:
    """'cached' keeps instances live between turns; 'from_scratch' replays every turn."""
    return str(request.param)


@pytest.fixture
async def harness(store: Provider, replay_mode: str) -> AsyncIterator[Harness]:
    """Store + client + runtime starter, in one replay mode; the runtime is stopped after the test."""
    h = Harness(store, replay_mode)
    yield h
    await h.stop()


@pytest.fixture
async def cached_harness(store: Provider) -> AsyncIterator[Harness]:
    """Like ``harness``, cached mode only: for defects where the replay mode does not matter."""
    h = Harness(store, "cached")
    yield h
    await h.stop()
