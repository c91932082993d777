"""What recording the source line of each durable call costs on W2 (issue 15: at most 3%).

Runs ``benchmarks/run.py``'s W2 (300 orchestrations of 3 activities, started one
by one) in fresh processes, alternately as shipped and with the look-up of the
caller's ``file:line`` replaced by ``None`` (the one call site in the command
buffer and the one in the context), and prints the median of each and their
ratio, for throughput and for CPU time per orchestration (all threads of the
process, setup included; steadier than throughput on a busy machine).
Interleaving spreads the machine's drift over both sides.

    python benchmarks/source_cost.py --pairs 8

It first times the look-ups in place (thread CPU time spent inside them per
orchestration, against the process's CPU per orchestration): the direct figure,
which a busy machine barely moves; the interleaved pairs then show the
end-to-end effect, which on a busy machine is within its noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARK = "SOURCE-COST "


def child(recorded: bool, store: str, timed: bool = False) -> None:
    sys.path.insert(0, str(HERE))
    import run  # benchmarks/run.py: the workload as published

    spent = [0]
    if timed:  # the look-ups themselves, timed in place: a figure that load barely moves
        import duroxide_runtime.context as context
        import duroxide_runtime.engine.buffer as buffer

        real = buffer.caller_source

        def timed_lookup() -> str | None:
            t0 = time.thread_time_ns()
            try:
                return real()
            finally:
                spent[0] += time.thread_time_ns() - t0

        buffer.caller_source = timed_lookup  # type: ignore[assignment]
        context.caller_source = timed_lookup  # type: ignore[assignment]
    elif not recorded:
        import duroxide_runtime.context as context
        import duroxide_runtime.engine.buffer as buffer

        buffer.caller_source = lambda: None  # type: ignore[assignment]
        context.caller_source = lambda: None  # type: ignore[assignment]
    cfg = run.Config(store, "full", False, "")
    cpu = time.process_time()
    result = asyncio.run(run.child(cfg, "W2"))
    count = cfg.sizes.warm + cfg.sizes.w2
    cpu_ms = (time.process_time() - cpu) * 1000 / count
    print(MARK + json.dumps({"recorded": recorded, "value": result["value"], "cpu_ms": cpu_ms,
                             "lookup_us": spent[0] / 1000 / count}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=6, help="interleaved pairs of runs (default 6)")
    parser.add_argument("--store", choices=["sqlite"], default="sqlite")
    parser.add_argument("--child", choices=["on", "off", "timed"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child != "off", args.store, timed=args.child == "timed")
        return
    timed = [json.loads(line[len(MARK):]) for _ in range(3) for line in subprocess.run(
        [sys.executable, __file__, "--child", "timed", "--store", args.store], capture_output=True, text=True,
        check=True).stdout.splitlines() if line.startswith(MARK)]
    lookup = statistics.median(t["lookup_us"] for t in timed)
    cpu_ms = statistics.median(t["cpu_ms"] for t in timed)
    print(f"the look-ups, timed in place (3 runs): {lookup:.1f} us CPU per orchestration of {cpu_ms:.2f} ms "
          f"({100 * lookup / 1000 / cpu_ms:.2f}%)", flush=True)
    if args.pairs < 1:
        return
    values: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    for i in range(args.pairs):
        pair: dict[bool, dict[str, float]] = {}
        for recorded in ((True, False) if i % 2 == 0 else (False, True)):
            out = subprocess.run([sys.executable, __file__, "--child", "on" if recorded else "off",
                                  "--store", args.store], capture_output=True, text=True, check=True).stdout
            pair[recorded] = next(json.loads(line[len(MARK):]) for line in out.splitlines() if line.startswith(MARK))
            values[recorded].append(pair[recorded]["value"])
            cpu[recorded].append(pair[recorded]["cpu_ms"])
        ratios.append(pair[True]["value"] / pair[False]["value"])
        cpu_ratios.append(pair[True]["cpu_ms"] / pair[False]["cpu_ms"])
        print(f"pair {i + 1}: with source {pair[True]['value']:.0f} orch/s {pair[True]['cpu_ms']:.2f} CPU ms/orch, "
              f"without {pair[False]['value']:.0f} orch/s {pair[False]['cpu_ms']:.2f} CPU ms/orch", flush=True)
    print(f"W2 with source: {statistics.median(values[True]):.0f} orch/s, {statistics.median(cpu[True]):.2f} CPU ms "
          f"per orchestration; without: {statistics.median(values[False]):.0f} orch/s, "
          f"{statistics.median(cpu[False]):.2f} CPU ms")
    print(f"median pair ratios: throughput {statistics.median(ratios):.3f}, CPU per orchestration "
          f"{statistics.median(cpu_ratios):.3f} (cost {100 * (statistics.median(cpu_ratios) - 1):.1f}% CPU)")


if __name__ == "__main__":
    main()
