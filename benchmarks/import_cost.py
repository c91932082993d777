"""What the import hook costs.

Generated modules of 1000 lines each:

* ``forms_mod`` imports from ``duroxide_macros`` and uses the ``durable(...)`` forms
  (dataclasses, typed and untyped activities, orchestrations, trace forms);
  ``expanded/forms_mod`` is the same module as ``duroxide-expand`` prints it;
* ``plain_mod`` is ordinary Python (functions, classes, constants), not ours;
* ``app.py``, a program's main script: ``import duroxide_macros.install``, then
  both modules; ``expanded/app.py`` is its pre-expanded source, which imports
  ``duroxide_macros`` instead of installing the hook.

Scenarios, each timed in a fresh subprocess, ``--runs`` times, interleaved;
the median is reported, and each ratio is taken against its reference from the
same runs:

=====================  ======================================================  ==========
scenario               what                                                    target
=====================  ======================================================  ==========
program: expanded      ``python expanded/app.py`` (the whole process)          1.00 (ref)
program: hook          ``python app.py``, every rewritten module cached        <= 1.10x
forms: expanded        import ``expanded/forms_mod`` without the hook          1.00 (ref)
forms: cached          import ``forms_mod`` with the hook, from its cache      (reported)
forms: cold            the same, cache deleted first (imports libcst)          (reported)
not ours: plain        import ``plain_mod`` without the hook                   1.00 (ref)
not ours: hook         import ``plain_mod`` with the hook installed            <= 1.02x
third-party: plain     import ``sortedcontainers`` (site-packages) no hook     1.00 (ref)
third-party: hook      the same with the hook (includes its one-time scan of   (reported)
                       the installed distributions' metadata)
=====================  ======================================================  ==========

For module scenarios only the ``import`` statement is timed; duroxide and its
dependencies are imported before the clock starts, and one tiny module is
imported first (the first import through a finder pays one-time costs). For
program scenarios the child's whole CPU time (``getrusage``) is taken. Both CPU
time and wall clock are reported; targets are judged on CPU time, which other
load on the machine disturbs far less. Exit status 1 if a target is missed.

    python benchmarks/import_cost.py              # 15 runs per scenario
    python benchmarks/import_cost.py --runs 31
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LINES = 1000

DRIVER = r'''
import importlib, sys, time
mode, name, path = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, path)
import duroxide_macros.prelude          # the module's dependencies, loaded before the clock starts
import duroxide_macros.hook as hook     # loaded in every scenario (it does not import libcst)
if mode == "hook":
    hook.install()
# One small module first, in every scenario: the first import through a finder pays
# one-time costs (first run of its code, the directory listing cache) that a program
# pays once, not per module; the timed import then shows the per-module cost.
importlib.import_module("warmup_mod")
c0, t0 = time.process_time(), time.perf_counter()
importlib.import_module(name)
t1, c1 = time.perf_counter(), time.process_time()
print(repr(t1 - t0), repr(c1 - c0))
'''

APP = '''import duroxide_macros.install
import forms_mod, plain_mod
from duroxide_macros.prelude import *


@activity
async def app_echo(text: str) -> str:
    return text


@orchestration
async def app_flow(ctx: OrchestrationContext, text: str) -> str:
    durable_trace_info("app {}", text)
    return await durable(app_echo(text))

'''

FORMS_HEADER = '''"""Generated: a module that uses the durable(...) forms."""

from __future__ import annotations

from dataclasses import dataclass

from duroxide_macros.prelude import *

'''

FORMS_BLOCK = '''
@dataclass
class Payload{i}:
    id: str
    amount: float
    tags: list[str]


@activity(typed=True)
async def bench_step_{i}(p: Payload{i}, factor: float) -> str:
    durable_trace_info("step {{}} for {{}}", {i}, p.id)
    return f"{{p.id}}-{{p.amount * factor:.2f}}"


@activity
async def bench_echo_{i}(text: str) -> str:
    return text


@orchestration
async def bench_flow_{i}(ctx: OrchestrationContext, p: Payload{i}) -> str:
    first = await durable(bench_step_{i}(p, 1.5))
    durable_trace_info("first {{}}", first, order_id=p.id)
    echoed = await durable(bench_echo_{i}(first))
    guid = await durable_newguid()
    if p.amount > 100:
        durable_trace_warn("large amount {{}}", p.amount)
    return echoed + guid

'''

PLAIN_HEADER = '''"""Generated: an ordinary module (shapes and sums)."""

from __future__ import annotations

import math
from collections import OrderedDict

'''

PLAIN_BLOCK = '''
LIMIT_{i} = {i} * 17


class Shape{i}:
    """A shape."""

    def __init__(self, w: float, h: float) -> None:
        self.w = w
        self.h = h

    def area(self) -> float:
        return self.w * self.h

    def scaled(self, k: float) -> "Shape{i}":
        return Shape{i}(self.w * k, self.h * k)


def compute_{i}(values: list[float]) -> float:
    total = 0.0
    for v in values:
        if v > LIMIT_{i}:
            total += math.sqrt(v)
        else:
            total -= v / 2
    cache = OrderedDict((str(k), k) for k in range(3))
    return total + len(cache)

'''


def generate(header: str, block: str, lines: int) -> str:
    text = header
    i = 0
    while text.count("\n") + block.count("\n") <= lines:
        text += block.format(i=i)
        i += 1
    text += "\n" * (lines - text.count("\n"))
    assert text.count("\n") == lines
    return text


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}


def run_once(mode: str, name: str, path: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of importing ``name`` in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", DRIVER, mode, name, str(path)], env=_env(),
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{mode} {name} failed:\n{out.stderr}")
    wall, cpu = out.stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def run_program(script: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds, user + system) of running ``script`` to its end in a fresh interpreter."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, script.name], cwd=script.parent, env=_env(),
                         capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{script} failed:\n{out.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    from duroxide_macros.expand import expand
    from duroxide_macros.hook import cache_path

    with tempfile.TemporaryDirectory(prefix="duroxide-import-bench-") as tmp:
        path = Path(tmp)
        expanded = path / "expanded"
        expanded.mkdir()
        forms = generate(FORMS_HEADER, FORMS_BLOCK, LINES)
        for folder in (path, expanded):
            (folder / "warmup_mod.py").write_text("VALUE = 1\n")
            (folder / "plain_mod.py").write_text(generate(PLAIN_HEADER, PLAIN_BLOCK, LINES))
        (path / "forms_mod.py").write_text(forms)
        (path / "app.py").write_text(APP)
        # the pre-expanded program: what duroxide-expand prints, without the hook
        (expanded / "forms_mod.py").write_text(expand(forms, str(expanded / "forms_mod.py"), "forms_mod").code)
        app = expand(APP, str(expanded / "app.py"), "__main__").code
        (expanded / "app.py").write_text(app.replace("import duroxide_macros.install\n", "import duroxide_macros\n", 1))
        rewritten_cache = Path(cache_path(str(path / "forms_mod.py")))

        def cold() -> tuple[float, float]:
            rewritten_cache.unlink(missing_ok=True)
            return run_once("hook", "forms_mod", path)

        scenarios = {
            "program: expanded": lambda: run_program(expanded / "app.py"),
            "program: hook": lambda: run_program(path / "app.py"),
            "forms: expanded": lambda: run_once("plain", "forms_mod", expanded),
            "forms: cached": lambda: run_once("hook", "forms_mod", path),
            "forms: cold": cold,
            "not ours: plain": lambda: run_once("plain", "plain_mod", path),
            "not ours: hook": lambda: run_once("hook", "plain_mod", path),
        }
        try:
            import sortedcontainers  # noqa: F401 - a pure-Python third-party package, if installed
        except ImportError:
            pass
        else:
            scenarios["third-party: plain"] = lambda: run_once("plain", "sortedcontainers", path)
            scenarios["third-party: hook"] = lambda: run_once("hook", "sortedcontainers", path)
        # Warm-up: writes the normal .pyc files and the rewritten-code caches.
        for fn in scenarios.values():
            fn()
        run_program(path / "app.py")
        assert rewritten_cache.exists(), "the hook did not cache the rewritten module"

        wall: dict[str, list[float]] = {k: [] for k in scenarios}
        cpu: dict[str, list[float]] = {k: [] for k in scenarios}
        for _ in range(args.runs):
            for key, fn in scenarios.items():  # interleaved, so drift hits every scenario alike
                w, c = fn()
                wall[key].append(w)
                cpu[key].append(c)

    print(f"{LINES}-line modules; {args.runs} fresh subprocesses per scenario, medians\n")
    ok_cpu = report("CPU time (process_time, or the child's rusage for programs) - the verdict", cpu)
    report("wall-clock time (perf_counter)", wall)
    sys.exit(0 if ok_cpu else 1)


TARGETS = {"program: hook": 1.10, "not ours: hook": 1.02}
REFERENCES = {"program": "program: expanded", "forms": "forms: expanded", "not ours": "not ours: plain",
              "third-party": "third-party: plain"}


def report(title: str, times: dict[str, list[float]]) -> bool:
    """Print one table; True if every target is met."""
    med = {k: statistics.median(v) for k, v in times.items()}
    print(title)
    print(f"  {'scenario':<20}{'median ms':>11}{'min-max ms':>21}{'ratio':>8}{'delta ms':>10}  target")
    all_ok = True
    for key, values in times.items():
        ref_key = REFERENCES[key.split(":")[0]]
        ref = med[ref_key]
        ratio = med[key] / ref
        target = TARGETS.get(key)
        verdict = ""
        if target is not None:
            ok = ratio <= target
            all_ok &= ok
            verdict = f"<= {target:.2f}x {'ok' if ok else 'MISSED'}"
        elif key == ref_key:
            verdict = "reference"
        spread = f"{min(values) * 1e3:.2f}-{max(values) * 1e3:.2f}"
        print(f"  {key:<20}{med[key] * 1e3:>11.2f}{spread:>21}{ratio:>7.3f}x{(med[key] - ref) * 1e3:>10.2f}  {verdict}")
    print()
    return all_ok


if __name__ == "__main__":
    main()
