"""The suite keeps to itself: its PostgreSQL database is its own and nothing it makes outlives it.

Each test here runs a small pytest session of its own with the suite's hooks (tests/conftest.py) and
then looks at the server: the session's database, and every database named after it, are gone whether
the session's tests passed, failed, leaked or were interrupted, and a leak fails the session.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import asyncpg

from .pg_session import ADMIN_URL, PREFIX, SESSION
from .support import PG_URL, clean_env, dedent_src, run_cmd

REPO = Path(__file__).resolve().parent.parent

CONFTEST = """
from tests.conftest import (pytest_report_header, pytest_runtest_teardown, pytest_sessionfinish,
                            pytest_sessionstart, store)
"""
PYTEST_INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
timeout = 120
"""


def _session(tmp_path: Path, tests: str) -> Path:
    (tmp_path / "conftest.py").write_text(dedent_src(CONFTEST))
    (tmp_path / "pytest.ini").write_text(dedent_src(PYTEST_INI))
    (tmp_path / "test_inner.py").write_text(dedent_src(tests))
    return tmp_path


def _pytest(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s", "-rA", *args]


def _database_of(output: str) -> str:
    match = re.search(rf"PostgreSQL: database ({PREFIX}[0-9a-f]+),", output)
    assert match, output
    return match.group(1)


async def _databases_named_after(name: str) -> list[str]:
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        rows = await admin.fetch("SELECT datname FROM pg_database WHERE datname=$1 OR starts_with(datname, $2)",
                                 name, name + "_")
    finally:
        await admin.close()
    return [r["datname"] for r in rows]


async def test_this_session_works_in_a_database_of_its_own() -> None:
    assert SESSION.created and PG_URL.endswith("/" + SESSION.name)
    conn = await asyncpg.connect(PG_URL)
    try:
        assert await conn.fetchval("SELECT current_database()") == SESSION.name
    finally:
        await conn.close()


async def test_a_failing_session_drops_its_database_and_schemas(tmp_path: Path) -> None:
    root = _session(tmp_path, """
        import pytest
        from duroxide_runtime import Client

        async def test_fails_with_a_postgres_store(store):
            await Client(store).start_orchestration("i", "Never", "")
            pytest.fail("on purpose")
    """)
    proc = run_cmd(_pytest("test_inner.py"), root, timeout=240, PYTHONPATH=str(REPO),
                   DUROXIDE_TEST_PROVIDERS="postgres")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "1 failed" in out, out
    assert "cleanup check" not in out, out  # the store fixture dropped its schema although the test failed
    assert await _databases_named_after(_database_of(out)) == []


async def test_what_a_test_leaves_behind_fails_the_session_and_is_dropped(tmp_path: Path) -> None:
    root = _session(tmp_path, """
        import asyncpg
        from tests.pg_session import ADMIN_URL, SESSION
        from tests.support import PG_URL

        async def test_leaks_a_schema_and_a_database():
            conn = await asyncpg.connect(PG_URL)
            await conn.execute("CREATE SCHEMA leaked_on_purpose")
            await conn.close()
            admin = await asyncpg.connect(ADMIN_URL)
            await admin.execute(f'CREATE DATABASE "{SESSION.name}_leaked"')
            await admin.close()
    """)
    proc = run_cmd(_pytest("test_inner.py"), root, timeout=240, PYTHONPATH=str(REPO))
    out = proc.stdout + proc.stderr
    name = _database_of(out)
    assert proc.returncode == 1 and "1 passed" in out, out
    assert (f"PostgreSQL cleanup check FAILED: tests left behind (now dropped with {name}): "
            f"schema leaked_on_purpose (after test_inner.py::test_leaks_a_schema_and_a_database), "
            f"database {name}_leaked") in out, out
    assert await _databases_named_after(name) == []


async def test_an_interrupted_session_drops_its_database(tmp_path: Path) -> None:
    root = _session(tmp_path, """
        import asyncio

        async def test_waits_until_interrupted():
            print("WAITING", flush=True)
            await asyncio.Event().wait()
    """)
    proc = await asyncio.create_subprocess_exec(
        *_pytest("test_inner.py"), cwd=root, env=clean_env(PYTHONPATH=str(REPO)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    out = b""
    try:
        while b"WAITING" not in out:
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            assert line, out.decode()
            out += line
        proc.send_signal(signal.SIGTERM)  # what a CI job's timeout sends
        out += await asyncio.wait_for(proc.stdout.read(), 120)
        await asyncio.wait_for(proc.wait(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode != 0 and "KeyboardInterrupt" in text, text
    assert await _databases_named_after(_database_of(text)) == []
