"""A failed orchestration's error points at the user's code, not at ``main()`` or duroxide.

``OrchestrationFailedError`` (from ``run()`` and ``wait(..., raise_on_failure=True)``)
names the line the failure began at (``file:line in function``) and shows the
last frames of the user's code: for an exception of the orchestration, for an
activity's (its frames reach the orchestration's recorded traceback as the
cause), and through a sub-orchestration. This module is rewritten by the
pytest plugin's import hook, so the lines checked are the hook's too; each is
found by its ``# MARK:`` comment. A last test runs a real ``duroxide_main``
program, where the error used to show only ``main()``.

Names of decorated functions start with ``uf_``: discovery is global per process.
"""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from duroxide_macros import discovered_activities, discovered_orchestrations
from duroxide_macros.prelude import (
    Client,
    InMemoryProvider,
    OrchestrationContext,
    OrchestrationFailedError,
    OrchestrationStatus,
    Runtime,
    RuntimeOptions,
    SqliteProvider,
    activity,
    durable,
    orchestration,
)

from .support import TEST_OPTIONS, dedent_src, run_cmd

pytestmark = pytest.mark.timeout(120)

SOURCE = Path(__file__).read_text()
FILE = str(Path(__file__))


def _mark(name: str, source: str = SOURCE) -> int:
    hits = [i for i, line in enumerate(source.splitlines(), 1) if f"MARK:{name}" in line]
    assert len(hits) == 1, (name, hits)
    return hits[0]


def _at(func: str, mark: str) -> str:
    return f"{FILE}:{_mark(mark)} in {func}"


# -- the code that fails ---------------------------------------------------------------------


class UfDeclined(Exception):
    """An application error of the activity."""


def uf_parse_amount(text: str) -> int:
    return int(text)  # MARK:helper_raise


@activity(typed=True)
async def uf_charge(amount: int) -> str:
    if amount > 100:
        raise UfDeclined(f"amount {amount} exceeds the limit")  # MARK:activity_raise
    return f"charged {amount}"


@activity(typed=True)
def uf_charge_in_thread(amount: int) -> str:
    raise UfDeclined(f"thread declined {amount}")  # MARK:thread_activity_raise


@orchestration
async def uf_checkout(ctx: OrchestrationContext, amount: str) -> str:
    receipt = await durable(uf_charge(  # MARK:checkout_await
        uf_parse_amount(amount),  # MARK:checkout_arg
    ))
    if receipt == "charged 13":
        raise RuntimeError("13 is unlucky")  # MARK:orchestration_raise
    return receipt


@orchestration
async def uf_thread_checkout(ctx: OrchestrationContext, amount: int) -> str:
    return await durable(uf_charge_in_thread(amount))  # MARK:thread_await


@orchestration
async def uf_parent(ctx: OrchestrationContext, amount: str) -> str:
    return await durable(uf_checkout(amount))  # MARK:parent_await


@orchestration
async def uf_wrapping(ctx: OrchestrationContext, amount: str) -> str:
    try:
        return await durable(uf_checkout(amount))
    except Exception as err:
        raise ValueError("checkout failed") from err  # MARK:wrapping_raise


@orchestration
async def uf_handling(ctx: OrchestrationContext, key: str) -> str:
    try:
        return {"a": "1"}[key]
    except KeyError:
        raise LookupError(f"no price for {key}")  # MARK:handling_raise


@orchestration
async def uf_waiting(ctx: OrchestrationContext) -> str:
    return await ctx.wait_for_event("go")


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    store = await SqliteProvider.new(f"sqlite://{tmp_path / 'uf.db'}")
    rt = await (Runtime.builder().store(store).activities(discovered_activities())
                .orchestrations(discovered_orchestrations()).options(RuntimeOptions(**TEST_OPTIONS)).start())
    yield Client(store)
    await rt.shutdown(grace=2)
    await store.close()


def _frames(message: str) -> list[str]:
    """The ``file:line in function`` lines the message lists under its last frames."""
    return re.findall(r"^    (\S.* in \S+)(?: \[.*\])?$", message, re.MULTILINE)


