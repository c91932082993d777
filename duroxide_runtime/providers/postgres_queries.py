"""The operator queries of :class:`~duroxide_runtime.providers.postgres.PostgresProvider`: listing and overview.

The listing is keyset-paginated on the indexes of migration 7 (``ix_instances_created_id``,
``ix_instances_status_created``, ``ix_instances_name_created``, each ending in
``instance_id COLLATE "C"``): a page is an index range scan from the cursor that stops
after ``limit + 1`` matching rows, whatever the size of the table (a ``q`` filter, a
substring of the id, is checked on the rows the scan passes). Ids compare bytewise
(``COLLATE "C"``), as in SQLite and Python, so every store orders ties alike. The
overview's recent endings and failures are read through ``ix_instances_status_updated``;
error types come from ``error_type_m7`` (migration 7), which never fails on an
unreadable row.

Example::

    sql, args = listing_sql("duroxide", "instance_id", InstanceQuery(status="Failed", limit=20), None)
    rows = await conn.fetch(sql, *args)
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from .base import (
    CORRUPT_ERROR_TYPE, MINUTE_MS, UNKNOWN_ERROR_TYPE, FailureGroup, InstanceCount, InstanceQuery,
    decode_error_details,
)

__all__ = ["listing_sql", "overview_parts"]


def listing_sql(schema: str, columns: str, query: InstanceQuery,
                after: tuple[int, str] | None) -> tuple[str, list[object]]:
    """The statement (and its arguments) reading ``limit + 1`` rows of ``columns`` for one page.

    Only the filters given appear in the statement (no ``$1 IS NULL OR ...``), so its plan
    is an index range scan in the listing's order. ``after`` is the decoded cursor.

    Example::

        listing_sql("duroxide", "instance_id", InstanceQuery(q="order-", limit=10), (1_704_067_200_000, "order-9"))
    """
    clauses: list[str] = []
    args: list[object] = []

    def arg(value: object, cast: str) -> str:
        args.append(value)
        return f"${len(args)}::{cast}"

    for column, value in (("status", query.status), ("name", query.name), ("version", query.version)):
        if value is not None:
            clauses.append(f"{column} = {arg(value, 'text')}")
    if query.q is not None:
        clauses.append(f"strpos(instance_id, {arg(query.q, 'text')}) > 0")  # literal: no LIKE wildcards
    if after is not None:
        clauses.append(f'(created_at, instance_id COLLATE "C") < ({arg(after[0], "bigint")}, {arg(after[1], "text")})')
    where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
    limit = arg(query.limit + 1, "integer")
    return (f"SELECT {columns} FROM {schema}.instances {where}"
            f'ORDER BY created_at DESC, instance_id COLLATE "C" DESC LIMIT {limit}', args)


async def overview_parts(conn: Any, schema: str, since_ms: int, finished_statuses: Collection[str],
                         failed_status: str) -> tuple[list[InstanceCount], list[tuple[int, str, int]],
                                                      list[FailureGroup]]:
    """Counts per (status, name, version), endings per minute and failure groups (unsorted).

    ``conn`` is an asyncpg connection (in a transaction: the parts agree). Example::

        counts, per_minute, failures = await overview_parts(conn, "duroxide", since, {"Completed"}, "Failed")
    """
    s = schema
    counts = [InstanceCount(r["status"], r["name"], r["version"], r["n"]) for r in await conn.fetch(
        f"SELECT status, name, version, count(*) AS n FROM {s}.instances GROUP BY status, name, version")]
    per_minute = [(r["minute"], r["status"], r["n"]) for r in await conn.fetch(
        f"SELECT updated_at / {MINUTE_MS} * {MINUTE_MS} AS minute, status, count(*) AS n FROM {s}.instances "
        "WHERE status = ANY($1::text[]) AND updated_at >= $2::bigint GROUP BY 1, 2",
        sorted(finished_statuses), since_ms)]
    failures = []
    for r in await conn.fetch(
            f"WITH failed AS (SELECT {s}.error_type_m7(error, $3::text) AS t, instance_id, updated_at, error "
            f"FROM {s}.instances WHERE status = $1::text AND updated_at >= $2::bigint), "
            "ranked AS (SELECT t, count(*) OVER (PARTITION BY t) AS n, instance_id, updated_at, error, "
            'row_number() OVER (PARTITION BY t ORDER BY updated_at DESC, instance_id COLLATE "C" DESC) AS r '
            "FROM failed) "
            "SELECT t, n, instance_id, updated_at, error FROM ranked WHERE r = 1",
            failed_status, since_ms, CORRUPT_ERROR_TYPE):
        details = decode_error_details(r["error"])
        failures.append(FailureGroup(r["t"] or UNKNOWN_ERROR_TYPE, r["n"], r["instance_id"],
                                     details.message if details else "", r["updated_at"]))
    return counts, per_minute, failures
