"""benchmarks/peers.py --store postgres: its own database on the server, made and dropped by run.py's helper.

A user runs the side-by-side benchmark on PostgreSQL expecting it to leave the server as it found it:
a database ``duroxide_bench_<random>`` is created for the run and dropped at the end, also when the run
is interrupted (Ctrl-C, or SIGTERM as a CI timeout sends); peers without a PostgreSQL store are skipped
with the reason and never installed. The smoke run uses ``--quick`` sizes and asserts no speed; the peers
that need a virtual environment from the package index (DBOS, duroxide) are left out here.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from .pg_session import ADMIN_URL
from .support import clean_env, run_cmd

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
PEERS = BENCHMARKS / "peers.py"
DATABASE = re.compile(r"database (duroxide_bench_[0-9a-f]{10})\b")


async def _database_exists(name: str) -> bool:
    import asyncpg

    admin = await asyncpg.connect(ADMIN_URL)  # a read of the catalogue only
    try:
        return bool(await admin.fetchval("SELECT 1 FROM pg_database WHERE datname=$1", name))
    finally:
        await admin.close()


async def _drop_if_left(name: str) -> None:
    """Cleanup should the script under test have failed to drop its database (the test fails anyway)."""
    import asyncpg

    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def run_module() -> Iterator[ModuleType]:
    """benchmarks/run.py imported as a module; sys.path and sys.modules as they were afterwards."""
    path, modules = list(sys.path), set(sys.modules)
    spec = importlib.util.spec_from_file_location("duroxide_benchmarks_run", BENCHMARKS / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            del sys.modules[name]


def test_the_database_helper_creates_a_bench_database_and_drops_it(run_module: ModuleType) -> None:
    # Not a coroutine: the helper runs its own event loops, as the scripts (which have none) call it.
    db = run_module.create_database()
    try:
        assert DATABASE.fullmatch(f"database {db.name}"), db.name
        assert db.url.endswith("/" + db.name) and asyncio.run(_database_exists(db.name))
        assert db.name in db.describe() and "PostgreSQL" in db.describe()
        with pytest.raises(ValueError):
            db.drop_schema('x"; DROP DATABASE postgres; --')
        db.drop_schema("peer_not_there")  # a run that crashed before making its schema: nothing to drop
    finally:
        db.drop()
    assert not asyncio.run(_database_exists(db.name))
    db.drop()  # a second drop (the atexit hook after the explicit one) does nothing


def test_run_py_takes_its_sizes_and_result_line_from_the_peers_protocol(run_module: ModuleType) -> None:
    protocol = sys.modules["_protocol"]
    assert protocol.__file__ == str(BENCHMARKS / "peers" / "_protocol.py")
    assert run_module.Sizes is protocol.Sizes and run_module.MARK == protocol.MARK
    assert run_module.QUICK is protocol.QUICK and run_module.FULL is protocol.FULL


def test_an_unknown_store_is_refused_before_anything_runs(tmp_path: Path) -> None:
    proc = run_cmd([sys.executable, str(PEERS), "--store", "memory", "--cache", str(tmp_path / "cache")], tmp_path)
    assert proc.returncode == 2 and "invalid choice: 'memory'" in proc.stderr, proc.stderr
    assert not (tmp_path / "cache").exists()


async def test_a_quick_postgres_run_skips_durabletask_and_drops_its_database(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    proc = await asyncio.to_thread(run_cmd, [
        sys.executable, str(PEERS), "--store", "postgres", "--quick", "--workloads", "W1", "--durability", "full",
        "--peers", "durabletask", "--cache", str(cache)], tmp_path, 600)
    found = DATABASE.search(proc.stdout)
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert found is not None, proc.stdout
        assert re.search(r"^\| ours, PostgreSQL, durability=full \| [0-9.]+ \|$", proc.stdout, re.M), proc.stdout
        assert "- skipped durabletask: no PostgreSQL store" in proc.stdout, proc.stdout
        assert "run failed" not in proc.stdout, proc.stdout
        assert not cache.exists()  # a skipped peer is never installed
        assert not await _database_exists(found.group(1))
    finally:
        if found is not None:
            await _drop_if_left(found.group(1))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
async def test_an_interrupted_postgres_run_drops_its_database(tmp_path: Path, sig: signal.Signals) -> None:
    # W2 at its defined size: the run is still going when the signal comes (it is never let finish).
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(PEERS), "--store", "postgres", "--workloads", "W2", "--runs", "1",
        "--durability", "full", "--peers", "", "--cache", str(tmp_path / "cache"),
        cwd=tmp_path, env=clean_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    name = ""
    try:
        assert proc.stderr is not None
        seen: list[str] = []
        while not seen or not seen[-1].startswith("W2 run 1/1: ours-full"):
            line = (await asyncio.wait_for(proc.stderr.readline(), 120)).decode()
            assert line, "".join(seen)  # the script ended before it started the run
            seen.append(line)
            found = DATABASE.search(line)
            name = found.group(1) if found else name
        assert name, "".join(seen)
        assert await _database_exists(name)
        proc.send_signal(sig)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode != 0, out.decode() + err.decode()
        assert not await _database_exists(name), err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if name:
            await _drop_if_left(name)
