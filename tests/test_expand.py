"""The rewrite itself (``duroxide_macros.expand``), its import-time checks, and ``duroxide-expand``.

Pure source-to-source tests call :func:`expand` directly; the import-time
errors go through the real import hook (installed by the pytest plugin) on
real files in ``tmp_path``; the CLI and the "not expanded" error run in
subprocesses.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import types
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import duroxide_macros.forms as forms
from duroxide_macros import DurableNotExpandedError
from duroxide_macros.analysis import FORM_NAMES
from duroxide_macros.expand import expand
from duroxide_macros.hook import DurableExpansionError

FIXTURES = Path(__file__).parent / "fixtures" / "macros"
EXPAND_CLI = Path(sys.executable).with_name("duroxide-expand")

from .support import clean_env, dedent_src, run_cmd


PRELUDE = "from duroxide_macros.prelude import *\n"


def _lines_of(source: str, needle: str) -> int:
    """1-based number of the only line containing ``needle``."""
    hits = [i for i, line in enumerate(source.splitlines(), 1) if needle in line]
    assert len(hits) == 1, (needle, hits)
    return hits[0]


# --------------------------------------------------------------------------------------
# What the forms become
# --------------------------------------------------------------------------------------

def test_each_form_is_rewritten_onto_the_context_in_scope() -> None:
    src = dedent_src('''
        from duroxide_macros.prelude import *

        @orchestration
        async def flow(ctx: OrchestrationContext, order: Order) -> str:
            durable_trace_info("Processing order: {}", order.id, order_id=order.id)
            durable_trace_warn("w")
            durable_trace_error("e")
            durable_trace_debug("d")
            trace_info("ti")
            orch_warn("ow")
            payment = await durable(charge_payment(order, 12.5))
            fut = durable(charge_payment(order, 1))
            vm = await durable(provision_vm(order))
            g1 = await durable_newguid()
            g2 = await durable_guid()
            t1 = await durable_utcnow()
            t2 = await durable_now()
            return payment
    ''')
    result = expand(src, "flow.py")
    assert result.problems == []
    out = result.code.splitlines()
    assert out[4] == '    ctx.trace_info("Processing order: {}", order.id, order_id=order.id)'
    assert out[5] == '    ctx.trace_warn("w")'
    assert out[6] == '    ctx.trace_error("e")'
    assert out[7] == '    ctx.trace_debug("d")'
    assert out[8] == '    ctx.trace_info("ti")'
    assert out[9] == '    ctx.trace_warn("ow")'
    assert out[10] == "    payment = await (charge_payment.call(ctx, order, 12.5))"
    assert out[11] == "    fut = (charge_payment.call(ctx, order, 1))"
    assert out[12] == "    vm = await (provision_vm.call(ctx, order))"
    assert out[13] == "    g1 = await ctx.new_guid()"
    assert out[14] == "    g2 = await ctx.new_guid()"
    assert out[15] == "    t1 = await ctx.utc_now()"
    assert out[16] == "    t2 = await ctx.utc_now()"
    assert result.rewrites == 13
    # the result is valid Python
    compile(result.code, "flow.py", "exec")


def test_durable_options_become_with_options_keeping_every_line() -> None:
    src = dedent_src('''
        from duroxide_macros.prelude import *
        import duroxide_macros as dx

        @orchestration
        async def flow(ctx: OrchestrationContext, order: Order) -> str:
            a = await durable(charge(order), retry=RetryPolicy(max_attempts=5), timeout=timedelta(seconds=10))
            b = await dx.durable(charge(order, 2), heartbeat_timeout=30)
            c = await durable(
                charge(order),
                retry=3,
                timeout=1.5,
            )
            d = durable(mod.charge(), timeout=policy.timeout)
            return a
    ''')
    result = expand(src, "flow.py")
    assert result.problems == []
    assert result.rewrites == 4
    out = result.code.splitlines()
    assert out[5] == ("    a = await (charge.with_options(retry=RetryPolicy(max_attempts=5), "
                      "timeout=timedelta(seconds=10)).call(ctx, order))")
    assert out[6] == "    b = await (charge.with_options(heartbeat_timeout=30).call(ctx, order, 2))"
    assert out[7:12] == ["    c = await (",
                         "        charge.with_options(",
                         "        retry=3,",
                         "        timeout=1.5,",
                         "    ).call(ctx, order))"]
    assert out[12] == "    d = (mod.charge.with_options(timeout=policy.timeout).call(ctx))"
    assert len(out) == len(src.splitlines())
    compile(result.code, "flow.py", "exec")


def test_context_is_the_first_parameter_whatever_its_name() -> None:
    src = dedent_src('''
        from duroxide_macros.prelude import *
        @orchestration(name="process_order", version="2.0.0")
        async def flow_v2(octx, order):
            durable_trace_info("x")
            return await durable(charge(order))
    ''')
    result = expand(src)
    assert result.problems == []
    assert "    octx.trace_info(\"x\")" in result.code
    assert "await (charge.call(octx, order))" in result.code
    assert "ctx" not in result.code.replace("octx", "")


def test_context_from_a_parameter_annotated_orchestration_context() -> None:
    src = dedent_src('''
        from duroxide_macros.prelude import *
        import duroxide_runtime as dr

        async def step(order, c: OrchestrationContext):
            return await durable(charge(order))

        async def step2(c2: "OrchestrationContext", order):
            return await durable(charge(order, 2))

        async def step3(self, order, c3: dr.OrchestrationContext):
            g = await durable_newguid()
            return await durable(charge(order, 3))
    ''')
    result = expand(src)
    assert result.problems == []
    assert "await (charge.call(c, order))" in result.code
    assert "await (charge.call(c2, order, 2))" in result.code
    assert "await (charge.call(c3, order, 3))" in result.code
    assert "g = await c3.new_guid()" in result.code


def test_closures_inside_an_orchestration_see_its_context() -> None:
    src = dedent_src('''
        from duroxide_macros.prelude import *
        @orchestration
        async def fan_out(my_ctx, items):
            async def one(item):
                durable_trace_info("item {}", item)
                return await durable(handle(item))
            def later(item):
                return durable(handle(item, 2))
            pick = lambda item: durable(handle(item, 3))
            return await my_ctx.join([await one(i) for i in items])
    ''')
    result = expand(src)
    assert result.problems == []
    assert '        my_ctx.trace_info("item {}", item)' in result.code
    assert "return await (handle.call(my_ctx, item))" in result.code
    assert "return (handle.call(my_ctx, item, 2))" in result.code
    assert "pick = lambda item: (handle.call(my_ctx, item, 3))" in result.code


def test_trace_forms_in_activities_are_left_alone_but_durable_is_an_error() -> None:
    src = dedent_src('''
        from duroxide_macros.prelude import *
        @activity(typed=True)
        async def charge(order):
            durable_trace_info("charging {}", order)
            trace_warn("careful")
            return "ok"

        @activity
        def blocking(s):
            orch_error("boom {}", s)
            return s
    ''')
    result = expand(src)
    assert result.problems == []
    assert result.code == src
    bad = src + "\n@activity\nasync def nested(x):\n    return await durable(charge(x))\n"
    problems = expand(bad, "acts.py").problems
    assert len(problems) == 1
    assert (problems[0].path, problems[0].line, problems[0].column) == ("acts.py", _lines_of(bad, "await durable"), 18)
    assert "no OrchestrationContext in scope" in problems[0].message


def test_activity_nested_in_an_orchestration_module_does_not_inherit_a_context() -> None:
    # A context annotation in another function must not leak into an activity.
    src = dedent_src('''
        from duroxide_macros.prelude import *
        async def helper(c: OrchestrationContext):
            return await durable(a(1))

        @activity
        async def act(s):
            durable_trace_info("in activity {}", s)
            return s
    ''')
    result = expand(src)
    assert result.problems == []
    assert '    durable_trace_info("in activity {}", s)' in result.code.splitlines()


def test_modules_that_do_not_import_duroxide_macros_are_untouched() -> None:
    plain = dedent_src('''
        import time

        class Tracer:
            def trace(self, msg):  # "durable" in a comment
                return msg, "durable"

        @orchestration            # not ours: nothing imports it from duroxide_macros
        async def flow(ctx, x):
            return await durable(act(time.time()))
    ''')
    # names that merely look like forms are not rewritten, even in a module that imports duroxide
    lookalike = dedent_src('''
        import time
        from duroxide_macros import activity

        def durable_thing():
            return time.time()

        class Tracer:
            def durable(self, x):
                return self.durable(x), durable_thing(), "durable(x)"
    ''')
    for src in (plain, lookalike):
        result = expand(src)
        assert result.code == src and result.problems == [] and result.rewrites == 0


# --------------------------------------------------------------------------------------
# Line numbers
# --------------------------------------------------------------------------------------

def _form_spans(source: str) -> set[int]:
    spans: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORM_NAMES:
            assert node.end_lineno is not None
            spans.update(range(node.lineno, node.end_lineno + 1))
    return spans


def _code_lines(code: types.CodeType) -> dict[str, set[int]]:
    """Line numbers used by each (nested) code object, by qualified name."""
    out: dict[str, set[int]] = {}
    stack = [code]
    while stack:
        co = stack.pop()
        out.setdefault(co.co_qualname, set()).update(line for _, _, line in co.co_lines() if line is not None)
        stack.extend(c for c in co.co_consts if isinstance(c, types.CodeType))
    return out


def test_expand_keeps_every_line_number() -> None:
    src = (FIXTURES / "multiline_orch.py").read_text()
    result = expand(src, "multiline_orch.py")
    assert result.problems == []
    before, after = src.splitlines(keepends=True), result.code.splitlines(keepends=True)
    assert len(after) == len(before)
    spans = _form_spans(src)
    assert spans, "the fixture must contain forms"
    for number, (old, new) in enumerate(zip(before, after), 1):
        if number not in spans:
            assert new == old, f"line {number} changed although it has no form: {old!r} -> {new!r}"
    # the first line of each form still holds the start of its replacement
    first = _lines_of(src, "MARK:first_durable")
    assert after[first - 1].startswith("    total = await (ln_add.call(")
    # every argument stays on its own line
    assert after[_lines_of(src, "MARK:arg_line") - 1].strip().endswith("ln_plain_helper(n),  # MARK:arg_line")


def test_expanded_code_uses_only_the_original_lines() -> None:
    """What tracers (coverage, pdb) see: code objects start and step on the user's lines."""
    src = (FIXTURES / "multiline_orch.py").read_text()
    original = _code_lines(compile(src, "m.py", "exec"))
    rewritten = _code_lines(compile(expand(src, "m.py").code, "m.py", "exec"))
    assert original.keys() == rewritten.keys()
    for name, lines in rewritten.items():
        assert lines <= original[name], f"{name}: lines {sorted(lines - original[name])} do not exist in the original"
    orig_code = compile(src, "m.py", "exec")
    new_code = compile(expand(src, "m.py").code, "m.py", "exec")
    firsts = {c.co_name: c.co_firstlineno for c in orig_code.co_consts if isinstance(c, types.CodeType)}
    assert firsts == {c.co_name: c.co_firstlineno for c in new_code.co_consts if isinstance(c, types.CodeType)}


