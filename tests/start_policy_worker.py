"""One process of the start race test (tests/test_start_policies.py): many starts sharing idempotency keys.

Run:  python tests/start_policy_worker.py KIND TARGET SCHEMA NUMBER KEYS TASKS

KIND is ``sqlite`` (TARGET: the database file; SCHEMA unused) or ``postgres``
(TARGET: the URL; SCHEMA: the test's schema). The process opens the store,
prints ``READY``, and waits for one line on stdin, so that the test lets every
process go at the same moment. Then it starts, all at once (one task each),
for each key ``key-0`` .. ``key-{KEYS-1}`` and each task number ``t`` below
TASKS, the instance ``{key}-p{NUMBER}-t{t}`` with that idempotency key. It
prints one JSON line, ``{key: [the id each start returned]}``, and exits.
No runtime runs here: only the starts race.
"""

from __future__ import annotations

import asyncio
import json
import sys

from duroxide_runtime import Client
from race_worker import open_store, wait_for_go


async def main(kind: str, target: str, schema: str, number: int, keys: int, tasks: int) -> None:
    store = await open_store(kind, target, schema)
    try:
        client = Client(store)
        await wait_for_go()
        names = [(f"key-{k}", f"key-{k}-p{number}-t{t}") for k in range(keys) for t in range(tasks)]
        ids = await asyncio.gather(*(client.start_orchestration(iid, "Raced", "", idempotency_key=key)
                                     for key, iid in names))
        returned: dict[str, list[str]] = {}
        for (key, _), iid in zip(names, ids, strict=True):
            returned.setdefault(key, []).append(iid)
        print(json.dumps(returned), flush=True)
    finally:
        await store.close()


if __name__ == "__main__":
    kind_, target_, schema_, number_, keys_, tasks_ = sys.argv[1:]
    asyncio.run(main(kind_, target_, schema_, int(number_), int(keys_), int(tasks_)))
