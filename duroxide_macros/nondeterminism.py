"""What breaks replay inside an orchestration: rules as data, each with its reason and its fix.

A rule names a function by its qualified name, the way the import binds it
(``from time import time`` and ``import time as t; t.time()`` are both
``time.time``), or a whole module with ``module.*``. The lint in
:mod:`duroxide_macros.lint` applies them to calls in orchestration code and
in the helpers it calls; a local variable or an attribute that happens to be
called ``time`` or ``random`` matches nothing.

Example::

    rule = rule_for("random.randint")
    assert rule is not None and "durable_newguid" in rule.fix
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Rule", "RULES", "rule_for"]


@dataclass(frozen=True)
class Rule:
    """One non-deterministic function (or module), why it breaks replay, and what to use instead."""

    name: str
    why: str
    fix: str
    #: Deterministic when called with arguments (a seed, a timestamp), like ``random.Random(42)``
    #: or ``time.gmtime(order.created)``.
    seeded: bool = False

    def matches(self, qualified_name: str) -> bool:
        if self.name.endswith(".*"):
            return qualified_name.startswith(self.name[:-1])
        return qualified_name == self.name


_CLOCK = "reads the clock, which gives another value when the orchestration is replayed"
_NOW = "await durable_utcnow() (or ctx.utc_now()), recorded once and replayed"
_RANDOM = "draws a random value, which differs when the orchestration is replayed"
_GUID = "await durable_newguid() (or ctx.new_guid()), recorded once and replayed"
_IO = "does real I/O, which runs again on every replay and may answer differently"
_IN_ACTIVITY = "an @activity that does it, called with await durable(...)"

RULES: tuple[Rule, ...] = (
    *(Rule(f"time.{fn}", _CLOCK, _NOW) for fn in (
        "time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns",
        "process_time", "process_time_ns")),
    # These read the clock only when given no time to convert (`time.gmtime(ts)` is a pure conversion).
    *(Rule(f"time.{fn}", _CLOCK, _NOW, seeded=True) for fn in ("localtime", "gmtime", "ctime", "asctime")),
    Rule("time.sleep", "blocks the event loop and is not recorded, so a replay does not wait",
         "await asyncio.sleep(...) or ctx.schedule_timer(...), a durable timer"),
    *(Rule(f"datetime.datetime.{fn}", _CLOCK, _NOW) for fn in ("now", "utcnow", "today")),
    Rule("datetime.date.today", _CLOCK, _NOW),
    Rule("uuid.uuid1", _RANDOM, _GUID),
    Rule("uuid.uuid4", _RANDOM, _GUID),
    Rule("random.Random", "seeds itself from the operating system when given no seed", "random.Random(seed) "
         "with a seed from await durable_newguid()", seeded=True),
    Rule("random.*", _RANDOM, f"{_GUID}, or {_IN_ACTIVITY}"),
    # Not `secrets.*`: `secrets.compare_digest` is a pure comparison.
    *(Rule(f"secrets.{fn}", _RANDOM, f"{_GUID}, or {_IN_ACTIVITY}") for fn in (
        "token_bytes", "token_hex", "token_urlsafe", "choice", "randbelow", "randbits", "SystemRandom")),
    Rule("os.urandom", _RANDOM, f"{_GUID}, or {_IN_ACTIVITY}"),
    Rule("os.getrandom", _RANDOM, f"{_GUID}, or {_IN_ACTIVITY}"),
    Rule("builtins.open", _IO, _IN_ACTIVITY),
    Rule("io.open", _IO, _IN_ACTIVITY),
    Rule("builtins.input", "waits for a terminal that a replay does not have",
         "an external event: await ctx.wait_for_event(name)"),
    *(Rule(f"{mod}.*", _IO, _IN_ACTIVITY) for mod in (
        "socket", "subprocess", "urllib.request", "http.client", "ftplib", "smtplib", "sqlite3",
        "requests", "httpx", "aiohttp", "asyncpg", "aiosqlite", "psycopg", "psycopg2", "redis")),
    *(Rule(f"os.{fn}", _IO, _IN_ACTIVITY) for fn in ("system", "popen", "read", "write", "remove", "unlink")),
    *(Rule(f"asyncio.{fn}", _IO, _IN_ACTIVITY) for fn in (
        "open_connection", "start_server", "create_subprocess_exec", "create_subprocess_shell", "to_thread")),
)


def rule_for(qualified_name: str) -> Rule | None:
    """The rule a call of ``qualified_name`` breaks, if any."""
    return next((rule for rule in RULES if rule.matches(qualified_name)), None)
