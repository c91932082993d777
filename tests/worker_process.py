"""Worker subprocesses for the crash and cluster tests: spawn, wait until ready, freeze, kill, stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

__all__ = ["WorkerProcess", "release_together"]


class WorkerProcess:
    """One worker script in a subprocess; it prints READY when its runtime runs; stderr goes to a log file."""

    def __init__(self, number: int, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.number = number
        self.proc = proc
        self.log_path = log_path

    @classmethod
    async def spawn(cls, number: int, script: Path, args: list[str], logs: Path,
                    ready_timeout: float = 60.0) -> WorkerProcess:
        log_path = logs / f"worker-{number}.log"
        with open(log_path, "wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(script), *args,
                stdout=asyncio.subprocess.PIPE, stderr=log, cwd=str(script.parent.parent))
        worker = cls(number, proc, log_path)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), ready_timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"worker {number} not ready in {ready_timeout}s\n{worker.log_tail()}") from None
        if not line.startswith(b"READY"):
            await proc.wait()
            raise AssertionError(f"worker {number} did not start (rc={proc.returncode}, stdout={line!r})\n"
                                 f"{worker.log_tail()}")
        return worker

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return f"--- {self.log_path.name} (last {lines} lines) ---\n" + "\n".join(text[-lines:])

    async def freeze(self) -> None:
        """SIGSTOP, and wait until the process is really stopped (nothing more reaches the ledger)."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        for _ in range(1000):
            with open(f"/proc/{self.proc.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("T", "t"):
                    return
            await asyncio.sleep(0.001)
        raise AssertionError(f"worker {self.number} did not stop on SIGSTOP")

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    async def sigkill(self) -> int:
        os.kill(self.proc.pid, signal.SIGKILL)
        return await self.proc.wait()

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode if self.proc.returncode is not None else -1


async def release_together(script: Path, argvs: list[list[str]], ready_timeout: float = 60.0,
                           run_timeout: float = 90.0) -> list[Any]:
    """Start ``script`` once per argument list, wait until each says READY, then let them all go at once.

    The race workers (tests/race_worker.py) wait for a line on stdin after READY. Returns the
    JSON value each printed on its last line, in order; a process that fails fails the test
    with its stderr, and none is left running.
    """
    procs: list[asyncio.subprocess.Process] = []
    try:
        for argv in argvs:
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, str(script), *argv,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE))
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), ready_timeout)
            assert line.startswith(b"READY"), line + (await proc.stderr.read() if proc.stderr else b"")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        outputs = []
        for proc in procs:
            out, err = await asyncio.wait_for(proc.communicate(), run_timeout)
            assert proc.returncode == 0, err.decode()
            outputs.append(json.loads(out.decode().strip().splitlines()[-1]))
        return outputs
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