def _only_user_frames(message: str) -> None:
    for frame in _frames(message):
        assert "duroxide_runtime" not in frame and "duroxide_macros" not in frame, message
        assert "asyncio" not in frame and "concurrent" not in frame, message


# -- the tests -------------------------------------------------------------------------------


async def test_an_orchestration_exception_names_its_line_through_run_and_wait(client: Client) -> None:
    with pytest.raises(OrchestrationFailedError) as info:
        await uf_checkout.run(client, "o-run", "13", timeout=30)
    err = info.value
    assert err.location == _at("uf_checkout", "orchestration_raise")
    assert str(err).startswith("orchestration 'o-run' failed: RuntimeError: 13 is unlucky\n")
    assert f"  at {_at('uf_checkout', 'orchestration_raise')}\n" in str(err)
    assert 'raise RuntimeError("13 is unlucky")' in str(err)  # the source line, as written
    assert _frames(str(err))[-1] == _at("uf_checkout", "orchestration_raise")
    _only_user_frames(str(err))

    await uf_checkout.start(client, "o-wait", "13")
    with pytest.raises(OrchestrationFailedError) as waited:
        await uf_checkout.wait(client, "o-wait", 30, raise_on_failure=True)
    assert waited.value.location == err.location
    assert str(waited.value) == str(err).replace("'o-run'", "'o-wait'")
    # Without raise_on_failure, wait() still returns the Failed status, its details intact.
    status = await uf_checkout.wait(client, "o-wait", 30)
    assert isinstance(status, OrchestrationStatus.Failed) and status.details is not None
    assert f'File "{FILE}", line {_mark("orchestration_raise")}, in uf_checkout' in status.details.traceback


async def test_a_helper_called_on_a_continuation_line_is_named_with_the_hooks_line_numbers(client: Client) -> None:
    with pytest.raises(OrchestrationFailedError) as info:
        await uf_checkout.run(client, "o-arg", "twelve", timeout=30)
    assert info.value.location == _at("uf_parse_amount", "helper_raise")
    assert _frames(str(info.value))[-2:] == [_at("uf_checkout", "checkout_arg"),
                                             _at("uf_parse_amount", "helper_raise")]


async def test_an_activity_exception_names_the_activitys_line_and_the_await(client: Client) -> None:
    with pytest.raises(OrchestrationFailedError) as info:
        await uf_checkout.run(client, "a-run", "500", timeout=30)
    err = info.value
    assert err.error == "ActivityFailed: activity 'uf_charge' failed: UfDeclined: amount 500 exceeds the limit"
    assert err.location == _at("uf_charge", "activity_raise")
    # Call order: the orchestration's await, then the activity's raise, marked as the activity's.
    assert _frames(str(err))[-2:] == [_at("uf_checkout", "checkout_await"), _at("uf_charge", "activity_raise")]
    assert f"{_at('uf_charge', 'activity_raise')} [activity 'uf_charge']" in str(err)
    _only_user_frames(str(err))

    # The recorded traceback carries the activity's frames as the cause of the orchestration's.
    assert err.details is not None
    tb = err.details.traceback
    activity_frame = f'File "{FILE}", line {_mark("activity_raise")}, in uf_charge'
    orchestration_frame = f'File "{FILE}", line {_mark("checkout_await")}, in uf_checkout'
    link = "The above exception was raised in activity 'uf_charge'; orchestration code received it"
    assert tb.index(activity_frame) < tb.index(link) < tb.index(orchestration_frame), tb

    await uf_checkout.start(client, "a-wait", "500")
    with pytest.raises(OrchestrationFailedError) as waited:
        await uf_checkout.wait(client, "a-wait", 30, raise_on_failure=True)
    assert waited.value.location == err.location
    assert _frames(str(waited.value)) == _frames(str(err))


