"""tests/run_under_load.py, the proof that the suite passes under CPU load: its summary and exit code.

It runs here on two tiny test modules (the whole suite would take minutes): a passing one must pass
every run and exit 0; a failing one stops at the first run, names the test, and exits 1; SIGTERM
stops pytest and the busy loops, prints the summary, and exits 130.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from .support import clean_env, dedent_src, eventually, run_cmd

SCRIPT = Path(__file__).with_name("run_under_load.py")


def _run_script(tmp_path: Path, *args: str) -> tuple[int, str]:
    proc = run_cmd([sys.executable, str(SCRIPT), *args], tmp_path, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def test_every_run_passing_exits_0_with_a_line_per_run(tmp_path: Path) -> None:
    (tmp_path / "test_fine.py").write_text(dedent_src("""
        def test_fine():
            assert sum(range(10)) == 45
    """))
    code, out = _run_script(tmp_path, "--runs", "2", "--load", "1", "--", str(tmp_path / "test_fine.py"))
    assert code == 0, out
    assert "=== under load (1 busy loops on" in out and "2 of 2 runs" in out, out
    assert "run 1: passed in" in out and "run 2: passed in" in out and "(1 passed in" in out, out
    assert out.rstrip().endswith("=== all runs passed"), out


def test_a_failing_run_stops_the_series_names_the_test_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / "test_broken.py").write_text(dedent_src("""
        def test_broken():
            assert 1 + 1 == 3
    """))
    code, out = _run_script(tmp_path, "--runs", "3", "--load", "1", "--", str(tmp_path / "test_broken.py"))
    assert code == 1, out
    assert "1 of 3 runs" in out and "run 1: FAILED in" in out and "run 2:" not in out, out
    assert "test_broken.py::test_broken" in out.split("=== under load")[1], out
    assert out.rstrip().endswith("=== stopped at the first failing run"), out


async def test_an_interrupted_series_stops_pytest_and_its_busy_loops_and_exits_130(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    (tmp_path / "test_waits.py").write_text(dedent_src(f"""
        import pathlib, time

        def test_waits():
            pathlib.Path({str(marker)!r}).write_text("started")
            time.sleep(600)
    """))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "--runs", "2", "--load", "1", "--", str(tmp_path / "test_waits.py"),
        cwd=tmp_path, env=clean_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        await eventually(marker.exists, timeout=120, what="the inner test to start")
        children = _children(proc.pid)
        assert len(children) == 2, children  # one busy loop and pytest
        proc.send_signal(signal.SIGTERM)  # what a CI job's timeout sends
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 130, text
    assert "0 of 2 runs" in text and text.rstrip().endswith("=== interrupted"), text
    await eventually(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), timeout=60,
                     what="the busy loop and pytest to end")


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found
