"""Run the whole test suite several times in a row while every core is kept busy.

The project's rule is that no test depends on timing under load; this script is its proof. It starts
``--load`` busy loops (default: one per core), runs ``python -m pytest`` ``--runs`` times (default 5),
stops at the first failing run, and prints each run's duration, its pytest summary line and the
tests that failed. The exit code is 0 when every run passed, 1 otherwise (130 when interrupted).

Example (from the checkout's root)::

    .venv/bin/python tests/run_under_load.py                  # the 5-in-a-row proof
    .venv/bin/python tests/run_under_load.py --runs 1         # CI: the suite once under load
    .venv/bin/python tests/run_under_load.py --runs 2 -- tests/test_clock.py -x
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent

# The loop ends by itself once its parent is gone, so that a killed script leaves no busy process behind.
BUSY_LOOP = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    pass\n"

# The lines of pytest's short summary (-rfE) that name a failed or erroring test, and the line of
# tests/conftest.py's check that every schema and database a test made was dropped.
FAILED_LINE = re.compile(r"^(FAILED|ERROR) (\S*\.py\S*)")
CLEANUP_LINE = "PostgreSQL cleanup check FAILED"
# pytest's last line, e.g. "3 failed, 1540 passed in 401.23s (0:06:41)".
SUMMARY_LINE = re.compile(r"^=*\s*((\d+ \w+|no tests ran)(, \d+ \w+)* in [\d.]+s\b.*?)\s*=*$")


@dataclasses.dataclass
class Run:
    """The outcome of one pytest run: its exit code, duration, summary line and failed test ids.

    Example::

        Run(number=1, returncode=0, seconds=402.5, summary="1550 passed in 401.2s", failures=[])
    """

    number: int
    returncode: int
    seconds: float
    summary: str
    failures: list[str]

    @property
    def passed(self) -> bool:
        """True when pytest exited 0."""
        return self.returncode == 0


@contextmanager
def busy_loops(count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` processes that each keep one core busy until the block ends.

    Example::

        with busy_loops(2):
            subprocess.run([sys.executable, "-m", "pytest"])
    """
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL) for _ in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def run_suite(number: int, python: str, pytest_args: Sequence[str]) -> Run:
    """Run pytest once from the checkout's root, echoing its output, and collect its outcome.

    Example::

        run_suite(1, sys.executable, ["tests/test_clock.py"]).passed
    """
    # --durations: the slowest tests, the first to look at should one come near its safety-net bound.
    args = [python, "-m", "pytest", "-q", "-rfE", "--durations=15", "-p", "no:cacheprovider", *pytest_args]
    print(f"=== run {number}: {' '.join(args)}", flush=True)
    started = time.monotonic()
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    failures: list[str] = []
    summary = ""
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            text = line.rstrip("\n")
            if (m := FAILED_LINE.match(text)) and m.group(2) not in failures:
                failures.append(m.group(2))
            elif text.startswith(CLEANUP_LINE):
                failures.append(text)
            if s := SUMMARY_LINE.match(text):
                summary = s.group(1)
        returncode = proc.wait()
    except KeyboardInterrupt:
        # SIGINT lets pytest finish its session, which drops the suite's PostgreSQL database.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    return Run(number, returncode, time.monotonic() - started, summary or f"pytest exited {returncode}", failures)


def report(runs: Sequence[Run], load: int, wanted: int, interrupted: bool = False) -> None:
    """Print one line per run and the overall verdict."""
    print(f"\n=== under load ({load} busy loops on {os.cpu_count()} cores): {len(runs)} of {wanted} runs")
    for run in runs:
        verdict = "passed" if run.passed else "FAILED"
        print(f"run {run.number}: {verdict} in {run.seconds:.0f} s ({run.summary})")
        for test_id in run.failures:
            print(f"    {test_id}")
    ok = len(runs) == wanted and all(r.passed for r in runs)
    if interrupted:
        print("=== interrupted", flush=True)
    else:
        print("=== all runs passed" if ok else "=== stopped at the first failing run", flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM (a CI timeout) cleans up like Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the suite under load, print the summary; 0 if every run passed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="how many runs in a row must pass (default 5)")
    parser.add_argument("--load", type=int, default=os.cpu_count() or 1,
                        help="busy loops to run meanwhile (default: one per core)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs pytest")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (put them after --)")
    options = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    # Started in the background (`cmd &` without job control), this process ignores SIGINT, and so would
    # pytest and the programs the Ctrl-C tests interrupt; a handler is reset to the default on exec.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    runs: list[Run] = []
    try:
        with busy_loops(options.load):
            for number in range(1, options.runs + 1):
                run = run_suite(number, options.python, options.pytest_args)
                runs.append(run)
                if not run.passed:
                    break
    except KeyboardInterrupt:
        report(runs, options.load, options.runs, interrupted=True)
        return 130
    report(runs, options.load, options.runs)
    return 0 if len(runs) == options.runs and all(r.passed for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