def test_awkward_spellings_stay_valid_and_keep_their_lines() -> None:
    src = dedent_src('''
        from duroxide_macros.prelude import *
        @orchestration
        async def o(ctx, a):
            x = await durable(  # comment
                act(a)
            )
            y = await durable(act(a),)
            z = await durable((act(a)))
            w = await durable(act(
                await durable(act(1)),
            ))
            u = await durable(mod.sub.act(a, k=1))
            t = await durable(act())
            s = await durable(act(*args, **kw))
            r = [await durable(act(i)) for i in a]
            return x
    ''')
    result = expand(src)
    assert result.problems == []
    assert len(result.code.splitlines()) == len(src.splitlines())
    compile(result.code, "o.py", "exec")
    out = result.code.splitlines()
    assert out[3] == "    x = await (  # comment"
    assert out[4] == "        act.call(ctx, a)"
    assert out[6] == "    y = await (act.call(ctx, a))"
    assert out[7] == "    z = await ((act.call(ctx, a)))"
    assert out[9].strip() == "ctx, await (act.call(ctx, 1)),"
    assert out[11] == "    u = await (mod.sub.act.call(ctx, a, k=1))"
    assert out[12] == "    t = await (act.call(ctx))"
    assert out[13] == "    s = await (act.call(ctx, *args, **kw))"
    assert out[14] == "    r = [await (act.call(ctx, i)) for i in a]"
    assert "durable" not in result.code


