"""The UI's pages over a SQLite store holding 100,000 instances: server time of each render.

Fills a fresh SQLite store with ``benchmarks/store_queries.py``'s rows (70 %
Completed, 10 % Failed, 15 % Running, 4 % Pending, 1 % Suspended; ten names,
three versions), serves the UI on a free loopback port and requests each page
over real HTTP. The figure is the server's own time for the request (its
``Server-Timing: app;dur=`` header: reading the store and rendering the page,
without the network), the median of ``--runs`` runs after one warm-up, in ms,
with [min-max]; the round trip seen by the client is shown beside it. The
target (issue 15) is under 200 ms for the instances page.

    python benchmarks/ui_instances.py                        # 100,000 instances, 15 runs
    python benchmarks/ui_instances.py --instances 20000 --runs 9
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from duroxide_runtime.providers.sqlite import SqliteProvider  # noqa: E402
from duroxide_runtime.ui.server import UIServer  # noqa: E402
from store_queries import COLUMNS, rows  # noqa: E402

TARGET_MS = 200.0


async def timed(http: aiohttp.ClientSession, url: str) -> tuple[float, float, str]:
    """(server ms, round trip ms, body) of one GET."""
    started = time.perf_counter()
    async with http.get(url) as r:
        body = await r.text()
        assert r.status == 200, (url, r.status, body[:300])
        server = float(r.headers["Server-Timing"].split("dur=")[1])
    return server, (time.perf_counter() - started) * 1000, body


async def next_cursor_url(http: aiohttp.ClientSession, base: str, pages: int) -> str:
    """The address of page ``pages`` of the unfiltered list, reached by following the pages' cursors."""
    cursor = None
    for _ in range(pages - 1):
        query = "limit=50" + (f"&cursor={quote(cursor)}" if cursor else "")
        async with http.get(f"{base}api/instances?{query}") as r:
            cursor = (await r.json())["next_cursor"]
    return f"{base}instances?cursor={quote(cursor or '')}"


async def bench(path: str, count: int, runs: int) -> bool:
    store = await SqliteProvider.new(f"sqlite://{path}")
    try:
        async with UIServer(store, port=0) as server, aiohttp.ClientSession() as http:
            base = server.url
            cases = [
                ("/instances (first page)", f"{base}instances"),
                ("/instances?status=Failed", f"{base}instances?status=Failed"),
                ("/instances?status=Failed&name=Workflow3&version=2.0.0",
                 f"{base}instances?status=Failed&name=Workflow3&version=2.0.0"),
                ("/instances?q=-00042 (rare id text)", f"{base}instances?q=-00042"),
                ("/instances page 50 (its cursor)", await next_cursor_url(http, base, 50)),
                ("/ (overview)", f"{base}"),
                ("/versions", f"{base}versions"),
                ("/instances/order-0099999", f"{base}instances/order-{count - 1:07d}"),
                ("/api/instances (JSON, first page)", f"{base}api/instances"),
            ]
            print(f"UI over SqliteProvider, {count:,} instances, median of {runs} runs [min-max], ms "
                  f"(server time; round trip)")
            ok = True
            for label, url in cases:
                await timed(http, url)  # warm
                results = [await timed(http, url) for _ in range(runs)]
                server_ms = [r[0] for r in results]
                trip_ms = [r[1] for r in results]
                median = statistics.median(server_ms)
                flag = ""
                if label.startswith("/instances") and median >= TARGET_MS:
                    flag, ok = f"  OVER the {TARGET_MS:g} ms target", False
                print(f"  {label:<56} {median:8.2f}   [{min(server_ms):.2f}-{max(server_ms):.2f}]"
                      f"   trip {statistics.median(trip_ms):8.2f}{flag}")
            return ok
    finally:
        await store.close()


async def main_async(count: int, runs: int) -> bool:
    with tempfile.TemporaryDirectory(prefix="duroxide-bench-ui-") as tmp:
        path = os.path.join(tmp, "ui.db")
        store = await SqliteProvider.new(f"sqlite://{path}")
        now = store.clock.now_ms()
        await store.close()
        conn = sqlite3.connect(path)
        started = time.perf_counter()
        conn.executemany(f"INSERT INTO instances({', '.join(COLUMNS)}) VALUES ({','.join('?' * len(COLUMNS))})",
                         rows(count, now))
        conn.commit()
        conn.close()
        print(f"loaded {count:,} rows in {time.perf_counter() - started:.1f} s")
        return await bench(path, count, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    sys.exit(0 if asyncio.run(main_async(args.instances, args.runs)) else 1)


if __name__ == "__main__":
    main()
