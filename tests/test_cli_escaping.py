"""The ``duroxide`` tool never writes stored text to the terminal as is (issue 10, defect 9).

Escape sequences, CR, LF, NUL and C1 controls in ids, names, custom status,
outputs and errors are shown escaped (``\\x1b``) in text output, so a stored
value can neither retitle the window, clear the screen nor forge lines;
``--json`` output is JSON-escaped and reads back to the exact stored values.
Runs the real console script on a SQLite file and a PostgreSQL schema.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from duroxide_runtime import OrchestrationContext, Provider
from duroxide_runtime.cli_format import inert
from duroxide_runtime.messages import StartOrchestration

from .support import PG_URL, Harness, drop_store, make_store
from .test_cli import Cli, Result

pytestmark = pytest.mark.timeout(120)

TITLE = "\x1b]0;pwned\x07"     # sets the terminal window title
CLEAR = "\x1b[2J\x1b[H"        # clears the screen
FORGE = "\r\nfix: run rm -rf ~"  # a line of its own that looks like the tool's
C1 = "\x9b31m"                 # CSI as one C1 character
HOSTILE = f"{TITLE}{CLEAR}ok{FORGE}{C1}\x7f"
#: Characters that must never reach the terminal raw.
RAW = ("\x1b", "\x07", "\r", "\x00", "\x9b", "\x7f")


async def hostile(ctx: OrchestrationContext, _: str) -> str:
    ctx.set_custom_status("status " + HOSTILE)
    return "output " + HOSTILE


async def hostile_failure(ctx: OrchestrationContext, _: str) -> str:
    raise ValueError("error " + HOSTILE + "\x00end")


@dataclass
class Scene:
    kind: str
    cli: Cli
    ids: dict[str, str]


@pytest.fixture(params=["sqlite", "postgres"])
async def scene(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Scene]:
    kind = str(request.param)
    store: Provider = await make_store(kind, tmp_path)
    if kind == "sqlite":
        store_args = ["--store", str(tmp_path / "test.db")]
    else:
        store_args = ["--store", PG_URL, "--schema", getattr(store, "schema")]
    harness = Harness(store, "cached")
    try:
        await harness.start({"Hostile": hostile, "HostileFailure": hostile_failure})
        # Ids the client now refuses, as an older version or another tool could have stored them
        # (PostgreSQL cannot store NUL in text, so that one is SQLite only).
        weird = "id" + TITLE + "\r" + ("\x00" if kind == "sqlite" else "") + "x"
        await store.create_instance(StartOrchestration(instance_id=weird, name="Hostile" + CLEAR,
                                                       version="1.0" + C1, input=HOSTILE))
        await harness.client.start_orchestration("done", "Hostile", HOSTILE)
        await harness.client.start_orchestration("failed", "HostileFailure", "")
        for iid in ("done", "failed"):
            assert (await harness.client.wait_for_orchestration(iid, 30)).is_terminal
        yield Scene(kind, Cli(store_args, tmp_path), {"weird": weird, "done": "done", "failed": "failed"})
    finally:
        await harness.stop()
        await drop_store(store)


def assert_inert(result: Result) -> None:
    for stream in (result.out, result.err):
        for ch in RAW:
            assert ch not in stream, f"raw {ch!r} reached the terminal:\n{stream!r}"
    assert not any(line.startswith("fix: run rm") for line in result.out.splitlines())


async def test_list_shows_stored_ids_and_names_escaped(scene: Scene) -> None:
    result = await scene.cli("list")
    assert result.code == 0, result.err
    assert_inert(result)
    assert inert(scene.ids["weird"]) in result.out and "\\x1b]0;pwned\\x07" in result.out
    assert len(result.out.splitlines()) == 1 + 3  # header + one line per instance: nothing forged


async def test_show_escapes_custom_status_output_and_error(scene: Scene) -> None:
    done = await scene.cli("show", "done")
    assert done.code == 0, done.err
    assert_inert(done)
    assert "\\x1b[2J" in done.out and "\\r\\nfix: run rm -rf ~" in done.out and "\\x9b31m" in done.out
    failed = await scene.cli("show", "failed")
    assert failed.code == 0, failed.err
    assert_inert(failed)
    assert "error:" in failed.out and "\\x00end" in failed.out and "traceback:" in failed.out


async def test_history_escapes_every_event(scene: Scene) -> None:
    for iid in ("done", "failed"):
        result = await scene.cli("history", iid)
        assert result.code == 0, result.err
        assert_inert(result)
        assert "\\x1b" in result.out


async def test_errors_and_notes_naming_a_hostile_id_are_escaped(scene: Scene) -> None:
    result = await scene.cli("show", "nope" + TITLE + FORGE)
    assert result.code == 1
    assert_inert(result)
    assert result.err.startswith("error: ") and "\\x1b]0;pwned\\x07" in result.err
    result = await scene.cli("cancel", "done", "--reason", "late")  # finished: a note on stderr
    assert result.code == 0
    assert_inert(result)


async def test_json_output_is_inert_and_exact(scene: Scene) -> None:
    result = await scene.cli("--json", "list")
    assert result.code == 0, result.err
    assert_inert(result)
    rows = {row["instance_id"]: row for row in result.json()}
    assert set(rows) == set(scene.ids.values())
    assert rows["done"]["custom_status"] == "status " + HOSTILE and rows["done"]["output"] == "output " + HOSTILE
    assert rows[scene.ids["weird"]]["name"] == "Hostile" + CLEAR
    shown = await scene.cli("--json", "show", "failed")
    assert_inert(shown)
    assert shown.json()["error_details"]["message"] == "error " + HOSTILE + "\x00end"
    history = await scene.cli("--json", "history", "done")
    assert_inert(history)
    assert history.json()[-1]["output"] == "output " + HOSTILE


def test_inert_escapes_only_what_is_not_printable() -> None:
    assert inert("plain text, \u65e5\u672c\u8a9e, e\u0301, \U0001f600") == "plain text, \u65e5\u672c\u8a9e, e\u0301, \U0001f600"
    assert inert("a\x1b[2Jb\r\nc\x00\t\x7f\x9b\u202e\u2028\ud800") == "a\\x1b[2Jb\\r\\nc\\x00\\t\\x7f\\x9b\\u202e\\u2028\\ud800"
    assert inert(None) == "-"

