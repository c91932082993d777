"""``duroxide ui`` and ``@duroxide_main(ui_port=...)``: real processes serving real HTTP.

The command prints the address, serves until SIGINT or SIGTERM and exits 0;
it refuses a non-loopback host without a token, takes the token from the
environment, and without the ``ui`` extra names ``pip install 'duroxide[ui]'``.
A ``duroxide_main`` program serves the UI of its own store while it runs and
stops serving when it ends.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from duroxide_runtime import ConfigurationError, SqliteProvider
from duroxide_macros.prelude import duroxide_main

from .support import clean_env, dedent_src

pytestmark = pytest.mark.timeout(120)

DUROXIDE = str(Path(sys.executable).with_name("duroxide"))
TOKEN = "cli-token-0123456789-abcdef"


async def _store(tmp_path: Path) -> Path:
    path = tmp_path / "ui.db"
    store = await SqliteProvider.new(f"sqlite://{path}")
    await store.close()
    return path


async def _start(*args: str, env: dict[str, str] | None = None) -> tuple[asyncio.subprocess.Process, str]:
    """Start ``duroxide ui ...``; returns the process and the first line it prints (the address)."""
    proc = await asyncio.create_subprocess_exec(DUROXIDE, "ui", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=env or clean_env())
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc, line


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_ui_serves_until_signalled(tmp_path: Path, sig: signal.Signals) -> None:
    store = await _store(tmp_path)
    proc, line = await _start(str(store), "--port", "0")
    try:
        assert line.startswith("duroxide UI at http://127.0.0.1:"), line
        url = line.split(" at ", 1)[1].strip()
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "api/overview") as r:
                assert r.status == 200 and (await r.json())["by_status"]["Running"] == 0
            async with http.get(url) as r:
                assert r.status == 200 and "Overview" in await r.text()
    finally:
        proc.send_signal(sig)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert "stopped" in err.decode()


async def test_ui_read_only_and_the_token_from_the_environment(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    proc, line = await _start("--store", str(store), "--port", "0", "--read-only",
                              env=clean_env(DUROXIDE_UI_TOKEN=TOKEN))
    try:
        assert line.startswith("duroxide UI (read-only) at ") and f"?token={TOKEN}" in line, line
        url = line.split(" at ", 1)[1].strip()
        base = url.split("?", 1)[0]
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "api/overview") as r:
                assert r.status == 401
            async with http.get(base + "api/session", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert (await r.json())["read_only"] is True
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0


async def test_ui_refuses_a_public_host_without_a_token(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    proc = await asyncio.create_subprocess_exec(DUROXIDE, "ui", str(store), "--host", "0.0.0.0", "--port", "0",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env=clean_env())
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1 and out == b""
    assert "without a token" in err.decode() and "--token" in err.decode()


async def test_ui_with_json_prints_the_address_as_json(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    proc = await asyncio.create_subprocess_exec(DUROXIDE, "--json", "ui", str(store), "--port", "0",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env=clean_env())
    assert proc.stdout is not None
    try:
        first = b""
        while not first.rstrip().endswith(b"}"):
            first += await asyncio.wait_for(proc.stdout.readline(), 30)
        body = json.loads(first)
        assert body["url"].startswith("http://127.0.0.1:") and body["read_only"] is False and body["token"] is False
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0


_NO_UI = dedent_src('''
    """Loaded at start-up (it is on PYTHONPATH): aiohttp cannot be imported, as if never installed."""
    import sys


    class _NoAiohttp:
        def find_spec(self, name, path=None, target=None):
            if name == "aiohttp" or name.startswith("aiohttp."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None


    sys.meta_path.insert(0, _NoAiohttp())
''')


async def test_without_the_extra_the_ui_names_it(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(_NO_UI)
    proc = await asyncio.create_subprocess_exec(DUROXIDE, "ui", str(store), "--port", "0",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env=clean_env(PYTHONPATH=str(hide)))
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert "aiohttp" in err.decode() and "pip install 'duroxide[ui]'" in err.decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PROGRAM = '''
import asyncio, json, urllib.request
from duroxide_macros.prelude import *

@orchestration
async def ui_flow(ctx: OrchestrationContext, n: int) -> int:
    return n + 1

def fetch(path: str) -> dict:
    with urllib.request.urlopen("http://127.0.0.1:PORT" + path, timeout=10) as r:
        return json.load(r)

@duroxide_main(ui_port=PORT)
async def main() -> None:
    print("result", await ui_flow.run("ui-1", 41, timeout=30))
    body = await asyncio.to_thread(fetch, "/api/instances/ui-1")
    print("status", body["instance"]["status"], body["instance"]["output"])

if __name__ == "__main__":
    main()
'''


async def test_duroxide_main_serves_the_ui_while_the_program_runs(tmp_path: Path) -> None:
    port = _free_port()
    prog = tmp_path / "prog.py"
    prog.write_text(PROGRAM.replace("PORT", str(port)))
    proc = await asyncio.create_subprocess_exec(sys.executable, str(prog), cwd=tmp_path, env=clean_env(),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["result 42", "status Completed 42"]
    assert f"web UI at http://127.0.0.1:{port}/" in err.decode()
    with pytest.raises(OSError):  # stopped with the program
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)


@pytest.mark.parametrize("port", [-1, 70000, "8765", True])
def test_duroxide_main_refuses_a_bad_ui_port(port: object) -> None:
    with pytest.raises(ConfigurationError, match="ui_port"):
        duroxide_main(ui_port=port)  # type: ignore[arg-type]
