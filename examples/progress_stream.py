"""A progress bar driven by an orchestration's durable stream.

The orchestration imports files one by one; after each it emits a ``Progress``
item (``ctx.emit``) and keeps the latest in its state (``ctx.set_state``). The
client draws a bar from ``stream`` as the items are committed - the loop ends
when the orchestration ends - then reads the final state.

Run:  python examples/progress_stream.py
"""

import duroxide_macros.install  # noqa: F401

from dataclasses import dataclass

from duroxide_macros.prelude import *


@dataclass
class Progress:
    done: int
    total: int
    file: str


@activity(typed=True)
async def import_file(name: str) -> int:
    return 100 * len(name)  # the rows it imported


@orchestration
async def import_files(ctx: OrchestrationContext, files: list[str]) -> int:
    rows = 0
    for done, name in enumerate(files, start=1):
        rows += await durable(import_file(name))
        progress = Progress(done, len(files), name)
        ctx.emit(progress)                    # one stream item, recorded with this turn
        ctx.set_state("progress", progress)   # the latest, for whoever asks later
    return rows


def bar(progress: Progress, width: int = 20) -> str:
    filled = width * progress.done // progress.total
    return f"[{'#' * filled}{'.' * (width - filled)}] {progress.done}/{progress.total} {progress.file}"


@duroxide_main
async def main() -> None:
    files = ["customers.csv", "orders.csv", "invoices.csv", "refunds.csv"]
    await import_files.start("import-1", files)
    async for item in import_files.stream("import-1", Progress):   # ends when the orchestration ends
        print(bar(item.value))
    match await import_files.wait("import-1", 10):
        case OrchestrationStatus.Completed(output=rows):
            print(f"imported {rows} rows")
        case other:
            print(f"import: {other}")
    last = await import_files.get_state("import-1", "progress", Progress)
    print(f"state: {last}")


if __name__ == "__main__":
    main()
