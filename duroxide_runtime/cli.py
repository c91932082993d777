"""``duroxide``: the operator's command-line tool over any store.

Usage::

    duroxide [--store URL_OR_PATH] [--schema NAME] [--json] COMMAND ...

    duroxide --store app.db list --status Running
    duroxide --store app.db show order-1
    duroxide --store app.db history order-1 --execution 2
    duroxide --store app.db cancel order-1 --reason "customer asked"
    duroxide --store app.db raise order-1 approval '{"ok": true}'
    duroxide --store app.db purge order-1
    duroxide --store app.db suspend order-1 --reason "payment provider down"
    duroxide --store app.db rewind --status Failed --name Checkout --yes --progress
    duroxide --store postgresql://db/prod purge --status Completed --older-than 86400 --yes

The store is a SQLite file (a plain path or ``sqlite://`` URL) or a PostgreSQL
URL (``postgresql://``; ``--schema`` defaults to ``duroxide``), or comes from
the ``DUROXIDE_STORE`` environment variable. The tool never creates a store.

``--json`` prints machine-readable output on stdout, and errors as
``{"code", "message", "fix"}`` on stderr. Exit codes: 0 ok, 1 the operation
failed, 2 the command line was wrong.

Text output never writes stored text to the terminal as is: control
characters (escape sequences, CR, LF, NUL, ...) in ids, names, custom status,
outputs and errors are shown escaped (``\x1b``), see :func:`cli_format.inert`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import sqlite3
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TextIO

from .client import Client
from .errors import DuroxideError, ErrorCode, InstanceNotFoundError, StoreError
from .providers.base import Provider
from .status import InstanceInfo, OrchestrationStatus
from . import cli_format as fmt
from . import cli_operations as ops
from .cli_operations import EXIT_FAILED, EXIT_OK, Aborted, confirm
from .operations import Operation
from .pending import pending_calls
from .ui.command import add_ui_command, cmd_ui, resolve_token

__all__ = ["main", "build_parser", "open_store", "UsageError", "StoreNotFoundError", "Aborted"]

EXIT_USAGE = 2  # and EXIT_OK (0), EXIT_FAILED (1) from cli_operations
#: Environment variable naming the store when ``--store`` is not given.
STORE_ENV = "DUROXIDE_STORE"
STATUSES = ("Pending", "Running", "Completed", "Failed", "Suspended")
#: Upper bound on the instances one bulk purge looks at.
BULK_LIMIT = 1_000_000


class UsageError(DuroxideError):
    """The command line is wrong (exit code 2)."""

    code = ErrorCode.USAGE


class StoreNotFoundError(DuroxideError):
    """The named store does not exist, or holds no duroxide tables; the tool never creates one."""

    code = ErrorCode.NO_SUCH_DATABASE


#: How to act on an error from this tool (the errors' own fixes name the Python API).
CLI_FIXES = {
    "INSTANCE_NOT_FOUND": "check the instance id (`duroxide list` shows what exists) and that --store names "
                          "the store the runtime uses",
    "INSTANCE_RUNNING": "cancel it first (`duroxide cancel ID`) or pass --force",
    "INSTANCE_EXISTS": "pick another --new-id, or purge the instance that has it (`duroxide purge ID`)",
}


# -- command line -------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`UsageError` (printed by :func:`main`)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}", fix=f"see `{self.prog} --help`")


def _status_arg(text: str) -> str:
    """``--status`` value, case-insensitive, normalised to ``Completed`` etc."""
    for status in STATUSES:
        if text.lower() == status.lower():
            return status
    raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(STATUSES)}")


def _terminal_status_arg(text: str) -> str:
    """``purge --status``: only finished instances can be purged in bulk."""
    status = _status_arg(text)
    if status not in ("Completed", "Failed"):
        raise argparse.ArgumentTypeError(f"bulk purge takes Completed or Failed, not {status}")
    return status


def _non_negative(text: str) -> float:
    """A number of seconds, at least 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def _positive_int(text: str) -> int:
    """A whole number, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def _global_options() -> _Parser:
    """Options accepted before or after the command (defaults are applied in :func:`main`)."""
    common = _Parser(add_help=False)
    common.add_argument("--store", default=argparse.SUPPRESS, metavar="URL_OR_PATH",
                        help=f"SQLite path or sqlite:// URL, postgresql:// URL or redis:// URL (default: ${STORE_ENV})")
    common.add_argument("--schema", default=argparse.SUPPRESS, metavar="NAME",
                        help="PostgreSQL schema, or Redis key prefix, of the store (default: duroxide)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output on stdout; errors as JSON on stderr")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The ``duroxide`` argument parser with its commands (recovery operations: :mod:`cli_operations`)."""
    common = _global_options()
    parser = _Parser(prog="duroxide", parents=[common],
                     description="Inspect and steer duroxide orchestration instances in a store.",
                     epilog="Exit codes: 0 ok, 1 operation failed, 2 usage error.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser("list", parents=[common], help="list instances, newest first")
    p.add_argument("--status", type=_status_arg, help=f"only this status ({', '.join(STATUSES)})")
    p.add_argument("--name", help="only instances of this orchestration")
    p.add_argument("--limit", type=_positive_int, default=100, help="at most this many (default 100)")

    p = commands.add_parser("show", parents=[common], help="status, custom status, output or error of an instance")
    p.add_argument("id", metavar="ID")

    p = commands.add_parser("history", parents=[common], help="the history of an instance as a timeline")
    p.add_argument("id", metavar="ID")
    p.add_argument("--execution", type=_positive_int, metavar="N",
                   help="this execution (after continue-as-new; default: the current one)")

    p = commands.add_parser("cancel", parents=[common], help="cancel a running instance (or all a filter selects)")
    p.add_argument("id", metavar="ID", nargs="?", help="the instance (or pass filters instead)")
    p.add_argument("--reason", default="cancelled by operator", help="recorded as the failure message")
    ops.add_filter_options(p, _status_arg)

    p = commands.add_parser("raise", parents=[common], help="raise an external event on an instance")
    p.add_argument("id", metavar="ID")
    p.add_argument("name", metavar="NAME", help="event name")
    p.add_argument("data", metavar="DATA", nargs="?", default="", help="event data; '-' reads it from stdin")

    p = commands.add_parser("purge", parents=[common],
                            help="delete a finished instance (or all Completed/Failed ones) with its history")
    p.add_argument("id", metavar="ID", nargs="?", help="the instance (with its sub-orchestrations)")
    p.add_argument("--force", action="store_true", help="purge ID even if it is still running")
    p.add_argument("--status", type=_terminal_status_arg, help="bulk: every instance with this status")
    p.add_argument("--older-than", type=_non_negative, metavar="SECONDS",
                   help="bulk: only those last updated at least this long ago")
    p.add_argument("--yes", action="store_true", help="bulk: do not ask for confirmation")
    p.add_argument("--progress", action="store_true", help="bulk: show progress even if stderr is not a terminal")

    commands.add_parser("queues", parents=[common],
                        help="per queue: instances waiting for a slot or running, activity calls queued or running")

    p = commands.add_parser("schedules", parents=[common],
                            help="the cron schedules: next and last tick, paused, orchestration not registered")
    p.add_argument("store_arg", metavar="STORE", nargs="?", help="the store (instead of --store)")
    p = commands.add_parser("schedule", parents=[common], help="pause, resume or delete a cron schedule")
    p.add_argument("action", choices=("pause", "resume", "delete"))
    p.add_argument("store_arg", metavar="STORE", help="the store (as --store)")
    p.add_argument("id", metavar="ID", help="the schedule")

    ops.add_operation_commands(commands, common, _status_arg)
    add_ui_command(commands, common)
    return parser


@dataclass(frozen=True)
class Options:
    """The parsed command line, typed."""

    command: str
    store: str
    schema: str | None
    json: bool
    args: argparse.Namespace

    def text(self, name: str) -> str:
        """A string argument of the command."""
        return str(getattr(self.args, name))

    def optional(self, name: str) -> Any:
        """An optional argument of the command (None when absent)."""
        return getattr(self.args, name, None)


def parse_options(argv: Sequence[str], environ: dict[str, str]) -> Options:
    """Parse ``argv``; the store falls back to ``$DUROXIDE_STORE``."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    store = getattr(args, "store_arg", None) or getattr(args, "store", None) or environ.get(STORE_ENV, "")
    if not store:
        parser.error(f"no store given: pass --store URL_OR_PATH or set {STORE_ENV}")
    command = str(args.command)
    if command == "purge":
        _check_purge_args(parser, args)
    if command in ops.FILTERED_COMMANDS:
        ops.check_operation_args(parser, args)
    if command == "ui":
        resolve_token(args, environ)
    return Options(command, store, getattr(args, "schema", None), bool(getattr(args, "json", False)), args)


def _check_purge_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``purge`` takes either an ID or ``--status``, each with its own options."""
    if (args.id is None) == (args.status is None):
        parser.error("purge takes either an instance ID or --status Completed|Failed")
    if args.id is not None and (args.older_than is not None or args.yes):
        parser.error("--older-than and --yes go with --status (bulk purge)")
    if args.status is not None and args.force:
        parser.error("--force goes with a single instance ID (bulk purge takes finished instances only)")


# -- opening a store -------------------------------------------------------------------------


def _redact(url: str) -> str:
    """``url`` without its password."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def _sqlite_path(spec: str) -> str:
    """The file a SQLite store spec names (plain path, ``sqlite:///abs.db``, ``sqlite:rel.db``)."""
    for prefix in ("sqlite://", "sqlite:"):
        if spec.startswith(prefix):
            spec = spec[len(prefix):]
            break
    path = spec.split("?", 1)[0]
    if path in ("", ":memory:"):
        raise UsageError(f"{spec!r} names no database file", fix="pass the path of the store's SQLite file")
    return path


def check_sqlite_store(path: str) -> None:
    """Raise :class:`StoreNotFoundError` unless ``path`` is an existing duroxide SQLite store (read-only check)."""
    fix = (f"check the path (relative paths start from the current directory) and pass the file the runtime "
           f"uses, with --store or {STORE_ENV}; this tool never creates a store")
    if not os.path.isfile(path):
        raise StoreNotFoundError(f"no such database: {path}", fix=fix)
    uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise StoreNotFoundError(f"{path} is not a SQLite database ({exc})", fix=fix) from exc
    if not {"instances", "history"} <= names:
        raise StoreNotFoundError(f"{path} is a SQLite database but not a duroxide store (no instances table)",
                                 fix=fix)


async def check_postgres_store(url: str, schema: str) -> None:
    """Raise unless ``schema`` at ``url`` holds a duroxide store (the provider would create it)."""
    from .providers.postgres import require_asyncpg

    require_asyncpg()  # without the `postgres` extra: say which to install, not ModuleNotFoundError
    import asyncpg

    try:
        conn = await asyncpg.connect(url, timeout=10)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StoreError(f"cannot connect to PostgreSQL at {_redact(url)}: {exc}",
                         fix="check that the server runs and the URL (host, port, user, database) is right") from exc
    try:
        found = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.instances")
    finally:
        await conn.close()
    if not found:
        raise StoreNotFoundError(f"no duroxide store in schema {schema!r} at {_redact(url)}",
                                 fix="pass the schema the runtime uses with --schema (default: duroxide); "
                                     "this tool never creates a store")


async def open_store(spec: str, schema: str | None) -> Provider:
    """Open an existing store: PostgreSQL for ``postgresql://`` URLs, Redis for ``redis://`` ones
    (``--schema`` is then the key prefix), else a SQLite file."""
    if spec.startswith(("redis://", "rediss://")):
        from .providers.redis import RedisProvider

        redis_store = await RedisProvider.new(spec, prefix=schema or "duroxide")
        if not await redis_store.holds_store():
            await redis_store.close()
            raise StoreNotFoundError(f"no duroxide store under the key prefix {redis_store.prefix!r} at {_redact(spec)}",
                                     fix="pass the prefix the runtime uses with --schema (default: duroxide); "
                                         "this tool never creates a store")
        return redis_store
    if spec.startswith(("postgresql://", "postgres://")):
        from .providers.postgres import PostgresProvider

        schema = schema or "duroxide"
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
            raise UsageError(f"schema name {schema!r} is not a plain lower-case SQL identifier",
                             fix="use letters, digits and underscores, e.g. --schema duroxide")
        await check_postgres_store(spec, schema)
        return await PostgresProvider.new(spec, schema=schema, pool_size=2)
    if schema is not None:
        raise UsageError("--schema applies to PostgreSQL stores only (and to Redis ones: the key prefix)",
                         fix="drop --schema for a SQLite store")
    if "://" in spec and not spec.startswith("sqlite:"):
        raise UsageError(f"unsupported store {spec!r}",
                         fix="pass a SQLite file path, a sqlite:// URL, a postgresql:// URL or a redis:// URL")
    from .providers.sqlite import SqliteProvider

    check_sqlite_store(_sqlite_path(spec))
    return await SqliteProvider.new(spec)


# -- output -----------------------------------------------------------------------------


@dataclass
class Output:
    """Where results go: text or JSON on stdout, notes and progress on stderr."""

    json: bool
    out: TextIO
    err: TextIO

    def emit(self, text: str, data: object) -> None:
        """Print ``text`` (each line made inert), or ``data`` as JSON in ``--json`` mode."""
        if self.json:
            self.out.write(_json_text(data, indent=2) + "\n")
        elif text:
            self.out.write(_inert_lines(text) + "\n")

    def note(self, text: str) -> None:
        """A remark for the operator, on stderr (also in ``--json`` mode)."""
        self.err.write(_inert_lines(text) + "\n")

    def error(self, exc: DuroxideError) -> None:
        """A typed error: ``error: message`` and ``fix: ...``, or a JSON object."""
        fix = CLI_FIXES.get(exc.code, exc.fix)
        if self.json:
            body = {"code": exc.code, "message": exc.message, "fix": fix}
            self.err.write(_json_text(body) + "\n")
        else:
            self.err.write(f"error: {fmt.inert(exc.message)}\n" + (f"fix: {fmt.inert(fix)}\n" if fix else ""))


def _json_text(data: object, indent: int | None = None) -> str:
    """``data`` as JSON whose non-printable characters (DEL, C1 controls such as CSI, bidi
    overrides, line separators) are ``\\u``-escaped too, so JSON on a terminal is inert as well."""
    text = json.dumps(data, indent=indent, ensure_ascii=False)
    if text.replace("\n", "").isprintable():
        return text
    return "".join(ch if ch == "\n" or ch.isprintable() else _json_escape(ch) for ch in text)


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _inert_lines(text: str) -> str:
    """``text`` with each of its lines made inert (a last defence: fields are escaped where formatted)."""
    return "\n".join(fmt.inert(line) for line in text.split("\n"))


# -- commands ---------------------------------------------------------------------------

Command = Callable[[Client, Options, Output], Awaitable[int]]


async def cmd_list(client: Client, opts: Options, out: Output) -> int:
    """``list``: instances, newest first, optionally filtered."""
    infos = await client.list_instances(status=opts.optional("status"), name=opts.optional("name"),
                                        limit=int(opts.args.limit))
    text = fmt.instance_table(infos) if infos else "no instances match"
    out.emit(text, [fmt.instance_json(i) for i in infos])
    return EXIT_OK


async def cmd_show(client: Client, opts: Options, out: Output) -> int:
    """``show ID``: the instance's fields, executions, and output or error with traceback."""
    instance_id = opts.text("id")
    info = await client.get_instance_info(instance_id)
    status = await client.get_orchestration_status(instance_id)
    details = status.details if isinstance(status, OrchestrationStatus.Failed) else None
    executions = await client.list_executions(instance_id)
    state = await client.get_states(instance_id)
    history = await client.read_history(instance_id)
    suspension = fmt.suspension_of(history) if info.status == "Suspended" else None
    pending = pending_calls(history)
    out.emit(fmt.show_text(info, details, executions, state, suspension, pending),
             fmt.show_json(info, details, executions, state, suspension, pending))
    return EXIT_OK


async def cmd_history(client: Client, opts: Options, out: Output) -> int:
    """``history ID [--execution N]``: the events of one execution as a timeline."""
    instance_id = opts.text("id")
    info = await client.get_instance_info(instance_id)
    executions = await client.list_executions(instance_id)
    execution: int = opts.optional("execution") or info.execution_id
    if execution not in executions:
        raise DuroxideError(f"instance {instance_id!r} has no execution {execution}",
                            fix=f"pick one of: {', '.join(map(str, executions)) or 'none recorded yet'}")
    events = await client.read_history(instance_id, execution)
    outcome = fmt.execution_outcome(events, info.status if execution == info.execution_id else None)
    header = f"{fmt.inert(instance_id)} ({fmt.inert(info.name)}) execution {execution} of {len(executions)}, {outcome}"
    out.emit("\n".join([header, *fmt.timeline(events)]), [fmt.event_json(e) for e in events])
    return EXIT_OK


async def _report_delivery(client: Client, out: Output, instance_id: str, delivered: bool, what: str) -> int:
    """Print whether a cancel/raise reached a running instance or found it finished."""
    if delivered:
        out.emit(f"{what} {fmt.inert(instance_id)}", {"instance_id": instance_id, "delivered": True})
    else:
        status = (await client.get_instance_info(instance_id)).status
        out.emit("", {"instance_id": instance_id, "delivered": False, "status": status})
        out.note(f"{fmt.inert(instance_id)}: already {fmt.inert(status)}; nothing done")
    return EXIT_OK


async def cmd_cancel(client: Client, opts: Options, out: Output) -> int:
    """``cancel ID [--reason R]``: ask a running instance to end Failed (cascades to children);
    with filters instead of ID, every instance they select."""
    if opts.optional("id") is None:
        return await ops.run_filtered(client, Operation.CANCEL, opts, out)
    instance_id = opts.text("id")
    delivered = await client.cancel_instance(instance_id, opts.text("reason"), by=ops.cli_by())
    return await _report_delivery(client, out, instance_id, delivered, "cancel requested for")


def _event_data(data: str, stdin: TextIO) -> str:
    """The DATA argument, or all of stdin for ``-``."""
    return stdin.read() if data == "-" else data


async def cmd_raise(client: Client, opts: Options, out: Output) -> int:
    """``raise ID NAME [DATA]``: deliver an external event."""
    instance_id, name = opts.text("id"), opts.text("name")
    data = _event_data(opts.text("data"), sys.stdin)
    delivered = await client.raise_event(instance_id, name, data, by=ops.cli_by())
    return await _report_delivery(client, out, instance_id, delivered, f"event {name!r} raised on")


async def _purge_one(client: Client, opts: Options, out: Output) -> int:
    """``purge ID [--force]``: one instance and its sub-orchestrations."""
    instance_id = opts.text("id")
    await client.get_instance_info(instance_id)  # InstanceNotFoundError for an unknown id
    purged = await client.purge(instance_id, force=bool(opts.args.force))
    if not purged:
        raise InstanceNotFoundError(instance_id, "purge")
    out.emit(f"purged {len(purged)} instance(s): {', '.join(map(fmt.inert, purged))}", {"purged": purged})
    return EXIT_OK


def _bulk_candidates(infos: Sequence[InstanceInfo], older_than: float | None, now_ms: int) -> list[InstanceInfo]:
    """The instances last updated at least ``older_than`` seconds before ``now_ms`` (all when None)."""
    if older_than is None:
        return list(infos)
    cutoff = now_ms - older_than * 1000
    return [i for i in infos if i.updated_at_ms <= cutoff]


async def _purge_bulk(client: Client, opts: Options, out: Output) -> int:
    """``purge --status S [--older-than SECONDS] [--yes]``: many finished instances, with progress."""
    status: str = opts.args.status
    older_than: float | None = opts.args.older_than
    infos = _bulk_candidates(await client.list_instances(status=status, limit=BULK_LIMIT), older_than,
                             client.clock.now_ms())
    if not infos:
        out.emit(f"no {status} instances to purge", {"purged": []})
        return EXIT_OK
    age = f" last updated over {older_than:g} s ago" if older_than is not None else ""
    if not opts.args.yes and not confirm(f"purge {len(infos)} {status} instance(s){age}, "
                                         "with their sub-orchestrations?", sys.stdin, out.err):
        raise Aborted("nothing was purged", fix="answer y, or pass --yes")
    progress = fmt.Progress("purging", len(infos), out.err, enabled=bool(opts.args.progress) or out.err.isatty())
    purged: list[str] = []
    try:
        for info in infos:
            purged += [p for p in await client.purge(info.instance_id) if p not in purged]
            progress.advance()
    finally:
        progress.finish()
    out.emit(f"purged {len(purged)} instance(s)", {"purged": purged})
    return EXIT_OK


async def cmd_purge(client: Client, opts: Options, out: Output) -> int:
    """``purge``: one instance by ID, or all Completed/Failed ones with ``--status``."""
    return await (_purge_one if opts.args.id is not None else _purge_bulk)(client, opts, out)


async def cmd_queues(client: Client, opts: Options, out: Output) -> int:
    """``queues``: what waits in each queue and what holds its slots now."""
    stats = await client.queue_stats()
    text = fmt.queue_table(stats) if stats else "no queued or running work"
    out.emit(text, [dataclasses.asdict(q) for q in stats])
    return EXIT_OK


async def cmd_schedules(client: Client, opts: Options, out: Output) -> int:
    """``schedules [STORE]``: every schedule; one whose orchestration no runtime registers is flagged."""
    schedules = await client.list_schedules()
    text = fmt.schedule_table(schedules) if schedules else "no schedules"
    out.emit(text, [fmt.schedule_json(s) for s in schedules])
    unregistered = [s for s in schedules if not s.orchestration_registered]
    if unregistered:
        out.note("not registered by any running runtime (their ticks' instances wait unstarted): "
                 + ", ".join(f"{fmt.inert(s.schedule_id)} -> {fmt.inert(s.orchestration)}" for s in unregistered))
    return EXIT_OK


async def cmd_schedule(client: Client, opts: Options, out: Output) -> int:
    """``schedule pause|resume|delete STORE ID``."""
    action, schedule_id = opts.text("action"), opts.text("id")
    if action == "delete":
        await client.delete_schedule(schedule_id)
        out.emit(f"deleted schedule {fmt.inert(schedule_id)}", {"schedule_id": schedule_id, "deleted": True})
        return EXIT_OK
    info = await (client.pause_schedule if action == "pause" else client.resume_schedule)(schedule_id)
    out.emit(f"schedule {fmt.inert(schedule_id)}: {fmt.schedule_state(info)}", fmt.schedule_json(info))
    return EXIT_OK


COMMANDS: dict[str, Command] = {
    "list": cmd_list, "show": cmd_show, "history": cmd_history, "queues": cmd_queues,
    "schedules": cmd_schedules, "schedule": cmd_schedule,
    "cancel": cmd_cancel, "raise": cmd_raise, "purge": cmd_purge, **ops.COMMANDS,
    "ui": cmd_ui,
}


# -- entry point ------------------------------------------------------------------------


async def run(opts: Options, out: Output) -> int:
    """Open the store, run the command, close the store."""
    store = await open_store(opts.store, opts.schema)
    try:
        return await COMMANDS[opts.command](Client(store), opts, out)
    finally:
        await store.close()


def main(argv: Sequence[str] | None = None) -> int:
    """The ``duroxide`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = Output("--json" in argv, sys.stdout, sys.stderr)
    try:
        opts = parse_options(argv, dict(os.environ))
        out.json = opts.json
        return asyncio.run(run(opts, out))
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except UsageError as exc:
        out.error(exc)
        return EXIT_USAGE
    except DuroxideError as exc:
        out.error(exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        out.note("interrupted")
        return 130
    except Exception as exc:  # an untyped failure of the store or the system: still one clean line
        out.error(DuroxideError(f"{type(exc).__name__}: {exc}"))
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
