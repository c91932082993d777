"""Cron schedules: the catch-up policy, the cron reading and which ticks a pass starts.

A schedule starts one instance of an orchestration per tick of its cron
expression, with the id ``f"{schedule_id}@{tick}"`` (the tick in UTC, e.g.
``nightly@2026-03-01T02:00:00Z``). Cron is read by the ``croniter`` library:
5 fields (``minute hour day-of-month month day-of-week``) or 6 with *seconds
first* (``*/10 * * * * *``: every 10 seconds). Every time is UTC.

Which ticks are started when the runtimes come to a schedule late (all were
down, or busy) is its :class:`CatchUp` policy; :func:`plan_ticks` decides, and
the store starts those ticks and moves the schedule's next tick in one
transaction (``Provider.fire_schedule``), so each tick starts exactly one
instance across any number of processes.

Example::

    spec = check_cron("*/5 * * * *")
    first = next_tick_ms(spec, now_ms)                 # the first tick after now
    ticks, after = plan_ticks(spec, CatchUp.ALL, first, now_ms + 3_600_000)
    [tick_instance_id("reports", t) for t in ticks]   # 'reports@...T00:05:00Z', ...
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime

from croniter import croniter

from .errors import InvalidScheduleError
from .limits import MAX_ID_CHARS, check_str

__all__ = [
    "CatchUp", "CatchUpName", "CronSpec", "ScheduleInfo", "check_cron", "check_catch_up", "next_tick_ms",
    "plan_ticks", "tick_instance_id", "MAX_TICKS_PER_PASS", "SKIP_GRACE_MS", "MAX_SCHEDULE_ID_CHARS",
    "MAX_CRON_CHARS", "REGISTERED_FRESH_MS",
]

#: Most ticks one pass of a schedule starts (``CatchUp.ALL`` after a long stop): the rest
#: are started by the next passes, which follow at once.
MAX_TICKS_PER_PASS = 1000
#: ``CatchUp.SKIP``: a tick reached more than this late (ms) counts as missed and is not started.
SKIP_GRACE_MS = 1000
#: The tick suffix ``@YYYY-MM-DDTHH:MM:SSZ`` must fit in an instance id.
MAX_SCHEDULE_ID_CHARS = MAX_ID_CHARS - len("@2026-01-01T00:00:00Z")
#: Longest cron expression, in characters.
MAX_CRON_CHARS = 256
#: A runtime that registers a schedule's orchestration says so at least this often (ms);
#: a schedule not confirmed for twice this long is reported as not registered.
REGISTERED_FRESH_MS = 30_000


@enum.unique
class CatchUp(enum.StrEnum):
    """Which missed ticks a schedule starts when the runtimes reach it late (all were stopped).

    ``SKIP``: none; a tick starts only if it is reached on time: at most
    :data:`SKIP_GRACE_MS` late, before the next tick is due (a pass that finds two or
    more ticks due was away: it starts none of them).
    ``LATEST``: the most recent missed tick only. ``ALL``: every missed tick, oldest
    first (at most :data:`MAX_TICKS_PER_PASS` per pass; the next pass goes on). Strings
    (``"skip"``, ``"latest"``, ``"all"``) are accepted wherever a policy is.

    Example::

        await client.create_schedule("hourly", "0 * * * *", "Report", catch_up=CatchUp.LATEST)
    """

    SKIP = "skip"
    LATEST = "latest"
    ALL = "all"


CatchUpName = CatchUp | str


@dataclass(frozen=True)
class CronSpec:
    """A checked cron expression: ``text`` as given, ``expression`` in croniter's field order."""

    text: str
    expression: str


def check_cron(cron: object, field: str = "cron") -> CronSpec:
    """``cron`` read and checked; :class:`InvalidScheduleError` (naming the fix) if it is not usable.

    Example: ``check_cron("0 2 * * *")`` (02:00 UTC daily); ``check_cron("* * * *")`` raises.
    """
    text = check_str(cron, field)
    if len(text) > MAX_CRON_CHARS:
        raise InvalidScheduleError(field, text, f"longer than {MAX_CRON_CHARS} characters")
    fields = text.split()
    if len(fields) not in (5, 6):
        raise InvalidScheduleError(field, text, f"it has {len(fields)} fields, not 5 or 6")
    # croniter reads a sixth field as the seconds; ours come first (as Quartz, Spring, node-cron).
    expression = " ".join(fields[1:] + fields[:1]) if len(fields) == 6 else " ".join(fields)
    spec = CronSpec(text, expression)
    try:
        _next(spec, 0)  # also finds expressions that never match ("0 0 31 2 *")
    except (ValueError, KeyError, OverflowError) as err:  # croniter's errors are ValueErrors
        raise InvalidScheduleError(field, text, str(err) or type(err).__name__) from None
    return spec


