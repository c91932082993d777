"""One process of the debounce race test (tests/test_debounce_processes.py): debounced starts sharing keys.

Run:  python tests/debounce_worker.py KIND TARGET SCHEMA NUMBER ROUND KEYS CALLS

KIND is ``sqlite`` (TARGET: the database file; SCHEMA unused) or ``postgres``
(TARGET: the URL; SCHEMA: the test's schema). The process opens the store,
prints ``READY`` and waits for one line on stdin, so that the test lets every
process go at the same moment. Then, for each key ``key-0`` .. ``key-{KEYS-1}``
at once (one task per key), it makes CALLS debounced starts one after the other:
call ``t`` names instance ``{key}-r{ROUND}-p{NUMBER}-t{t}`` with input
``p{NUMBER}-t{t}`` and ``debounce_key=key``. It prints one JSON line,
``{key: [the id each call returned, in order]}``, and exits. No runtime runs
here: nothing picks a held start up, so a window stays open until the test does.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import timedelta

from duroxide_runtime import Client
from race_worker import open_store, wait_for_go


async def main(kind: str, target: str, schema: str, number: int, round_: int, keys: int, calls: int) -> None:
    store = await open_store(kind, target, schema)
    try:
        client = Client(store)
        await wait_for_go()

        async def burst(key: str) -> list[str]:
            return [await client.start_orchestration(f"{key}-r{round_}-p{number}-t{t}", "Digest", f"p{number}-t{t}",
                                                     debounce=timedelta(seconds=1), debounce_key=key)
                    for t in range(calls)]

        names = [f"key-{k}" for k in range(keys)]
        returned = await asyncio.gather(*(burst(key) for key in names))
        print(json.dumps(dict(zip(names, returned, strict=True))), flush=True)
    finally:
        await store.close()


if __name__ == "__main__":
    kind_, target_, schema_, number_, round_arg, keys_, calls_ = sys.argv[1:]
    asyncio.run(main(kind_, target_, schema_, int(number_), int(round_arg), int(keys_), int(calls_)))
