"""Every example runs as a program and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

EXPECTED = {
    "examples/hello_world.py": ["Result: Hello, World!"],
    "examples/string_api.py": ["Completed: Hello, World!"],
    "examples/quickstart.py": ["Receipt: Receipt(order_id='ORD-123', transaction_id='TXN-ORD-123', total=99.99)"],
    "examples/order_processing.py": ["SUCCESS: ORD-12345 TXN-ORD-12345 107.25"],
    "examples/ecommerce.py": [
        "ok: shipped TRACK-A1 total 53.62",
        "refused: failed (RuntimeError: Payment failed: Amount $21775.00 exceeds limit)",
        "slow: failed (TimeoutError: Payment timeout)",
        "released: RESERVATION-A2, RESERVATION-A3-slow",
    ],
    "examples/approval.py": ["status: Completed", "big: FULFILLED-B1 (approved by Alice)", "small: FULFILLED-S2"],
    "examples/versioning.py": ["latest: version 2.0.0: v2 charged 13.20 (with fee)",
                               "pinned: version 1.0.0: v1 charged 12.00"],
    "examples/progress_stream.py": ["[#####...............] 1/4 customers.csv", "[##########..........] 2/4 orders.csv",
                                    "[###############.....] 3/4 invoices.csv",
                                    "[####################] 4/4 refunds.csv", "imported 4600 rows",
                                    "state: Progress(done=4, total=4, file='refunds.csv')"],
    "examples/infra/app.py": ["INFRASTRUCTURE PROVISIONED", "VM: vm-web-1 (10.0.1.5)", "VM: vm-web-2 (10.0.1.5)",
                              "VM: vm-db-1 (10.0.1.4)", "Network: net-production-net (10.0.0.0/24)",
                              "Status: ready"],
}


def test_every_example_is_listed() -> None:
    found = {str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*.py")} | {"examples/infra/app.py"}
    assert found == set(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs_and_prints_its_result(script: str) -> None:
    proc = subprocess.run([sys.executable, script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for expected in EXPECTED[script]:
        assert expected in lines, f"{script}: missing {expected!r} in:\n{proc.stdout}\n{proc.stderr[-2000:]}"
