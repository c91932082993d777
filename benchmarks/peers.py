"""W1-W4 on duroxide_runtime and on its peers, interleaved, side by side.

The peers, each installed into a virtual environment of its own under
``benchmarks/.peers/`` (created on first use, reused after):

* ``dbos`` 3.4.0 (DBOS Transact) on its default store, a SQLite file;
* ``duroxide`` 0.2.x (the Rust core's Python SDK) on a SQLite file, default options;
* ``durabletask`` 1.12.0 with its in-memory test backend: NOT durable (it needs
  a sidecar this machine does not have), a floor of the SDK's own overhead.

With ``--store postgres`` every row runs on one PostgreSQL server: a database
``duroxide_bench_<random>`` created for the run through ``DUROXIDE_PG_URL``
(default ``postgresql://postgres@127.0.0.1:5432/postgres``, whose own database
is only used to CREATE and DROP it) and dropped at the end, also on Ctrl-C,
SIGTERM or a failure. Ours runs on ``PostgresProvider``, DBOS with its system
database there (``system_database_url``), duroxide on its SDK's
``PostgresProvider``; each run in a schema of its own, dropped after the run.
durabletask has no PostgreSQL store and is skipped, with the reason.

Each peer's workloads are a small script in ``benchmarks/peers/``; ours are
``benchmarks/run.py``'s (``--durability`` full and/or relaxed). Every
run is a fresh process; runs go round-robin (ours, dbos, duroxide,
durabletask, ours, ...) for each workload, so a change of load on the machine
falls on all alike. A peer that cannot be installed or run is reported with
the reason, and the others go on. The table shows the median of ``--runs``
runs with [min-max], then ours / peer for each median.

    python benchmarks/peers.py                       # 3 runs of W1-W4 each, ours at full and relaxed durability
    python benchmarks/peers.py --quick               # smoke run: 1 run, smaller sizes
    python benchmarks/peers.py --runs 5 --peers dbos,duroxide --durability full
    python benchmarks/peers.py --store postgres --workloads W1,W2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# The result line and units come from the module the peer scripts import (stdlib only, as their venvs have
# no duroxide_runtime); the PostgreSQL database helper is run.py's. This script's directory is on sys.path.
sys.path.append(str(HERE / "peers"))
from _protocol import MARK, UNITS  # noqa: E402
from run import PgDatabase, create_database  # noqa: E402

WORKLOADS = list(UNITS)
STORES = ["sqlite", "postgres"]


@dataclass(frozen=True)
class Peer:
    """What a peer is installed from (pip requirement) and how its row is labelled on each store."""

    requirement: str
    #: ``{v}`` is the installed version; a store missing here has no row, for ``unsupported``'s reason.
    labels: dict[str, str]
    unsupported: str = ""


PEERS: dict[str, Peer] = {
    "dbos": Peer("dbos==3.4.0", {"sqlite": "DBOS {v}, SQLite (its default)",
                                 "postgres": "DBOS {v}, PostgreSQL (system database, same server)"}),
    "duroxide": Peer("duroxide>=0.2,<0.3", {"sqlite": "duroxide {v}, SQLite, defaults",
                                            "postgres": "duroxide {v}, PostgreSQL (its SDK's PostgresProvider)"}),
    "durabletask": Peer("durabletask==1.12.0", {"sqlite": "durabletask {v}, in-memory backend (NOT durable)"},
                        unsupported="no PostgreSQL store: its only backend that runs here is the in-memory test "
                                    "backend (a durable one needs a sidecar this machine does not have)"),
}
STORE_NAMES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


@dataclass
class Impl:
    """One row of the table: how to run a workload on it, and what came back."""

    key: str
    label: str
    command: list[str]
    #: The benchmark's PostgreSQL database, when each run needs a schema made up (and dropped) here.
    schemas_in: PgDatabase | None = None
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    locked_warnings: int = 0

    def run(self, workload: str, quick: bool, timeout: float) -> None:
        cmd = self.command + [workload] + (["--quick"] if quick else [])
        if self.schemas_in is None:
            self._run(cmd, workload, timeout)
            return
        schema = f"peer_{uuid.uuid4().hex[:12]}"
        try:
            self._run(cmd + ["--pg-url", self.schemas_in.url, "--pg-schema", schema], workload, timeout)
        finally:  # a fresh store for every run, as on SQLite, and nothing left behind by a crashed one
            self.schemas_in.drop_schema(schema)

    def _run(self, cmd: list[str], workload: str, timeout: float) -> None:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.errors.append(f"{workload}: timed out after {timeout:.0f} s")
            return
        # duroxide logs a warning each time SQLite said "database is locked" and it backed off.
        self.locked_warnings += proc.stderr.count("database is locked") + proc.stdout.count("database is locked")
        for line in proc.stdout.splitlines():
            if line.startswith(MARK):
                self.results.setdefault(workload, []).append(json.loads(line[len(MARK):]))
                return
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        self.errors.append(f"{workload}: exit status {proc.returncode}: {tail[-400:]}")

    def values(self, workload: str) -> list[float]:
        return [float(r["value"]) for r in self.results.get(workload, [])]


def ensure_peer(name: str, cache: Path) -> tuple[Path | None, str]:
    """The peer's interpreter in its own venv under ``cache`` (installed if needed), or None and why not."""
    requirement = PEERS[name].requirement
    venv = cache / name
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if python.exists() and stamp.exists() and stamp.read_text() == requirement:
        return python, "cached"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True,
                       text=True, timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "-q", requirement], check=True, capture_output=True,
                       text=True, timeout=900)
    except subprocess.CalledProcessError as exc:
        last = " | ".join((exc.stderr or exc.stdout or "").strip().splitlines()[-3:])
        return None, f"could not install {requirement}: {last}"
    except subprocess.TimeoutExpired:
        return None, f"installing {requirement} timed out"
    except OSError as exc:
        return None, f"cannot create a venv in {venv}: {exc}"
    stamp.write_text(requirement)
    return python, "installed"


