"""The operator queries of :class:`~duroxide_runtime.providers.sqlite.SqliteProvider`: listing and overview.

Plain functions on a ``sqlite3`` connection, run on the store's connection thread.
The listing is keyset-paginated on the indexes of schema 5 (``ix_instances_created_id``,
``ix_instances_status_created``, ``ix_instances_name_created``): a page walks the
index from the cursor and stops after ``limit + 1`` matching rows, so its cost does
not grow with the table (a ``q`` filter, a substring of the id, is checked on the
rows the walk passes). The overview counts from ``ix_instances_status_name_version``
alone (a scan of a small index, already in group order) and reads its recent endings
and failures through ``ix_instances_status_updated``.

Example::

    sql, args = listing_sql("instance_id", InstanceQuery(status="Failed", limit=20), None)
    rows = conn.execute(sql, args).fetchall()
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection

from .base import (
    CORRUPT_ERROR_TYPE, MINUTE_MS, UNKNOWN_ERROR_TYPE, FailureGroup, InstanceCount, InstanceQuery,
    decode_error_details,
)

__all__ = ["listing_sql", "overview_parts", "COUNTS_SQL", "FAILURES_SQL", "per_minute_sql"]


def listing_sql(columns: str, query: InstanceQuery, after: tuple[int, str] | None) -> tuple[str, list[object]]:
    """The statement (and its arguments) reading ``limit + 1`` rows of ``columns`` for one page.

    Only the filters given appear in the statement, so SQLite picks the index that serves
    them in order (status, or name, or creation time). ``after`` is the decoded cursor.

    Example::

        listing_sql("instance_id", InstanceQuery(q="order-", limit=10), (1_704_067_200_000, "order-9"))
    """
    clauses: list[str] = []
    args: list[object] = []
    for column, value in (("status", query.status), ("name", query.name), ("version", query.version)):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    if query.q is not None:
        clauses.append("instr(instance_id, ?) > 0")  # a literal substring: no LIKE wildcards to escape
        args.append(query.q)
    if after is not None:
        clauses.append("(created_at, instance_id) < (?, ?)")
        args.extend(after)
    where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
    args.append(query.limit + 1)
    return (f"SELECT {columns} FROM instances {where}ORDER BY created_at DESC, instance_id DESC LIMIT ?", args)


#: The error type of a failed row: its stored error's ``error_type``; unreadable JSON groups as
#: decode_error_details reads it (CorruptHistoryError); no error or no type: NULL (UNKNOWN_ERROR_TYPE).
#: The column is a BLOB of JSON text: SQLite's JSON functions take text only.
_ERROR_TYPE = ("CASE WHEN error IS NULL THEN NULL WHEN json_valid(CAST(error AS TEXT)) "
               "THEN json_extract(CAST(error AS TEXT), '$.error_type') ELSE ? END")


#: Instances per (status, name, version).
COUNTS_SQL = "SELECT status, name, version, COUNT(*) FROM instances GROUP BY status, name, version"

#: Per error type of the rows of one status (?2) updated since ?3: its size and its row updated last
#: (ties: the greatest id). ?1 names the type of an unreadable error.
FAILURES_SQL = (
    f"WITH failed AS (SELECT {_ERROR_TYPE} AS t, instance_id, updated_at, error FROM instances "
    "WHERE status = ? AND updated_at >= ?), "
    "ranked AS (SELECT t, COUNT(*) OVER (PARTITION BY t) AS n, instance_id, updated_at, error, "
    "ROW_NUMBER() OVER (PARTITION BY t ORDER BY updated_at DESC, instance_id DESC) AS r FROM failed) "
    "SELECT t, n, instance_id, updated_at, error FROM ranked WHERE r = 1")


def per_minute_sql(statuses: int) -> str:
    """Rows of ``statuses`` statuses (the first arguments) updated since the last argument, per minute and status.

    Example: ``conn.execute(per_minute_sql(2), ("Completed", "Failed", since_ms))``.
    """
    return (f"SELECT updated_at / {MINUTE_MS} * {MINUTE_MS}, status, COUNT(*) FROM instances "
            f"WHERE status IN ({','.join('?' * statuses)}) AND updated_at >= ? GROUP BY 1, 2")


def overview_parts(conn: sqlite3.Connection, since_ms: int, finished_statuses: Collection[str],
                   failed_status: str) -> tuple[list[InstanceCount], list[tuple[int, str, int]], list[FailureGroup]]:
    """Counts per (status, name, version), endings per minute and failure groups (unsorted).

    Example::

        counts, per_minute, failures = overview_parts(conn, now - 3_600_000, {"Completed", "Failed"}, "Failed")
    """
    counts = [InstanceCount(status, name, version, n) for status, name, version, n in conn.execute(COUNTS_SQL)]
    finished = sorted(finished_statuses)
    per_minute: list[tuple[int, str, int]] = [] if not finished else [
        (minute, status, n) for minute, status, n in conn.execute(per_minute_sql(len(finished)),
                                                                  (*finished, since_ms))]
    failures = []
    for error_type, n, instance_id, updated_at, error in conn.execute(
            FAILURES_SQL, (CORRUPT_ERROR_TYPE, failed_status, since_ms)):
        details = decode_error_details(error)
        failures.append(FailureGroup(error_type if isinstance(error_type, str) and error_type else UNKNOWN_ERROR_TYPE,
                                     n, instance_id, details.message if details else "", updated_at))
    return counts, per_minute, failures
