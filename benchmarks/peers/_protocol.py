"""What every peer script shares: the workload sizes and how a result is printed.

A peer script runs one workload per process, in the peer's own virtual
environment (so it imports nothing of duroxide_runtime), and prints one line
``BENCH-RESULT {json}`` that ``benchmarks/peers.py`` reads, the same protocol
as ``benchmarks/run.py --child``. Sizes match ``run.py``'s.

    python benchmarks/peers/dbos_bench.py W1 --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from typing import Any

MARK = "BENCH-RESULT "
UNITS = {"W1": "ms", "W2": "orch/s", "W3": "s", "W4": "ms late"}


@dataclass(frozen=True)
class Sizes:
    """How many instances each workload runs; ``quick`` shrinks them for a smoke run."""

    w1: int = 20
    w2: int = 300
    w3: int = 200
    w4: int = 3
    warm: int = 20
    timer: float = 1.0


def parse() -> tuple[str, Sizes]:
    """The workload named on the command line and its sizes."""
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=sorted(UNITS))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = Sizes(w1=5, w2=100, w4=1, warm=5) if args.quick else Sizes()
    return args.workload, sizes


def emit(workload: str, value: float, *, each: list[float] | None = None, **extra: Any) -> None:
    """Print the result line ``peers.py`` collects."""
    result = {"workload": workload, "value": value, "unit": UNITS[workload], **extra}
    if each is not None:
        result["each"] = each
    print(MARK + json.dumps(result), flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)