def check_catch_up(value: object) -> CatchUp:
    """A :class:`CatchUp` or its string; :class:`InvalidScheduleError` otherwise."""
    try:
        if isinstance(value, str):  # a CatchUp is a str too
            return CatchUp(value)
    except ValueError:
        pass
    raise InvalidScheduleError("catch_up", str(value), "not a catch-up policy",
                               fix="pass catch_up='skip', 'latest' or 'all' (or CatchUp.SKIP, ...)")


def next_tick_ms(spec: CronSpec, after_ms: int) -> int:
    """The first tick of ``spec`` strictly after ``after_ms`` (ms since the epoch, UTC)."""
    try:
        return _next(spec, after_ms)
    except (ValueError, KeyError, OverflowError) as err:  # a spec that check_cron took: no tick left
        raise InvalidScheduleError("cron", spec.text, str(err) or type(err).__name__) from None


def _next(spec: CronSpec, after_ms: int) -> int:
    it = croniter(spec.expression, datetime.fromtimestamp(after_ms / 1000, UTC))
    tick: datetime = it.get_next(datetime)
    return round(tick.timestamp() * 1000)


def _latest_tick_ms(spec: CronSpec, at_ms: int) -> int:
    """The last tick of ``spec`` at or before ``at_ms``."""
    it = croniter(spec.expression, datetime.fromtimestamp((at_ms + 1) / 1000, UTC))
    tick: datetime = it.get_prev(datetime)
    return round(tick.timestamp() * 1000)


def plan_ticks(spec: CronSpec, catch_up: CatchUp, next_tick: int, now_ms: int,
               limit: int = MAX_TICKS_PER_PASS) -> tuple[list[int], int]:
    """The ticks (ms) a pass at ``now_ms`` starts for a schedule due at ``next_tick``, and its next tick after.

    Ticks from ``next_tick`` up to ``now_ms`` are due. ``ALL`` starts them in order (at most
    ``limit``; the next tick is then the first not started, already due); ``LATEST`` the
    last of them; ``SKIP`` the only one, if only one is due and it is at most
    :data:`SKIP_GRACE_MS` old. The next tick of those two is the first after ``now_ms``.

    Example: every second, due at 10 s, now 13.2 s: ``ALL`` -> ``[10 s, 11 s, 12 s, 13 s]``,
    ``LATEST`` -> ``[13 s]``, ``SKIP`` -> ``[]``; next tick 14 s for each. Now 10.2 s:
    ``[10 s]`` for each.
    """
    if next_tick > now_ms:
        return [], next_tick
    if catch_up is CatchUp.ALL:
        ticks: list[int] = []
        tick = next_tick
        while tick <= now_ms and len(ticks) < limit:
            ticks.append(tick)
            tick = next_tick_ms(spec, tick)
        return ticks, tick
    latest = max(next_tick, _latest_tick_ms(spec, now_ms))
    on_time = catch_up is CatchUp.LATEST or (latest == next_tick and now_ms - latest <= SKIP_GRACE_MS)
    return ([latest] if on_time else []), next_tick_ms(spec, now_ms)


def tick_instance_id(schedule_id: str, tick_ms: int) -> str:
    """The id of the instance a schedule starts for one tick: ``schedule_id@YYYY-MM-DDTHH:MM:SSZ`` (UTC).

    Example: ``tick_instance_id("nightly", 1772330400000) == "nightly@2026-03-01T02:00:00Z"``.
    """
    moment = datetime.fromtimestamp(tick_ms / 1000, UTC)
    return f"{schedule_id}@{moment.strftime('%Y-%m-%dT%H:%M:%SZ')}"


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule as :meth:`Client.list_schedules` and :meth:`Client.get_schedule` return it.

    Times are milliseconds since the epoch (UTC). ``next_tick_ms``: the tick the runtimes
    start next (while paused, the one they would have); ``last_tick_ms`` and
    ``last_instance_id``: the latest tick started and its instance (``None`` before the
    first). ``orchestration_registered``: a runtime that registers ``orchestration`` ran
    the schedules of this store within the last minute; ``False`` means none did, so its
    ticks' instances wait (and finally fail) unstarted: the CLI and the UI flag it.

    Example::

        for s in await client.list_schedules():
            print(s.schedule_id, s.cron, s.catch_up, "paused" if s.paused else s.next_tick_ms)
    """

    schedule_id: str
    cron: str
    orchestration: str
    input: str
    version: str | None
    catch_up: CatchUp
    paused: bool
    next_tick_ms: int
    last_tick_ms: int | None
    last_instance_id: str | None
    created_at_ms: int
    updated_at_ms: int
    orchestration_registered: bool
