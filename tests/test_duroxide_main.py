"""``@duroxide_main``: every option of the spec, the ambient client, and clean shutdown on error and Ctrl-C.

Each test writes a real program into ``tmp_path`` and runs it as ``python prog.py``.
The programs wrap ``Runtime.shutdown`` and the stores' ``close`` to print a line,
so the tests can see that everything was shut down (and in which order).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from duroxide_runtime.errors import ConfigurationError

from .support import dedent_src, own_pg_database, run_cmd

HEADER = '''
import duroxide_macros.install
import asyncio, os, sys, tempfile
from duroxide_macros.prelude import *
from duroxide_runtime import Runtime as _Runtime

def _watch(cls, method, label):
    original = getattr(cls, method)
    async def wrapped(self, *args, **kwargs):
        print(label, type(self).__name__, flush=True)
        return await original(self, *args, **kwargs)
    setattr(cls, method, wrapped)

_watch(_Runtime, "shutdown", "RUNTIME SHUTDOWN")
for _cls in (SqliteProvider, InMemoryProvider, PostgresProvider, RedisProvider):
    _watch(_cls, "close", "STORE CLOSED")

@activity(typed=True)
async def dm_double(x: int) -> int:
    durable_trace_debug("doubling {}", x)
    return 2 * x

@orchestration
async def dm_flow(ctx: OrchestrationContext, n: int) -> int:
    durable_trace_info("flow got {}", n)
    return await durable(dm_double(n)) + 1

@orchestration
async def dm_slow(ctx: OrchestrationContext, n: int) -> int:
    await ctx.schedule_timer(3600)
    return n
'''


def _program(tmp_path: Path, body: str, name: str = "prog.py") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + textwrap.dedent(body))
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTHONPATH")}
    env.update(extra)
    return env


def _run(tmp_path: Path, prog: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(prog)], cwd=tmp_path, env=_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def _values(stdout: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in stdout.splitlines() if " " in line)


def _assert_shut_down(stdout: str, store: str, after: str) -> None:
    lines = stdout.splitlines()
    assert "RUNTIME SHUTDOWN Runtime" in lines, stdout
    assert f"STORE CLOSED {store}" in lines, stdout
    marker = next(i for i, line in enumerate(lines) if line.startswith(after))
    assert lines.index("RUNTIME SHUTDOWN Runtime") > marker
    assert lines.index(f"STORE CLOSED {store}") > lines.index("RUNTIME SHUTDOWN Runtime")


def test_default_is_sqlite_in_a_temp_dir_with_ambient_client_and_client_in_scope(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    prog = _program(tmp_path, '''
        @duroxide_main
        async def main() -> None:
            store = client.store
            print("KIND", type(store).__name__)
            print("PATH", store.path)
            print("EXISTS", os.path.exists(store.path))
            print("RESULT", await dm_flow.run("a1", 20, timeout=20))     # ambient client
            status = await dm_flow.status(client, "a1")                   # `client` in scope
            print("STATUS", type(status).__name__, status.output)
            print("BODY DONE")

        if __name__ == "__main__":
            main()
    ''')
    proc = _run(tmp_path, prog, TMPDIR=str(tmp))
    assert proc.returncode == 0, proc.stderr
    v = _values(proc.stdout)
    assert v["KIND"] == "SqliteProvider"
    assert v["EXISTS"] == "True"
    db = Path(v["PATH"])
    assert db.is_absolute() and tmp.resolve() in db.resolve().parents, db
    assert v["RESULT"] == "41"
    assert v["STATUS"] == "Completed 41"
    _assert_shut_down(proc.stdout, "SqliteProvider", "BODY DONE")
    assert not db.exists() and list(tmp.iterdir()) == [], "the temp dir must be removed at exit"
    # default log level is info: the orchestration's info trace shows, the activity's debug trace does not
    assert "flow got 20" in proc.stderr
    assert "doubling 20" not in proc.stderr


def test_memory_provider(tmp_path: Path) -> None:
    prog = _program(tmp_path, '''
        @duroxide_main(provider="memory")
        async def main() -> None:
            print("KIND", type(client.store).__name__)
            print("RESULT", await dm_flow.run("m1", 1, timeout=20))
            print("BODY DONE")
            return "the body's value"

        if __name__ == "__main__":
            print("RETURNED", main())
    ''')
    proc = _run(tmp_path, prog)
    assert proc.returncode == 0, proc.stderr
    v = _values(proc.stdout)
    assert (v["KIND"], v["RESULT"]) == ("InMemoryProvider", "3")
    assert proc.stdout.splitlines()[-1] == "RETURNED the body's value"
    _assert_shut_down(proc.stdout, "InMemoryProvider", "BODY DONE")


def test_db_path_creates_the_file_and_debug_logging(tmp_path: Path) -> None:
    db = tmp_path / "data" / "nested" / "app.db"
    prog = _program(tmp_path, f'''
        @duroxide_main(db_path={str(db)!r}, log_level="debug")
        async def main() -> None:
            print("KIND", type(client.store).__name__)
            if sys.argv[1:] == ["again"]:
                status = await dm_flow.status(client, "p1")
                print("STATUS", type(status).__name__, status.output)
            else:
                print("RESULT", await dm_flow.run("p1", 5, timeout=20))
            print("BODY DONE")

        if __name__ == "__main__":
            main()
    ''')
    proc = _run(tmp_path, prog)
    assert proc.returncode == 0, proc.stderr
    v = _values(proc.stdout)
    assert (v["KIND"], v["RESULT"]) == ("SqliteProvider", "11")
    assert db.is_file()
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from sqlite_master where type = 'table'").fetchone()[0] > 0
    assert "doubling 5" in proc.stderr and "DEBUG" in proc.stderr, proc.stderr
    _assert_shut_down(proc.stdout, "SqliteProvider", "BODY DONE")
    # the history outlives the process
    again = subprocess.run([sys.executable, str(prog), "again"], cwd=tmp_path, env=_env(), capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert _values(again.stdout)["STATUS"] == "Completed 11"


async def test_postgres_provider_reads_database_url(tmp_path: Path) -> None:
    async with own_pg_database("dm_url") as url:  # the program makes schema "duroxide": a database of its own
        _runs_on_database_url(tmp_path, url)


def _runs_on_database_url(tmp_path: Path, url: str) -> None:
    instance = f"dm-pg-{uuid.uuid4().hex}"
    prog = _program(tmp_path, f'''
        @duroxide_main(provider="postgres")
        async def main() -> None:
            print("KIND", type(client.store).__name__)
            print("RESULT", await dm_flow.run({instance!r}, 7, timeout=30))
            print("BODY DONE")

        if __name__ == "__main__":
            main()
    ''')
    proc = _run(tmp_path, prog, DATABASE_URL=url)
    assert proc.returncode == 0, proc.stderr
    v = _values(proc.stdout)
    assert (v["KIND"], v["RESULT"]) == ("PostgresProvider", "15")
    _assert_shut_down(proc.stdout, "PostgresProvider", "BODY DONE")
    # without DATABASE_URL: a configuration error that names the fix, before any store is opened
    proc = _run(tmp_path, prog)
    assert proc.returncode != 0
    assert "ConfigurationError" in proc.stderr and "DATABASE_URL" in proc.stderr
    assert "BODY DONE" not in proc.stdout


def test_custom_provider_uses_the_modules_factory(tmp_path: Path) -> None:
    db = tmp_path / "custom.db"
    prog = _program(tmp_path, f'''
        async def duroxide_provider():
            print("FACTORY CALLED", flush=True)
            return await SqliteProvider.new("sqlite://{db}")

        @duroxide_main(provider="custom")
        async def main() -> None:
            print("KIND", type(client.store).__name__, client.store.path)
            print("RESULT", await dm_flow.run("c1", 2, timeout=20))
            print("BODY DONE")

        if __name__ == "__main__":
            main()
    ''')
    proc = _run(tmp_path, prog)
    assert proc.returncode == 0, proc.stderr
    v = _values(proc.stdout)
    assert v["FACTORY"] == "CALLED"
    assert v["KIND"] == f"SqliteProvider {db}"
    assert v["RESULT"] == "5"
    assert db.is_file()
    _assert_shut_down(proc.stdout, "SqliteProvider", "BODY DONE")


def test_custom_provider_without_factory_says_how_to_fix(tmp_path: Path) -> None:
    prog = _program(tmp_path, '''
        @duroxide_main(provider="custom")
        async def main() -> None:
            print("BODY RAN")

        if __name__ == "__main__":
            main()
    ''')
    proc = _run(tmp_path, prog)
    assert proc.returncode != 0
    assert "BODY RAN" not in proc.stdout
    assert "duroxide_provider" in proc.stderr and "ConfigurationError" in proc.stderr


def test_unknown_provider_or_level_is_rejected_at_decoration() -> None:
    from duroxide_macros.prelude import duroxide_main

    with pytest.raises(ConfigurationError, match="provider"):
        duroxide_main(provider="mongodb")
    with pytest.raises(ConfigurationError, match="log_level"):
        duroxide_main(log_level="chatty")


def test_error_in_body_propagates_after_clean_shutdown(tmp_path: Path) -> None:
    prog = _program(tmp_path, '''
        @duroxide_main
        async def main() -> None:
            print("RESULT", await dm_flow.run("e1", 1, timeout=20))
            await dm_slow.start("e2", 1)          # still running when the body fails
            print("BODY FAILING", flush=True)
            raise ValueError("body failed")

        if __name__ == "__main__":
            try:
                main()
            except ValueError as exc:
                print("CAUGHT", exc)
            if sys.argv[1:] == ["uncaught"]:
                main()
    ''')
    started = time.monotonic()
    proc = _run(tmp_path, prog, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 30
    v = _values(proc.stdout)
    assert v["RESULT"] == "3" and v["CAUGHT"] == "body failed"
    _assert_shut_down(proc.stdout, "SqliteProvider", "BODY FAILING")
    assert proc.stdout.splitlines()[-1] == "CAUGHT body failed"
    # uncaught: the traceback of the body's error, exit code 1, and the process ends
    proc = subprocess.run([sys.executable, str(prog), "uncaught"], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.rstrip().endswith("ValueError: body failed"), proc.stderr
    assert proc.stdout.count("STORE CLOSED SqliteProvider") == 2


@pytest.mark.parametrize("wait", ["orchestration", "sleep"])
def test_ctrl_c_exits_promptly_with_130(tmp_path: Path, wait: str) -> None:
    awaited = 'await dm_slow.run("s1", 1, timeout=3600)' if wait == "orchestration" else "await asyncio.sleep(3600)"
    prog = _program(tmp_path, f'''
        @duroxide_main
        async def main() -> None:
            await dm_slow.start("s0", 1)
            print("READY", flush=True)
            {awaited}
            print("NOT REACHED", flush=True)

        if __name__ == "__main__":
            main()
    ''')
    proc = subprocess.Popen([sys.executable, str(prog)], cwd=tmp_path, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "READY\n", line + (proc.stderr.read() if proc.stderr else "")
        time.sleep(0.3)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert elapsed < 10
    assert "NOT REACHED" not in out
    assert "Traceback" not in err, err
    assert "KeyboardInterrupt" not in err
    assert "RUNTIME SHUTDOWN Runtime" in out and "STORE CLOSED SqliteProvider" in out, out


def test_prometheus_port_serves_the_runtime_metrics(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prog = tmp_path / "metrics_app.py"
    prog.write_text(dedent_src(f'''
        import duroxide_macros.install
        import urllib.request
        from duroxide_macros.prelude import *

        @activity(typed=True)
        async def pm_double(x: int) -> int:
            return 2 * x

        @orchestration
        async def pm_flow(ctx: OrchestrationContext, x: int) -> int:
            return await durable(pm_double(x))

        @duroxide_main(provider="memory", prometheus_port={port})
        async def main() -> None:
            print("RESULT", await pm_flow.run("m1", 21, timeout=10))
            body = urllib.request.urlopen("http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            for line in body.splitlines():
                if line.startswith(("duroxide_orchestration_started_total", "duroxide_activity_completed_total")):
                    print("METRIC", line)

        if __name__ == "__main__":
            main()
    '''))
    proc = run_cmd([sys.executable, str(prog)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "RESULT 42" in proc.stdout
    assert 'METRIC duroxide_orchestration_started_total{name="pm_flow",version="1.0.0"} 1.0' in proc.stdout
    assert 'METRIC duroxide_activity_completed_total{name="pm_double",outcome="success"} 1.0' in proc.stdout


# -- where the store is, and saying so ------------------------------------------------------


def test_relative_db_path_is_next_to_the_defining_file_from_any_working_directory(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    elsewhere = [tmp_path / "a", tmp_path / "b" / "deeper"]
    for d in elsewhere:
        d.mkdir(parents=True)
    prog = _program(tmp_path, '''
        @duroxide_main(db_path="state/app.db")
        async def main() -> None:
            print("PATH", client.store.path)
            if sys.argv[1:] == ["again"]:
                status = await dm_flow.status(client, "r1")
                print("STATUS", type(status).__name__, status.output)
            else:
                print("RESULT", await dm_flow.run("r1", 4, timeout=20))

        if __name__ == "__main__":
            os.chdir(tempfile.gettempdir())  # after decoration: cannot move the store either
            main()
    ''', name="app/prog.py")
    db = tmp_path / "app" / "state" / "app.db"
    # The same program started from two working directories, by absolute and by relative path.
    first = subprocess.run([sys.executable, str(prog)], cwd=elsewhere[0], env=_env(), capture_output=True,
                           text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    again = subprocess.run([sys.executable, os.path.relpath(prog, elsewhere[1]), "again"], cwd=elsewhere[1],
                           env=_env(), capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert _values(first.stdout)["RESULT"] == "9"
    assert _values(again.stdout)["STATUS"] == "Completed 9", "the second run must see the first run's state"
    for proc in (first, again):
        assert _values(proc.stdout)["PATH"] == str(db)
        assert f"INFO duroxide.main: store: SQLite file {db}\n" in proc.stderr, proc.stderr
    assert db.is_file()
    assert [p for d in elsewhere for p in d.rglob("*")] == [], "nothing may be created in the working directory"


def test_the_default_temporary_store_is_logged_as_temporary(tmp_path: Path) -> None:
    prog = _program(tmp_path, '''
        @duroxide_main
        async def main() -> None:
            print("PATH", client.store.path)

        if __name__ == "__main__":
            main()
    ''')
    proc = _run(tmp_path, prog)
    assert proc.returncode == 0, proc.stderr
    path = _values(proc.stdout)["PATH"]
    assert (f"INFO duroxide.main: store: SQLite file {path}, in a temporary directory deleted when the program "
            "ends (pass db_path=... to keep it)") in proc.stderr, proc.stderr


async def test_the_postgres_store_is_logged_without_its_password(tmp_path: Path) -> None:
    from urllib.parse import urlsplit

    from .support import own_pg_database

    async with own_pg_database("dm_log") as url:
        parts = urlsplit(url)
        user = parts.username or "postgres"
        # The server trusts local connections, so a password is sent but never checked.
        with_password = parts._replace(netloc=f"{user}:s3cret-pw@{parts.hostname}:{parts.port or 5432}",
                                       query="application_name=dm&password=s3cret-q").geturl()
        prog = _program(tmp_path, '''
            @duroxide_main(provider="postgres")
            async def main() -> None:
                print("RESULT", await dm_flow.run("pg1", 1, timeout=30))

            if __name__ == "__main__":
                main()
        ''')
        proc = _run(tmp_path, prog, DATABASE_URL=with_password)
    assert proc.returncode == 0, proc.stderr
    assert "RESULT 3" in proc.stdout
    assert "s3cret" not in proc.stderr + proc.stdout, proc.stderr
    shown = f"{user}:***@{parts.hostname}:{parts.port or 5432}{parts.path}?application_name=dm&password=***"
    assert f"INFO duroxide.main: store: PostgreSQL database postgresql://{shown} (schema duroxide)" in proc.stderr, \
        proc.stderr


def test_a_relative_db_path_needs_a_file_to_be_relative_to(tmp_path: Path) -> None:
    from duroxide_macros.prelude import duroxide_main

    namespace: dict[str, object] = {}
    exec("async def main() -> None:\n    pass\n", namespace)  # defined in no file (like the REPL or -c)
    with pytest.raises(ConfigurationError, match="relative") as info:
        duroxide_main(db_path="app.db")(namespace["main"])  # type: ignore[arg-type]
    assert "absolute path" in (info.value.fix or "")
    duroxide_main(db_path=str(tmp_path / "app.db"))(namespace["main"])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="'\\?'"):
        duroxide_main(db_path=str(tmp_path / "what?.db"))(namespace["main"])  # type: ignore[arg-type]
