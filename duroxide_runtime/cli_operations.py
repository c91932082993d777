"""``duroxide suspend|resume|rewind|restart`` and bulk ``cancel``: operators repair instances from a shell.

Each command acts on one instance (``suspend ID``) or on every instance a filter
selects (``suspend --status Running --name Checkout``). In bulk, the filter is read
once, as a snapshot of ids (newest first), the operator confirms on stderr (or passes
``--yes``), and the operation is applied to exactly those ids in turn: an instance
that cannot be acted on (wrong state, purged meanwhile) fails alone with its reason,
the others go on, and the exit code is 1 if any failed. An empty filter is refused:
it would select every instance. History records who asked (``by``, here
``cli:user@host``) and why (``--reason``).

:mod:`duroxide_runtime.cli` registers these commands; this module imports nothing
from it at run time (its ``Options`` and ``Output`` are types only here), and holds
the confirmation prompt both use.

Example::

    duroxide --store app.db suspend order-1 --reason "payment provider is down"
    duroxide --store app.db resume --status Suspended --name Checkout --yes --progress
    duroxide --store app.db restart order-2 --new-id order-2-retry
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TextIO

from . import cli_format as fmt
from .client import Client
from .errors import DuroxideError, ErrorCode, InstanceStateError
from .operations import Operation, apply_operation, select_ids
from .operator import operator_name
from .providers.base import InstanceQuery

if TYPE_CHECKING:
    from .cli import Options, Output

__all__ = [
    "EXIT_OK", "EXIT_FAILED", "Aborted", "confirm", "cli_by", "shell_fix", "add_operation_commands",
    "add_filter_options", "check_operation_args", "run_filtered", "COMMANDS", "FILTERED_COMMANDS", "OPERATIONS",
]

EXIT_OK, EXIT_FAILED = 0, 1
#: The single-instance and bulk commands of this module (``cancel``'s single form stays in :mod:`cli`).
OPERATIONS = (Operation.SUSPEND, Operation.RESUME, Operation.REWIND, Operation.RESTART)
#: The commands that take the bulk filters.
FILTERED_COMMANDS = frozenset({*map(str, OPERATIONS), str(Operation.CANCEL)})
#: The filter options, as ``--flag`` -> attribute of the parsed arguments.
_FILTERS = {"--status": "status", "--name": "name", "--version": "version", "--q": "q"}

_HELP = {
    Operation.SUSPEND: "stop an instance's code until it is resumed (one ID, or all a filter selects)",
    Operation.RESUME: "let a suspended instance run on (one ID, or all a filter selects)",
    Operation.REWIND: "let a Failed instance continue from its failure (one ID, or all a filter selects)",
    Operation.RESTART: "run a finished instance afresh with its original input (one ID, or all a filter selects)",
}
#: ``--reason`` when none is given, recorded in the history.
_DEFAULT_REASON = {
    Operation.SUSPEND: "suspended by operator", Operation.RESUME: "resumed by operator",
    Operation.REWIND: "rewound by operator", Operation.RESTART: "restarted by operator",
}
#: The progress bar's label.
_DOING = {
    Operation.SUSPEND: "suspending", Operation.RESUME: "resuming", Operation.REWIND: "rewinding",
    Operation.RESTART: "restarting", Operation.CANCEL: "cancelling",
}


class Aborted(DuroxideError):
    """The operator declined a confirmation; nothing was done.

    Example::

        if not confirm("suspend 3 instance(s)?", sys.stdin, sys.stderr):
            raise Aborted("nothing was suspended", fix="answer y, or pass --yes")
    """

    code = ErrorCode.ABORTED


def confirm(question: str, stdin: TextIO, err: TextIO) -> bool:
    """Ask on ``err``, read one line from ``stdin``; only ``y``/``yes`` agrees.

    Example::

        confirm("purge 4 Completed instance(s)?", sys.stdin, sys.stderr)   # prints "... [y/N] "
    """
    err.write(f"{question} [y/N] ")
    err.flush()
    answer = stdin.readline()
    if not answer.endswith("\n"):  # end of input: finish the prompt's line
        err.write("\n")
    return answer.strip().lower() in ("y", "yes")


def cli_by() -> str:
    """Who acts, as the history records it: ``cli:`` and the OS user and host.

    Example::

        cli_by()     # "cli:ana@ops-1"
    """
    return "cli:" + operator_name()


_API_CALL = re.compile(r"client\.(suspend|resume|rewind|restart|cancel)_instance")


def shell_fix(fix: str) -> str:
    """A fix that names the Python API (``client.resume_instance``) rewritten for the shell.

    Example::

        shell_fix("suspend it first (client.suspend_instance)")   # "suspend it first (`duroxide suspend ID`)"
    """
    return _API_CALL.sub(lambda m: f"`duroxide {m.group(1)} ID`", fix)


def _for_the_shell(err: DuroxideError) -> DuroxideError:
    """``err`` with a fix an operator at a shell can follow (state errors name the client's methods)."""
    if isinstance(err, InstanceStateError) and err.fix:
        return InstanceStateError(err.instance_id, err.operation, err.status, err.why, fix=shell_fix(err.fix))
    return err


# -- command line -------------------------------------------------------------------------


def add_filter_options(parser: argparse.ArgumentParser, status_type: Callable[[str], str]) -> None:
    """Add the bulk options (``--status --name --version --q --yes --progress``) to one command.

    ``status_type`` parses ``--status`` (the CLI's, case-insensitive). Example::

        p = commands.add_parser("cancel", parents=[common])
        p.add_argument("id", metavar="ID", nargs="?")
        add_filter_options(p, status_arg)
    """
    bulk = parser.add_argument_group("bulk: instead of ID, every instance matching all the filters given")
    bulk.add_argument("--status", type=status_type, help="only instances with this status")
    bulk.add_argument("--name", help="only instances of this orchestration")
    bulk.add_argument("--version", help="only instances of this orchestration version")
    bulk.add_argument("--q", metavar="TEXT", help="only instances whose id contains TEXT (case-sensitive)")
    bulk.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    bulk.add_argument("--progress", action="store_true", help="show progress even if stderr is not a terminal")


def add_operation_commands(commands: Any, common: argparse.ArgumentParser,
                           status_type: Callable[[str], str]) -> None:
    """Add ``suspend``, ``resume``, ``rewind`` and ``restart`` to the ``duroxide`` sub-commands.

    ``commands`` is their ``add_subparsers()`` object, ``common`` the global options'
    parent parser. Example::

        add_operation_commands(parser.add_subparsers(dest="command"), common, status_arg)
    """
    for op in OPERATIONS:
        p = commands.add_parser(str(op), parents=[common], help=_HELP[op])
        p.add_argument("id", metavar="ID", nargs="?", help="the instance (or pass filters instead)")
        if op is Operation.RESTART:
            p.add_argument("--new-id", metavar="NEW", dest="new_id",
                           help="run it as a new instance NEW (default: a new execution of ID)")
        p.add_argument("--reason", default=_DEFAULT_REASON[op], help="recorded in the history")
        add_filter_options(p, status_type)


def _filters(args: argparse.Namespace) -> dict[str, str]:
    """The filter options given, as ``--flag`` -> value."""
    return {flag: str(getattr(args, attr)) for flag, attr in _FILTERS.items() if getattr(args, attr) is not None}


def check_operation_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """An operation takes an ID or at least one filter, not both; ``--yes``, ``--progress`` go with
    filters and ``--new-id`` with an ID. Calls ``parser.error`` (a usage error) otherwise.

    Example::

        check_operation_args(parser, parser.parse_args(["suspend"]))   # usage error: needs an ID or a filter
    """
    command = str(args.command)
    filters = _filters(args)
    if args.id is None and not filters:
        parser.error(f"{command} needs an instance ID or a filter: pass ID, or at least one of "
                     f"{', '.join(_FILTERS)} (an empty filter would select every instance)")
    if args.id is not None and filters:
        parser.error(f"{command} takes either an instance ID or filters ({', '.join(filters)}), not both")
    if args.id is not None and (args.yes or args.progress):
        parser.error("--yes and --progress go with filters (bulk)")
    if getattr(args, "new_id", None) is not None and args.id is None:
        parser.error("--new-id goes with a single instance ID")


# -- commands ---------------------------------------------------------------------------


async def _one(client: Client, op: Operation, opts: Options, out: Output) -> int:
    """``OP ID``: request the operation; the runtime serving the store applies it."""
    instance_id, reason = opts.text("id"), opts.text("reason")
    try:
        if op is Operation.RESTART:
            runs_as = await client.restart_instance(instance_id, opts.optional("new_id"), reason=reason,
                                                    by=cli_by())
        else:
            await apply_operation(client, op, instance_id, reason=reason, by=cli_by())
            runs_as = instance_id
    except InstanceStateError as err:
        raise _for_the_shell(err) from err
    result: dict[str, str] = {"instance_id": instance_id, "operation": str(op)}
    text = f"{op} requested for {fmt.inert(instance_id)}"
    if op is Operation.RESTART:
        result["runs_as"] = runs_as
        text += f" (runs as {fmt.inert(runs_as)})" if runs_as != instance_id else " (as a new execution)"
    out.emit(text, result)
    return EXIT_OK


def _describe_filters(filters: dict[str, str]) -> str:
    return ", ".join(f"{flag} {fmt.inert(value)}" for flag, value in filters.items())


async def _apply(client: Client, op: Operation, instance_id: str, reason: str) -> bool:
    """Apply ``op`` to one instance; False when it found nothing to do (a cancel of a finished one)."""
    if op is Operation.CANCEL:  # cancel_instance says whether it reached a live instance
        return await client.cancel_instance(instance_id, reason, by=cli_by())
    await apply_operation(client, op, instance_id, reason=reason, by=cli_by())
    return True


async def run_filtered(client: Client, op: Operation, opts: Options, out: Output) -> int:
    """``OP --status S --name N --version V --q TEXT [--yes] [--progress]``: every instance the filters select.

    Prints what was done, what was left alone (a cancel of a finished instance) and
    what failed with why; returns 1 if any failed. Example::

        await run_filtered(client, Operation.SUSPEND, opts, out)
    """
    args = opts.args
    filters = _filters(args)
    ids = await select_ids(client, InstanceQuery(status=args.status, name=args.name, version=args.version, q=args.q))
    result: dict[str, Any] = {"operation": str(op), "total": len(ids), "done": [], "skipped": [], "failed": {}}
    if not ids:
        out.emit(f"no instances match {_describe_filters(filters)}; nothing done", result)
        return EXIT_OK
    if not args.yes and not confirm(f"{op} {len(ids)} instance(s) matching {_describe_filters(filters)}?",
                                    sys.stdin, out.err):
        raise Aborted(f"nothing was done: {op} not confirmed", fix="answer y, or pass --yes")
    progress = fmt.Progress(_DOING[op], len(ids), out.err, enabled=bool(args.progress) or out.err.isatty())
    failed: dict[str, DuroxideError] = {}
    try:
        for instance_id in ids:  # the snapshot the operator confirmed, whatever the filter selects by now
            try:
                acted = await _apply(client, op, instance_id, opts.text("reason"))
            except DuroxideError as err:
                failed[instance_id] = _for_the_shell(err)
            else:
                result["done" if acted else "skipped"].append(instance_id)
            progress.advance()
    finally:
        progress.finish()
    result["failed"] = {iid: {"code": err.code, "message": err.message, "fix": err.fix} for iid, err in failed.items()}
    out.emit(_summary(op, len(ids), result["done"], result["skipped"], failed), result)
    return EXIT_FAILED if failed else EXIT_OK


def _summary(op: Operation, total: int, done: list[str], skipped: list[str], failed: dict[str, DuroxideError]) -> str:
    """``suspend requested for 2 of 3 instance(s); 1 failed:`` and one line per failure."""
    lines = [f"{op} requested for {len(done)} of {total} instance(s)" if len(done) != total
             else f"{op} requested for {total} instance(s)"]
    if skipped:
        lines.append(f"{len(skipped)} already finished, left alone: {', '.join(map(fmt.inert, skipped))}")
    if failed:
        lines.append(f"{len(failed)} failed:")
        lines += [f"  {fmt.inert(iid)}: {fmt.inert(err.message)}" for iid, err in failed.items()]
    return "\n".join(lines)


def _command(op: Operation) -> Callable[[Client, Options, Output], Awaitable[int]]:
    async def command(client: Client, opts: Options, out: Output) -> int:
        if opts.optional("id") is not None:
            return await _one(client, op, opts, out)
        return await run_filtered(client, op, opts, out)

    command.__name__ = f"cmd_{op}"
    command.__doc__ = f"``{op} ID`` or ``{op}`` with filters: {_HELP[op]}."
    return command


#: The commands of this module by name, for :data:`duroxide_runtime.cli.COMMANDS`.
COMMANDS: dict[str, Callable[[Client, Options, Output], Awaitable[int]]] = {str(op): _command(op) for op in OPERATIONS}