async def test_a_thread_activity_exception_is_named_too(client: Client) -> None:
    with pytest.raises(OrchestrationFailedError) as info:
        await uf_thread_checkout.run(client, "t-run", 5, timeout=30)
    assert info.value.location == _at("uf_charge_in_thread", "thread_activity_raise")
    assert _frames(str(info.value))[-2:] == [_at("uf_thread_checkout", "thread_await"),
                                             _at("uf_charge_in_thread", "thread_activity_raise")]
    _only_user_frames(str(info.value))


async def test_a_failure_through_a_sub_orchestration_names_the_activity_and_each_await(client: Client) -> None:
    with pytest.raises(OrchestrationFailedError) as info:
        await uf_parent.run(client, "p-run", "700", timeout=30)
    err = info.value
    assert err.location == _at("uf_charge", "activity_raise")
    frames = _frames(str(err))
    assert frames[-3:] == [_at("uf_parent", "parent_await"), _at("uf_checkout", "checkout_await"),
                           _at("uf_charge", "activity_raise")]
    assert "[sub-orchestration 'uf_checkout'" in str(err)
    _only_user_frames(str(err))


async def test_raise_from_follows_the_cause_and_handling_an_error_does_not(client: Client) -> None:
    with pytest.raises(OrchestrationFailedError) as wrapped:
        await uf_wrapping.run(client, "w-run", "900", timeout=30)
    # `raise ... from err`: the failure began at the activity's raise; the wrapping raise is listed.
    assert wrapped.value.location == _at("uf_charge", "activity_raise")
    assert _at("uf_wrapping", "wrapping_raise") in _frames(str(wrapped.value))

    with pytest.raises(OrchestrationFailedError) as handled:
        await uf_handling.run(client, "h-run", "b", timeout=30)
    # An exception raised while handling another (no `from`) began where it was raised.
    assert handled.value.location == _at("uf_handling", "handling_raise")
    assert _frames(str(handled.value)) == [_at("uf_handling", "handling_raise")]


async def test_a_cancellation_and_a_timeout_add_no_location(client: Client) -> None:
    await uf_waiting.start(client, "c-1")
    assert await uf_waiting.cancel(client, "c-1", "changed my mind")
    with pytest.raises(OrchestrationFailedError) as cancelled:
        await uf_waiting.wait(client, "c-1", 30, raise_on_failure=True)
    assert str(cancelled.value) == "orchestration 'c-1' failed: OrchestrationCancelled: changed my mind"
    assert cancelled.value.location is None

    no_runtime = Client(InMemoryProvider())
    with pytest.raises(OrchestrationFailedError) as late:
        await uf_waiting.run(no_runtime, "c-2", timeout=0.05)
    assert str(late.value) == "orchestration 'c-2' failed: did not finish within the timeout"
    assert late.value.location is None
    # A status that is not Failed is returned as it is, raise_on_failure or not.
    assert isinstance(await uf_waiting.wait(no_runtime, "c-2", 0.01, raise_on_failure=True),
                      OrchestrationStatus.Pending)


MAIN_PROGRAM = dedent_src('''
    import duroxide_macros.install
    from duroxide_macros.prelude import *

    @activity(typed=True)
    async def ship(parcel: str) -> str:
        raise RuntimeError(f"no courier for {parcel}")  # MARK:ship_raise

    @orchestration
    async def deliver(ctx: OrchestrationContext, parcel: str) -> str:
        return await durable(ship(parcel))  # MARK:deliver_await

    @duroxide_main(provider="memory", log_level="error")
    async def main() -> None:
        await deliver.run("d-1", "box", timeout=30)

    if __name__ == "__main__":
        main()
''')


def test_an_uncaught_failure_in_a_duroxide_main_program_shows_the_users_lines(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(MAIN_PROGRAM)
    proc = run_cmd([sys.executable, str(app)], tmp_path)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    assert "OrchestrationFailedError: orchestration 'd-1' failed: ActivityFailed" in err, err
    assert f"  at {app}:{_mark('ship_raise', MAIN_PROGRAM)} in ship\n" in err, err
    assert f"    {app}:{_mark('deliver_await', MAIN_PROGRAM)} in deliver\n" in err, err
    assert 'raise RuntimeError(f"no courier for {parcel}")' in err, err