def peer_version(python: Path, name: str) -> str:
    proc = subprocess.run([str(python), "-c", f"from importlib.metadata import version; print(version({name!r}))"],
                          capture_output=True, text=True)
    return proc.stdout.strip() or "?"


def fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{fmt(med)} [{fmt(min(values))}-{fmt(max(values))}]" if len(values) > 1 else fmt(med)


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python {platform.python_version()}"


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=None, help="runs per workload and implementation (default 3; "
                                                               "1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 run, smaller sizes")
    parser.add_argument("--store", choices=STORES, default="sqlite",
                        help="where every row keeps its state (default sqlite; postgres: a database of the run's "
                             "own on the server DUROXIDE_PG_URL names, dropped at the end)")
    parser.add_argument("--peers", default="dbos,duroxide,durabletask", help="comma-separated subset of the peers")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset of W1-W4")
    parser.add_argument("--durability", choices=["full", "relaxed", "both"], default="both",
                        help="ours at which store durability (default both: one row each)")
    parser.add_argument("--cache", type=Path, default=HERE / ".peers", help="where the peers' venvs live")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one run may take")
    args = parser.parse_args()
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    workloads = [w for w in args.workloads.split(",") if w]
    peers = [p for p in args.peers.split(",") if p]
    for name in workloads:
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    for name in peers:
        if name not in PEERS:
            parser.error(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")

    skipped: list[str] = []
    for name in peers:  # said first: a skipped peer is never installed
        if args.store not in PEERS[name].labels:
            print(f"peer {name}: skipped on {STORE_NAMES[args.store]}: {PEERS[name].unsupported}", file=sys.stderr,
                  flush=True)
            skipped.append(f"{name}: {PEERS[name].unsupported}")
    db = create_database() if args.store == "postgres" else None
    try:
        run_all(args, runs, workloads, [p for p in peers if args.store in PEERS[p].labels], skipped, db)
    finally:
        if db is not None:
            db.drop()


def run_all(args: argparse.Namespace, runs: int, workloads: list[str], peers: list[str], skipped: list[str],
            db: PgDatabase | None) -> None:
    """Prepare the rows, run them round-robin, print the table, the ratios and the notes."""
    where = db.describe() if db is not None else "SQLite, a fresh file per run"
    print(f"store: {where}", file=sys.stderr, flush=True)
    impls: list[Impl] = []
    for durability in (["full", "relaxed"] if args.durability == "both" else [args.durability]):
        command = [sys.executable, str(HERE / "run.py"), "--store", args.store, "--durability", durability]
        if db is not None:
            command += ["--pg-url", db.url]  # run.py's child makes (and drops) a schema of its own per run
        impls.append(Impl(f"ours-{durability}", f"ours, {STORE_NAMES[args.store]}, durability={durability}",
                          command + ["--child"]))
    for name in ["dbos", "duroxide", "durabletask"]:  # the round-robin order
        if name not in peers:
            continue
        print(f"peer {name}: preparing its venv in {args.cache / name} ...", file=sys.stderr, flush=True)
        python, how = ensure_peer(name, args.cache)
        if python is None:
            print(f"peer {name}: skipped: {how}", file=sys.stderr, flush=True)
            skipped.append(f"{name}: {how}")
            continue
        label = PEERS[name].labels[args.store].format(v=peer_version(python, name))
        impls.append(Impl(name, label, [str(python), str(HERE / "peers" / f"{name}_bench.py")], schemas_in=db))

    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = load()
    t0 = time.monotonic()
    for workload in workloads:
        for r in range(runs):
            for impl in impls:
                print(f"{workload} run {r + 1}/{runs}: {impl.key} ...", file=sys.stderr, flush=True)
                impl.run(workload, args.quick, args.timeout)
    minutes = (time.monotonic() - t0) / 60

    print(f"\n{started:%Y-%m-%d %H:%M} UTC, {minutes:.1f} min; {machine()}")
    print(f"store: {where}")
    print(f"load average (1/5/15 min) at start {load_before}, at end {load()}")
    print(f"{runs} run(s) each, interleaved, each in a fresh process; median [min-max]"
          + ("; QUICK sizes, not the defined workloads" if args.quick else ""))
    print()
    print("| implementation | " + " | ".join(f"{w} {UNITS[w]}" for w in workloads) + " |")
    print("|---|" + "---|" * len(workloads))
    for impl in impls:
        print(f"| {impl.label} | " + " | ".join(cell(impl.values(w)) for w in workloads) + " |")
    ours = [i for i in impls if i.key.startswith("ours")]
    others = [i for i in impls if not i.key.startswith("ours")]
    if ours and others:
        print()
        print("ours / peer (medians; W2 is a rate, so above 1 means ours is faster; W1, W3 and W4 are times, so "
              "below 1 means ours is faster):")
        print()
        print("| ratio | " + " | ".join(workloads) + " |")
        print("|---|" + "---|" * len(workloads))
        for o in ours:
            for p in others:
                row = []
                for w in workloads:
                    a, b = o.values(w), p.values(w)
                    ok = a and b and statistics.median(b) != 0
                    row.append(f"{statistics.median(a) / statistics.median(b):.2f}" if ok else "-")
                print(f"| {o.key} / {p.key} | " + " | ".join(row) + " |")
    notes = [f"skipped {s}" for s in skipped]
    for impl in impls:
        notes += [f"{impl.key} run failed: {e}" for e in impl.errors]
        if impl.locked_warnings:
            notes.append(f"{impl.key} logged 'database is locked' {impl.locked_warnings} times (it retried)")
        timers = [" ".join(f"{x:.1f}" for x in r.get("each", [])) for r in impl.results.get("W4", [])]
        if timers and "W4" in workloads:
            notes.append(f"{impl.key} W4 each timer, ms late: " + " | ".join(timers))
        for result in (x for rs in impl.results.values() for x in rs):
            for note in result.get("notes", []):
                if f"{impl.key}: {note}" not in notes:
                    notes.append(f"{impl.key}: {note}")
    if notes:
        print()
        for note in notes:
            print(f"- {note}")


if __name__ == "__main__":
    main()
