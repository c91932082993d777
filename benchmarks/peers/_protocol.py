"""What every benchmark script shares: the workload sizes, the result line, the command line of a peer script.

This module is the one source of ``MARK``, ``UNITS`` and the sizes for
``benchmarks/run.py``, ``benchmarks/peers.py`` and the peer scripts beside it.
It imports nothing but the standard library: a peer script runs in the peer's
own virtual environment, without duroxide_runtime, and finds this module
because Python puts the script's directory (``benchmarks/peers/``) first on
``sys.path``; ``run.py`` and ``peers.py`` add that directory to theirs.

A script runs one workload per process and prints one line
``BENCH-RESULT {json}``, which ``benchmarks/peers.py`` (or ``run.py``'s parent
side) reads.

    python benchmarks/peers/dbos_bench.py W1 --quick
    python benchmarks/peers/dbos_bench.py W1 --pg-url postgresql://postgres@127.0.0.1:5432/duroxide_bench_x \\
        --pg-schema peer_0123
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from typing import Any

#: The line prefix a benchmark process prints its result after (anything else on stdout is ignored).
MARK = "BENCH-RESULT "
#: The unit of each of W1-W4, the workloads every peer runs.
UNITS = {"W1": "ms", "W2": "orch/s", "W3": "s", "W4": "ms late"}


@dataclass(frozen=True)
class Sizes:
    """How many instances each workload runs (``FULL`` as defined, ``QUICK`` for a smoke run)."""

    w1: int = 20
    w2: int = 300
    w2_big: int = 10_000
    w3: int = 200
    w4: int = 3
    warm: int = 20
    timer: float = 1.0


FULL = Sizes()
QUICK = Sizes(w1=5, w2=100, w2_big=1_000, w3=200, w4=1, warm=5)


@dataclass(frozen=True)
class Args:
    """A peer script's command line: the workload, its sizes, and the PostgreSQL store when one is given."""

    workload: str
    sizes: Sizes
    #: The benchmark's database (``--pg-url``), or "" for the peer's SQLite (or in-memory) store.
    pg_url: str = ""
    #: A schema of this run's own inside it, which ``peers.py`` drops after the run.
    pg_schema: str = ""


def parse(*, postgres: bool = False) -> Args:
    """The command line of a peer script; ``postgres``: the peer can run on ``--pg-url``/``--pg-schema``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=sorted(UNITS))
    parser.add_argument("--quick", action="store_true")
    if postgres:
        parser.add_argument("--pg-url", default="", help="the PostgreSQL database to run in (default: SQLite)")
        parser.add_argument("--pg-schema", default="", help="the schema of this run in it")
    args = parser.parse_args()
    pg_url = getattr(args, "pg_url", "")
    pg_schema = getattr(args, "pg_schema", "")
    if bool(pg_url) != bool(pg_schema):
        parser.error("--pg-url and --pg-schema go together")
    return Args(args.workload, QUICK if args.quick else FULL, pg_url, pg_schema)


def emit(workload: str, value: float, *, each: list[float] | None = None, **extra: Any) -> None:
    """Print the result line ``peers.py`` collects."""
    result = {"workload": workload, "value": value, "unit": UNITS[workload], **extra}
    if each is not None:
        result["each"] = each
    print(MARK + json.dumps(result), flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)