def test_problems_keep_the_original_positions_after_multiline_forms() -> None:
    src = dedent_src('''
        import time
        from duroxide_macros.prelude import *

        @orchestration
        async def flow(ctx, n):
            a = await durable(
                act(
                    n,
                ),
            )
            b = time.time()
            return a
    ''')
    problems = expand(src, "f.py").problems
    assert [str(p) for p in problems] == [
        f"f.py:{_lines_of(src, 'time.time()')}:9: `time.time()` is not deterministic: `time.time` reads the "
        "clock, which gives another value when the orchestration is replayed (fix: use await durable_utcnow() "
        "(or ctx.utc_now()), recorded once and replayed)"]


# --------------------------------------------------------------------------------------
# Import-time checks
# --------------------------------------------------------------------------------------

BAD_CASES = {
    "durable_without_context_at_module_level": (
        "x = durable(charge(1))\n", "durable(", "no OrchestrationContext in scope", "fix"),
    "durable_without_context_in_plain_function": (
        "async def f(a):\n    return await durable(charge(a))\n", "durable(", "no OrchestrationContext in scope",
        "@orchestration"),
    "durable_of_a_non_call": (
        "@orchestration\nasync def f(ctx, a):\n    return await durable(a)\n", "durable(a)", "got `a`",
        "durable(my_activity(arg))"),
    "durable_of_a_function_object": (
        "@orchestration\nasync def f(ctx, a):\n    return await durable(charge)\n", "durable(charge)",
        "got `charge`", "fix"),
    "durable_of_plain_local_function": (
        "def helper(x):\n    return x\n\n@orchestration\nasync def f(ctx, a):\n    return await durable(helper(a))\n",
        "durable(helper", "'helper' is not an @activity or @orchestration", "decorate it"),
    "durable_of_two_calls": (
        "@orchestration\nasync def f(ctx, a):\n    return await durable(one(a), two(a))\n", "durable(one",
        "exactly one call", "durable(charge_payment(order))"),
    "newguid_without_context": (
        "async def f():\n    return await durable_newguid()\n", "durable_newguid", "needs an orchestration context",
        "@orchestration"),
    "time_time": ("import time\n@orchestration\nasync def f(ctx, a):\n    t = time.time()\n", "time.time",
                  "`time.time()` is not deterministic", "durable_utcnow"),
    "datetime_now": ("from datetime import datetime\n@orchestration\nasync def f(ctx, a):\n    t = datetime.now()\n",
                     "datetime.now", "`datetime.now()` is not deterministic", "durable_utcnow"),
    "datetime_datetime_now": (
        "import datetime\n@orchestration\nasync def f(ctx, a):\n    t = datetime.datetime.now()\n",
        "datetime.datetime.now", "`datetime.datetime.now()` is not deterministic", "durable_utcnow"),
    "uuid_uuid4": ("import uuid\n@orchestration\nasync def f(ctx, a):\n    return str(uuid.uuid4())\n", "uuid.uuid4",
                   "`uuid.uuid4()` is not deterministic", "durable_newguid"),
    "random_random": ("import random\n@orchestration\nasync def f(ctx, a):\n    return random.random()\n",
                      "random.random", "`random.random()` is not deterministic", "fix"),
    "random_choice": ("import random\n@orchestration\nasync def f(ctx, a):\n    return random.choice(a)\n",
                      "random.choice", "`random.choice()` is not deterministic", "fix"),
    "open": ("@orchestration\nasync def f(ctx, a):\n    with open(a) as fh:\n        return fh.read()\n", "open(",
             "`open()` is not deterministic", "activity"),
    "time_sleep": ("import time\n@orchestration\nasync def f(ctx, a):\n    time.sleep(1)\n", "time.sleep",
                   "`time.sleep()` is not deterministic", "timer"),
    "nondeterminism_in_a_closure": (
        "import time\n@orchestration\nasync def f(ctx, a):\n    def g():\n        return time.time()\n    return g()\n",
        "time.time", "`time.time()` is not deterministic", "durable_utcnow"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_each_misuse_is_reported_at_its_position_with_a_fix(case: str) -> None:
    src, needle, message, fix = BAD_CASES[case]
    src = PRELUDE + src
    problems = expand(src, "/src/app/m.py").problems
    assert len(problems) == 1, problems
    p = problems[0]
    line = _lines_of(src, needle)
    col = src.splitlines()[line - 1].index(needle) + 1
    assert (p.path, p.line, p.column) == ("/src/app/m.py", line, col)
    assert message in p.message
    assert fix in p.message
    assert "fix" in p.message or "e.g." in p.message  # says how to fix it
    assert str(p).startswith(f"/src/app/m.py:{line}:{col}: ")


@pytest.mark.parametrize("src, needle", [
    ("@orchestration\ndef f(ctx, a):\n    return a\n", "must be `async def`"),
    ("@orchestration(name='x')\ndef f(ctx, a):\n    return a\n", "must be `async def`"),
    ("@orchestration\nasync def f():\n    return 1\n", "no context parameter"),
])
def test_bad_orchestration_signatures_are_reported(src: str, needle: str) -> None:
    problems = expand(PRELUDE + src, "m.py").problems
    assert len(problems) == 1
    p = problems[0]
    assert needle in p.message and "fix" in p.message
    # at the function (its decorator or its `def` line), first column
    assert p.line in (2, 3) and p.column == 1


def test_nondeterministic_calls_outside_orchestrations_are_fine() -> None:
    src = dedent_src('''
        from duroxide_macros.prelude import *
        import time, random, uuid
        from datetime import datetime

        @activity
        async def stamp(s):
            time.sleep(0)
            return f"{s} {time.time()} {datetime.now()} {uuid.uuid4()} {random.random()} {open(s)}"

        def plain():
            return time.time()

        @orchestration
        async def ok(ctx, s):
            return await durable(stamp(s))
    ''')
    assert expand(src).problems == []


def _write_module(tmp_path: Path, source: str) -> tuple[str, Path]:
    name = f"m_{uuid.uuid4().hex[:10]}"
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    return name, path


def test_importing_a_misusing_module_raises_with_every_problem(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    src = dedent_src('''
        import time
        from duroxide_macros.prelude import *

        def helper(x):
            return x

        @orchestration
        async def f(ctx, a):
            t = time.time()
            return await durable(helper(a))

        @orchestration
        def g(ctx, a):
            return a

        x = durable(helper(1))
    ''')
    name, path = _write_module(tmp_path, src)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    with pytest.raises(DurableExpansionError) as info:
        importlib.import_module(name)
    err = info.value
    assert isinstance(err, SyntaxError)
    assert name not in sys.modules
    text = str(err)
    expected = [
        f"{path}:{_lines_of(src, 'time.time()')}:9: ",
        f"{path}:{_lines_of(src, 'durable(helper(a))')}:18: ",
        f"{path}:{_lines_of(src, 'x = durable')}:5: ",
    ]
    for prefix in expected:
        assert prefix in text, text
    assert len(err.problems) == 4  # + the non-async orchestration
    g_def = _lines_of(src, "def g(")
    assert any(p.line in (g_def - 1, g_def) and "async def" in p.message for p in err.problems)
    # like a compiler error: filename and position of the first problem
    assert err.filename == str(path) and err.lineno == min(p.line for p in err.problems)


def test_durable_that_reaches_run_time_unexpanded_says_how_to_fix() -> None:
    async def act() -> str:
        return "x"

    coro = act()
    with pytest.raises(DurableNotExpandedError) as info:
        unexpanded = getattr(forms, "durable")  # not bound by the import: this module is rewritten too
        unexpanded(coro)
    msg = str(info.value)
    # this module is rewritten, so the cause is the call through another name, and the fix says how
    assert "was rewritten, but this call was not written `durable(...)`" in msg
    assert "fix" in msg.lower() and "imported from duroxide_macros" in msg
    assert coro.cr_frame is None  # closed, no "never awaited" warning


def test_unexpanded_module_fails_the_instance_with_the_fix(tmp_path: Path) -> None:
    """A program that forgot the install import: the orchestration fails with the fix, not a NameError."""
    (tmp_path / "flows_noinstall.py").write_text(dedent_src('''
        from duroxide_macros.prelude import *

        @activity(typed=True)
        async def ne_double(x: int) -> int:
            return 2 * x

        @orchestration
        async def ne_flow(ctx: OrchestrationContext, n: int) -> int:
            return await durable(ne_double(n))
    '''))
    (tmp_path / "runner.py").write_text(dedent_src('''
        import asyncio, sys
        from duroxide_macros.prelude import *
        import flows_noinstall

        async def main():
            assert not any(type(f).__name__ == "DurableFinder" for f in sys.meta_path)
            store = InMemoryProvider()
            rt = await Runtime.builder().store(store).discover_activities().discover_orchestrations().start()
            client = Client(store)
            await flows_noinstall.ne_flow.start(client, "i1", 2)
            status = await flows_noinstall.ne_flow.wait(client, "i1", 20)
            print("STATUS", type(status).__name__)
            print("ERROR", status.error)
            await rt.shutdown()

        asyncio.run(main())
    '''))
    proc = run_cmd([sys.executable, "runner.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "STATUS Failed" in proc.stdout
    assert "DurableNotExpandedError" in proc.stdout or "unexpanded" in proc.stdout
    assert "import duroxide_macros.install" in proc.stdout


# --------------------------------------------------------------------------------------
# duroxide-expand
# --------------------------------------------------------------------------------------

SIDE_EFFECT_MODULE = dedent_src('''
    from pathlib import Path
    from duroxide_macros.prelude import *

    Path(__file__).with_name("SIDE_EFFECT").write_text("the module ran")

    @activity(typed=True)
    async def charge(order: str, total: float) -> str:
        return order

    @orchestration
    async def flow(ctx: OrchestrationContext, order: str) -> str:
        durable_trace_info("order {}", order)
        await durable(charge(order, 0.5), retry=RetryPolicy(max_attempts=5), timeout=timedelta(seconds=10))
        return await durable(charge(order, 1.5))
''')


def test_cli_prints_the_rewritten_source_without_running_the_module(tmp_path: Path) -> None:
    target = tmp_path / "flows.py"
    target.write_text(SIDE_EFFECT_MODULE)
    proc = run_cmd([str(EXPAND_CLI), str(target)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expand(SIDE_EFFECT_MODULE, str(target)).code
    assert "    return await (charge.call(ctx, order, 1.5))\n" in proc.stdout
    assert ("    await (charge.with_options(retry=RetryPolicy(max_attempts=5), timeout=timedelta(seconds=10))"
            ".call(ctx, order, 0.5))\n") in proc.stdout
    assert '    ctx.trace_info("order {}", order)\n' in proc.stdout
    assert not (tmp_path / "SIDE_EFFECT").exists()
    assert not (tmp_path / "__pycache__").exists()


def test_cli_diff(tmp_path: Path) -> None:
    target = tmp_path / "flows.py"
    target.write_text(SIDE_EFFECT_MODULE)
    proc = run_cmd([str(EXPAND_CLI), str(target), "--diff"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "-    return await durable(charge(order, 1.5))" in lines
    assert "+    return await (charge.call(ctx, order, 1.5))" in lines
    assert '+    ctx.trace_info("order {}", order)' in lines
    assert ("+    await (charge.with_options(retry=RetryPolicy(max_attempts=5), timeout=timedelta(seconds=10))"
            ".call(ctx, order, 0.5))") in lines
    assert sum(1 for line in lines if line.startswith("+") and not line.startswith("+++")) == 3
    assert not (tmp_path / "SIDE_EFFECT").exists()


def test_cli_check_lists_problems_and_fails(tmp_path: Path) -> None:
    src = dedent_src('''
        import time, uuid
        from pathlib import Path
        from duroxide_macros.prelude import *

        Path(__file__).with_name("SIDE_EFFECT").write_text("the module ran")

        @orchestration
        async def flow(ctx, order):
            started = time.time()
            key = uuid.uuid4()
            return await durable(order)
    ''')
    target = tmp_path / "bad_flows.py"
    target.write_text(src)
    proc = run_cmd([str(EXPAND_CLI), "--check", str(target)], tmp_path)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    for needle, col in (("time.time()", 15), ("uuid.uuid4()", 11), ("durable(order)", 18)):
        assert f"{target}:{_lines_of(src, needle)}:{col}: " in out, out
    assert "def flow" not in proc.stdout  # --check does not print the source
    assert not (tmp_path / "SIDE_EFFECT").exists()
    ok = tmp_path / "good_flows.py"
    ok.write_text(SIDE_EFFECT_MODULE)
    proc = run_cmd([str(EXPAND_CLI), "--check", str(ok)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (tmp_path / "SIDE_EFFECT").exists()


def _make_package(root: Path) -> Path:
    pkg = root / "shop_app"
    (pkg / "flows").mkdir(parents=True)
    (pkg / "__init__.py").write_text('from pathlib import Path\nPath(__file__).with_name("PKG_INIT_RAN").touch()\n')
    (pkg / "flows" / "__init__.py").write_text("")
    (pkg / "flows" / "orders.py").write_text(SIDE_EFFECT_MODULE)
    return pkg


def test_cli_accepts_a_dotted_module_name(tmp_path: Path) -> None:
    pkg = _make_package(tmp_path / "src")
    proc = run_cmd([str(EXPAND_CLI), "shop_app.flows.orders"], tmp_path, PYTHONPATH=str(tmp_path / "src"))
    assert proc.returncode == 0, proc.stderr
    assert "    return await (charge.call(ctx, order, 1.5))\n" in proc.stdout
    assert not (pkg / "flows" / "SIDE_EFFECT").exists()
    proc = run_cmd([str(EXPAND_CLI), "--check", "shop_app.flows.orders"], tmp_path, PYTHONPATH=str(tmp_path / "src"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_dotted_module_name_resolves_from_the_current_directory(tmp_path: Path) -> None:
    """Like `python -m`, run from the project root without setting PYTHONPATH."""
    _make_package(tmp_path)
    proc = run_cmd([str(EXPAND_CLI), "shop_app.flows.orders"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "    return await (charge.call(ctx, order, 1.5))\n" in proc.stdout


def test_cli_dotted_module_name_runs_no_package_code(tmp_path: Path) -> None:
    """Expanding a module must not run user code, including its parent packages' __init__."""
    pkg = _make_package(tmp_path / "src")
    proc = run_cmd([str(EXPAND_CLI), "shop_app.flows.orders"], tmp_path, PYTHONPATH=str(tmp_path / "src"))
    assert proc.returncode == 0, proc.stderr
    assert not (pkg / "PKG_INIT_RAN").exists(), "duroxide-expand executed shop_app/__init__.py"


def test_cli_honours_the_source_encoding(tmp_path: Path) -> None:
    target = tmp_path / "latin_flows.py"
    target.write_bytes(b"# -*- coding: latin-1 -*-\nfrom duroxide_macros.prelude import *\nNAME = 'caf\xe9'\n@orchestration\nasync def f(ctx, s):\n"
                       b"    return await durable(g(s))\n")
    proc = run_cmd([str(EXPAND_CLI), "--check", str(target)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([str(EXPAND_CLI), str(target)], cwd=tmp_path, env=clean_env(), capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "NAME = 'caf\u00e9'".encode() in proc.stdout or b"NAME = 'caf\xe9'" in proc.stdout
    assert b"    return await (g.call(ctx, s))\n" in proc.stdout


def test_cli_unknown_target_fails_cleanly(tmp_path: Path) -> None:
    proc = run_cmd([str(EXPAND_CLI), "no_such_module_xyz.sub"], tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "no_such_module_xyz" in proc.stderr


def test_a_syntax_error_is_reported_at_pythons_own_position() -> None:
    problems = expand("import duroxide_macros\ny = 2\nz = 'a' \\ b\n", "broken.py").problems
    assert [(p.line, p.column) for p in problems] == [(3, 10)]
    assert problems[0].message.startswith("syntax error: unexpected character after line continuation")


# --------------------------------------------------------------------------------------
# Forms are recognised by what they are bound to, never by spelling
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("imports, call", [
    ("from duroxide_macros.prelude import *", "durable"),
    ("from duroxide_macros import durable", "durable"),
    ("from duroxide_macros import durable as d", "d"),
    ("from duroxide_macros.prelude import durable as run_it", "run_it"),
    ("import duroxide_macros as dx", "dx.durable"),
    ("import duroxide_macros", "duroxide_macros.durable"),
    ("import duroxide_macros.prelude", "duroxide_macros.prelude.durable"),
])
def test_every_binding_of_the_durable_form_is_rewritten(imports: str, call: str) -> None:
    src = dedent_src(f'''
        {imports}
        from duroxide_macros import orchestration

        @orchestration
        async def flow(ctx, n):
            return await {call}(charge(n))
    ''')
    result = expand(src, "m.py")
    assert result.problems == []
    assert "    return await (charge.call(ctx, n))" in result.code.splitlines()


@pytest.mark.parametrize("alias, method", [
    ("durable_trace_info", "trace_info"), ("trace_warn", "trace_warn"), ("orch_error", "trace_error"),
    ("orch_debug", "trace_debug"), ("durable_guid", "new_guid"), ("durable_now", "utc_now"),
    ("durable_newguid", "new_guid"), ("durable_utcnow", "utc_now"),
])
def test_aliases_of_the_spec_are_forms_through_any_binding(alias: str, method: str) -> None:
    src = dedent_src(f'''
        import duroxide_macros as dx
        from duroxide_macros import {alias} as renamed

        @dx.orchestration(name="x")
        async def flow(c, n):
            renamed()
            dx.{alias}()
    ''')
    result = expand(src, "m.py")
    assert result.problems == []
    assert result.code.splitlines()[5:7] == [f"    c.{method}()", f"    c.{method}()"]


@pytest.mark.parametrize("shadow", [
    "durable = lambda call: call",                       # an assignment
    "def durable(call):\n    return call",               # a def
    "from mylib.helpers import durable",                 # an import from elsewhere
    "import mylib.helpers as durable_mod\ndurable = durable_mod.durable",
])
def test_a_module_level_binding_shadows_the_star_import(shadow: str) -> None:
    src = "from duroxide_macros.prelude import *\n" + shadow + "\n" + dedent_src('''

        @orchestration
        async def flow(ctx, n):
            return await durable(charge(n))
    ''')
    result = expand(src, "m.py")
    assert result.problems == [] and result.rewrites == 0
    assert result.code == src


def test_a_parameter_or_local_named_like_a_form_shadows_it() -> None:
    src = dedent_src('''
        from duroxide_macros.prelude import *

        def helper(durable, items):
            return [durable(i) for i in items]

        async def runner(x):
            durable_newguid = make_guid
            return durable_newguid()

        @orchestration
        async def flow(ctx, n):
            durable = compose(n)
            return await durable(charge(n))
    ''')
    result = expand(src, "m.py")
    assert result.problems == [] and result.rewrites == 0
    assert result.code == src


def test_a_method_or_attribute_called_durable_shadows_nothing() -> None:
    src = dedent_src('''
        from duroxide_macros.prelude import *

        class Store:
            def durable(self, x):
                return self.durable(x)

        @orchestration
        async def flow(ctx, store):
            store.durable(1)
            return await durable(charge(store))
    ''')
    result = expand(src, "m.py")
    assert result.problems == []
    lines = result.code.splitlines()
    assert lines[-2:] == ["    store.durable(1)", "    return await (charge.call(ctx, store))"]


def test_decorators_are_recognised_by_binding_too() -> None:
    src = dedent_src('''
        import duroxide_macros as dx
        from duroxide_macros import orchestration as flow_of, durable

        @flow_of(version="2.0.0")
        async def a(octx, n):
            return await durable(charge(n))

        @dx.orchestration
        async def b(bctx, n):
            return await durable(charge(n))

        def orchestration(fn):          # someone else's decorator of the same name
            return fn
    ''')
    result = expand(src, "m.py")
    assert result.problems == []
    assert "    return await (charge.call(octx, n))" in result.code
    assert "    return await (charge.call(bctx, n))" in result.code
    other = dedent_src('''
        from duroxide_macros import durable
        from mylib import orchestration

        @orchestration
        async def c(ctx, n):
            return await durable(charge(n))
    ''')
    problems = expand(other, "m.py").problems
    assert len(problems) == 1 and "no OrchestrationContext in scope" in problems[0].message


# --------------------------------------------------------------------------------------
# The context passed is the orchestration's own
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, needle, by", [
    ("    return [await durable(notify(c)) for c in customers]\n", "durable(notify", "a comprehension variable"),
    ("    f = lambda c: durable(notify(c))\n    return f\n", "durable(notify", "a parameter of a nested lambda"),
    ("    async def one(c):\n        return await durable(notify(c))\n    return one\n", "durable(notify",
     "a parameter of a nested lambda or function"),
    ("    c = customers[0]\n    return await durable(notify(c))\n", "durable(notify", "an assignment"),
    ("    for c in customers:\n        durable_trace_info('x')\n", "durable_trace_info", "an assignment"),
])
def test_a_rebound_context_name_is_reported_not_passed(body: str, needle: str, by: str) -> None:
    src = PRELUDE + "@orchestration\nasync def send_all(c, customers):\n" + body
    problems = expand(src, "m.py").problems
    assert len(problems) == 1, problems
    p = problems[0]
    line = _lines_of(src, needle)
    assert (p.line, p.column) == (line, src.splitlines()[line - 1].index(needle.split("(")[0]) + 1)
    assert "the context of orchestration `send_all`" in p.message and by in p.message
    assert "fix: rename" in p.message


def test_comprehensions_and_closures_that_keep_the_name_pass_the_context() -> None:
    src = PRELUDE + dedent_src('''
        @orchestration
        async def send_all(ctx, customers):
            futures = [durable(notify(c)) for c in customers]
            pick = lambda c: durable(notify(c))
            return await ctx.join(futures)
    ''')
    result = expand(src, "m.py")
    assert result.problems == []
    assert "    futures = [(notify.call(ctx, c)) for c in customers]" in result.code
    assert "    pick = lambda c: (notify.call(ctx, c))" in result.code


# --------------------------------------------------------------------------------------
# Misuse, reported at import with the fix
# --------------------------------------------------------------------------------------

MISUSE = {
    "durable_of_durable": ("@orchestration\nasync def f(ctx, a):\n    return await durable(durable(charge(a)))\n",
                           "durable(durable", "is itself a duroxide form", "durable(charge(order))"),
    "durable_of_an_imported_plain_function": (
        "from json import dumps\n@orchestration\nasync def f(ctx, a):\n    return await durable(dumps(a))\n",
        "durable(dumps", "`json.dumps` is a standard-library function", "call it directly"),
    "durable_of_asyncio_sleep": (
        "import asyncio\n@orchestration\nasync def f(ctx, a):\n    await durable(asyncio.sleep(5))\n",
        "durable(asyncio", "`asyncio.sleep` is a standard-library function", "await asyncio.sleep(...) directly"),
    "durable_of_a_builtin": ("@orchestration\nasync def f(ctx, a):\n    return await durable(len(a))\n",
                             "durable(len", "`len` is a builtin", "call it directly"),
    "activity_as_method": ("class Shop:\n    @activity\n    async def charge(self, a):\n        return a\n",
                           "async def charge", "@activity 'charge' is defined as a method", "module level"),
    "orchestration_as_method": ("class Shop:\n    @orchestration\n    async def flow(self, ctx, a):\n        return a\n",
                                "async def flow", "@orchestration 'flow' is defined as a method", "module level"),
    "two_inputs": ("@orchestration\nasync def f(ctx, a, b):\n    return a\n", "async def",
                   "takes more than one input parameter", "one dataclass"),
    "star_inputs": ("@orchestration\nasync def f(ctx, *items):\n    return items\n", "async def",
                    "takes more than one input parameter", "one dataclass"),
    "durable_unknown_option": ("@orchestration\nasync def f(ctx, a):\n    return await durable(charge(a), retries=3)\n",
                               "durable(charge", "durable() has no option `retries=`",
                               "durable(charge(order), retry=RetryPolicy(max_attempts=3)"),
    "durable_option_by_position": ("@orchestration\nasync def f(ctx, a):\n    return await durable(charge(a), 3)\n",
                                   "durable(charge", "takes exactly one call", "durable(charge_payment(order))"),
    "durable_options_unpacked": (
        "@orchestration\nasync def f(ctx, a):\n    return await durable(charge(a), **opts)\n", "durable(charge",
        "takes its options by name, not as `**opts`", "write them out"),
    "durable_options_on_an_orchestration": (
        "@orchestration\nasync def kid(ctx, a):\n    return a\n\n"
        "@orchestration\nasync def f(ctx, a):\n    return await durable(kid(a), timeout=5, retry=2)\n",
        "durable(kid", "'kid' is an @orchestration, and timeout=, retry= are for activities only",
        "set the policy on the activities it calls"),
}


@pytest.mark.parametrize("case", list(MISUSE))
def test_each_misuse_of_the_forms_and_decorators_is_reported(case: str) -> None:
    src, needle, message, fix = MISUSE[case]
    src = PRELUDE + src
    problems = expand(src, "/src/app/m.py", "app.m").problems
    assert len(problems) == 1, problems
    p = problems[0]
    line = _lines_of(src, needle)
    assert (p.line, p.column) == (line, src.splitlines()[line - 1].index(needle) + 1)
    assert message in p.message and fix in p.message, p.message


def test_an_imported_activity_is_not_confused_with_a_method_of_the_same_name(tmp_path: Path) -> None:
    pkg = tmp_path / "shopx"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "acts.py").write_text(PRELUDE + "@activity\nasync def act(s):\n    return s\n\ndef plain(s):\n    return s\n")
    flows = pkg / "flows.py"
    flows.write_text(PRELUDE + dedent_src('''
        from .acts import act, plain

        class Helper:
            def act(self):
                return 1

        @orchestration
        async def f(ctx, s):
            a = await durable(act(s))
            return await durable(plain(s))
    '''))
    result = expand(flows.read_text(), str(flows), "shopx.flows")
    assert [p.message for p in result.problems] == [
        "durable(plain(...)): 'plain' is not an @activity or @orchestration (fix: decorate it, or call it directly)"]
    assert result.problems[0].line == _lines_of(flows.read_text(), "durable(plain")
    assert "    a = await (act.call(ctx, s))" in result.code


def test_explicit_call_style_modules_get_the_same_checks() -> None:
    """What duroxide-expand prints is checked like the forms it came from."""
    src = PRELUDE + dedent_src('''
        import time

        @orchestration
        async def f(ctx, a, b):
            t = time.time()
            return await charge.call(ctx, a)
    ''')
    messages = [p.message for p in expand(src, "m.py").problems]
    assert len(messages) == 2
    assert "more than one input parameter" in messages[0] and "`time.time` reads the clock" in messages[1]


# --------------------------------------------------------------------------------------
# The determinism lint, by qualified name
# --------------------------------------------------------------------------------------

LINT_CASES = {
    "from_time_import_time": ("from time import time", "t = time()", "time.time"),
    "random_as_r": ("import random as r", "x = r.random()", "random.random"),
    "from_random_import_randint": ("from random import randint", "x = randint(1, 6)", "random.randint"),
    "alias_of_datetime_now": ("from datetime import datetime\nnow = datetime.now", "t = now()",
                              "datetime.datetime.now"),
    "os_urandom": ("import os", "b = os.urandom(8)", "os.urandom"),
    "secrets": ("import secrets", "k = secrets.token_hex(8)", "secrets.token_hex"),
    "monotonic": ("import time", "t = time.monotonic()", "time.monotonic"),
    "perf_counter": ("from time import perf_counter as pc", "t = pc()", "time.perf_counter"),
    "datetime_today": ("import datetime as dt", "t = dt.datetime.today()", "datetime.datetime.today"),
    "datetime_utcnow": ("from datetime import datetime", "t = datetime.utcnow()", "datetime.datetime.utcnow"),
    "date_today": ("from datetime import date", "t = date.today()", "datetime.date.today"),
    "uuid1": ("import uuid", "u = uuid.uuid1()", "uuid.uuid1"),
    "uuid4": ("from uuid import uuid4", "u = uuid4()", "uuid.uuid4"),
    "open": ("", "f = open('x')", "builtins.open"),
    "socket": ("import socket", "s = socket.create_connection(('h', 1))", "socket.create_connection"),
    "subprocess": ("import subprocess", "subprocess.run(['ls'])", "subprocess.run"),
    "urlopen": ("from urllib.request import urlopen", "r = urlopen('http://x')", "urllib.request.urlopen"),
    "time_sleep": ("import time", "time.sleep(1)", "time.sleep"),
}


@pytest.mark.parametrize("case", list(LINT_CASES))
def test_nondeterministic_calls_are_found_by_qualified_name(case: str) -> None:
    imports, stmt, qualified = LINT_CASES[case]
    src = PRELUDE + imports + "\n@orchestration\nasync def f(ctx, a):\n    " + stmt + "\n    return a\n"
    problems = expand(src, "m.py").problems
    assert len(problems) == 1, problems
    p = problems[0]
    call_col = 5 + (stmt.index("= ") + 2 if "= " in stmt else 0)
    assert (p.line, p.column) == (_lines_of(src, stmt), call_col)
    assert f"`{qualified}`" in p.message and "fix: use" in p.message


def test_no_false_positives_for_locals_and_attributes_named_like_modules() -> None:
    src = PRELUDE + dedent_src('''
        import random as rnd

        class Clock:
            def time(self):
                return 0

        @orchestration
        async def f(ctx, state):
            random = rnd.Random(42)          # a seeded generator: deterministic
            time = Clock()
            x = random.random() + time.time()
            uuid = state.uuid
            y = uuid.uuid4() if uuid else state.random.randint(1, 2)
            open = state.open
            return open(x, y)
    ''')
    assert expand(src, "m.py").problems == []


def test_helpers_of_the_same_module_are_followed_transitively() -> None:
    src = PRELUDE + dedent_src('''
        import time

        def stamp():
            return time.time()

        def label(x):
            return f"{x}@{stamp()}"

        def unused():
            return time.time()

        @orchestration
        async def f(ctx, a):
            return label(a)
    ''')
    problems = expand(src, "m.py").problems
    assert len(problems) == 1, problems
    p = problems[0]
    assert (p.line, p.column) == (5, 12)  # in `stamp`, not in `unused`: only what the orchestration reaches
    assert "in helper `stamp` (called from orchestration `f` at m.py:" in p.message
    assert "`time.time` reads the clock" in p.message


def test_helpers_in_other_modules_of_the_package_are_followed(tmp_path: Path) -> None:
    pkg = tmp_path / "shopy"
    (pkg / "util").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "util" / "__init__.py").write_text("")
    clock = pkg / "util" / "clock.py"
    clock.write_text("import uuid\n\ndef fresh_id():\n    return str(uuid.uuid4())\n")
    helpers = pkg / "helpers.py"
    helpers.write_text("from .util.clock import fresh_id\n\ndef order_key(o):\n    return o + fresh_id()\n")
    flows = pkg / "flows.py"
    flows.write_text(PRELUDE + dedent_src('''
        import json
        from shopy import helpers

        @orchestration
        async def f(ctx, o):
            json.dumps(o)
            return helpers.order_key(o)
    '''))
    result = expand(flows.read_text(), str(flows), "shopy.flows")
    assert len(result.problems) == 1, result.problems
    p = result.problems[0]
    assert (p.path, p.line, p.column) == (str(clock), 4, 16)
    assert "in helper `fresh_id` (called from orchestration `f` at " in p.message
    assert "`uuid.uuid4` draws a random value" in p.message
    assert set(result.dependencies) == {str(helpers), str(clock)}


def test_code_outside_orchestrations_is_not_linted_and_activities_stop_the_walk(tmp_path: Path) -> None:
    src = PRELUDE + dedent_src('''
        import time

        @activity
        async def stamp(x):
            return time.time()

        def helper_for_activities():
            return time.time()

        @orchestration
        async def f(ctx, a):
            @activity
            async def inner(y):
                return time.time()
            return await durable(stamp(a))
    ''')
    assert expand(src, "m.py").problems == []


# --------------------------------------------------------------------------------------
# Lines and identity
# --------------------------------------------------------------------------------------

def test_a_line_continuation_after_durable_keeps_every_line() -> None:
    src = PRELUDE + dedent_src('''
        @orchestration
        async def f(ctx, a):
            x = await durable \\
                (charge(a))
            y = await durable  \\
              (  # why
                charge(a, 2)
              )
            return x, y
    ''')
    result = expand(src, "m.py")
    assert result.problems == []
    before, after = src.splitlines(), result.code.splitlines()
    assert len(before) == len(after)
    assert after[_lines_of(src, "(charge(a))") - 1].strip() == "charge.call(ctx, a))"
    assert after[_lines_of(src, "charge(a, 2)") - 1].strip() == "charge.call(ctx, a, 2)"
    compile(result.code, "m.py", "exec")
    assert _code_lines(compile(result.code, "m.py", "exec"))["f"] <= _code_lines(compile(src, "m.py", "exec"))["f"]


def _installed_sources() -> list[Path]:
    """A corpus of real-world modules: the standard library's and every installed distribution's."""
    roots = {Path(p) for p in (ast.__file__, pytest.__file__)}
    files: list[Path] = []
    for root in sorted(roots):
        files.extend(p for p in sorted(root.parent.rglob("*.py")) if p.stat().st_size < 40_000)
    return files


_CORPUS = _installed_sources()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_CORPUS), st.sampled_from(["comment", "import", "star"]))
def test_expand_is_the_identity_on_modules_that_use_no_form(path: Path, how: str) -> None:
    """Mentioning or importing duroxide_macros changes nothing in a module that uses none of its forms."""
    try:
        source = path.read_text(encoding="utf-8")
        compile(source, str(path), "exec", dont_inherit=True)
    except (UnicodeDecodeError, SyntaxError, ValueError):
        return  # not a module Python itself would import
    if "duroxide_macros" in source or "__future__" in source:
        return
    header = {"comment": "# duroxide_macros\n", "import": "import duroxide_macros\n",
              "star": "from duroxide_macros.prelude import *\n"}[how]
    if how == "star" and any(name in source for name in FORM_NAMES):
        return  # an unbound name of a form would (rightly) become a form
    text = header + source
    result = expand(text, str(path))
    assert result.problems == [] and result.rewrites == 0
    assert result.code == text


def test_a_line_break_between_durable_and_its_paren_inside_brackets_keeps_every_line() -> None:
    src = PRELUDE + dedent_src('''
        @orchestration
        async def f(ctx, a):
            x = (await durable
                 (charge(a)))
            y = (await durable  # why
                 (  # because
                    charge(a, 2)))
            return x, y
    ''')
    result = expand(src, "m.py")
    assert result.problems == []
    assert len(result.code.splitlines()) == len(src.splitlines())
    assert result.code.splitlines()[_lines_of(src, "(charge(a)))") - 1].strip() == "charge.call(ctx, a)))"
    assert result.code.splitlines()[_lines_of(src, "charge(a, 2)") - 1].strip() == "charge.call(ctx, a, 2)))"
    assert "# why" in result.code and "# because" in result.code
    compile(result.code, "m.py", "exec")


@pytest.mark.parametrize("src, needle", [
    ("class Shop:\n    @activity\n    async def charge(self, x: str) -> str:\n        return x\n",
     "@activity 'charge' is defined as a method of Shop"),
    ("class Shop:\n    @orchestration\n    async def flow(self, ctx, x: str) -> str:\n        return x\n",
     "takes more than one input parameter"),
    ("@orchestration\nasync def flow(ctx, a: int, b: int) -> int:\n    return a\n",
     "takes more than one input parameter"),
    ("@orchestration\nasync def flow(ctx, *items: int) -> int:\n    return 1\n",
     "takes more than one input parameter"),
])
def test_code_the_hook_never_saw_gets_the_same_errors_at_decoration(src: str, needle: str) -> None:
    """exec'd code (a notebook, `python -c`) is not rewritten: the decorators check what they can."""
    from duroxide_runtime.errors import ConfigurationError

    namespace: dict[str, object] = {"__name__": f"nb_{uuid.uuid4().hex[:8]}"}
    with pytest.raises(ConfigurationError) as info:
        exec(compile(PRELUDE + src, "<notebook>", "exec"), namespace)
    assert needle in str(info.value) and "fix" in str(info.value).lower()
