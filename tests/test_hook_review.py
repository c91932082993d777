"""A reviewer's attacks on the import hook and the rewrite: each test is a defect that was found and fixed.

Pure source-to-source checks call :func:`expand`; where the import system
matters the program runs in a real subprocess on real files in ``tmp_path``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from duroxide_macros.expand import expand

from .support import dedent_src, run_cmd

PRELUDE = "from duroxide_macros.prelude import *\n"
HEAD = PRELUDE + dedent_src('''
    @activity
    async def act(s: str) -> str:
        return s

    @orchestration
    async def flow(ctx, s: str) -> str:
''')


def _line_of(source: str, needle: str) -> int:
    hits = [i for i, line in enumerate(source.splitlines(), 1) if needle in line]
    assert len(hits) == 1, (needle, hits)
    return hits[0]


# --------------------------------------------------------------------------------------
# Every line keeps its number
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    # black's "magic trailing comma": the comma's line break must survive the comma
    "    r = await durable(\n        act(\n            s,\n        ),\n    )\n",
    "    r = [durable\n        (\n          (act)(s)\n        ,)\n    ]\n",
    # the form's own parentheses, with a comment, and around `durable` alone
    "    fut = (\n        durable(act(s))\n    )\n",
    "    fut = (durable(act(s))  # a comment\n    )\n",
    "    fut = (\n        durable\n    )(act(s))\n",
    "    (\n        durable_trace_info\n    )('x')\n",
])
def test_the_rewrite_keeps_every_line_with_trailing_commas_and_parentheses(body: str) -> None:
    src = HEAD + body + "    marker = 1\n    return s\n"
    result = expand(src, "flow.py")
    assert result.problems == [] and result.rewrites == 1
    compile(result.code, "flow.py", "exec")
    assert len(result.code.splitlines()) == len(src.splitlines())
    assert _line_of(result.code, "marker = 1") == _line_of(src, "marker = 1")
    assert "# a comment" in result.code or "# a comment" not in src


def test_code_after_a_black_formatted_form_runs_on_the_users_lines(tmp_path: Path) -> None:
    (tmp_path / "flows.py").write_text(PRELUDE + dedent_src('''
        @activity
        async def act(s: str) -> str:
            return s

        @orchestration
        async def flow(ctx, s: str) -> str:
            fut = durable(
                act(
                    s,
                ),
            )
            return await fut

        def after() -> int:
            return 1
    '''))
    (tmp_path / "main.py").write_text(dedent_src('''
        import duroxide_macros.install
        import flows
        print(flows.after.__code__.co_firstlineno)
    '''))
    proc = run_cmd([sys.executable, "main.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == _line_of((tmp_path / "flows.py").read_text(), "def after")


# --------------------------------------------------------------------------------------
# `durable(x())` of something that may well be an activity is not rejected
# --------------------------------------------------------------------------------------

def test_activities_made_by_a_users_decorator_or_a_rebinding_are_not_called_plain(tmp_path: Path) -> None:
    pkg = tmp_path / "shop"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "acts.py").write_text(dedent_src('''
        from duroxide_macros import activity

        def shop_activity(fn):
            return activity(typed=True)(fn)

        @shop_activity
        async def charge(x: str) -> str:
            return x

        async def refund(x: str) -> str:
            return x

        refund = activity(refund)

        def plain(x: str) -> str:
            return x
    '''))
    (pkg / "flows.py").write_text(PRELUDE + dedent_src('''
        from shop.acts import charge, plain
        from .acts import refund

        def local_activity(fn):
            return activity(fn)

        @local_activity
        async def audit(x: str) -> str:
            return x

        @orchestration
        async def flow(ctx, x: str) -> str:
            await durable(refund(x))
            await durable(audit(x))
            await durable(plain(x))
            return await durable(charge(x))
    '''))
    (tmp_path / "main.py").write_text("import duroxide_macros.install\nimport shop.flows\n")
    proc = run_cmd([sys.executable, "main.py"], tmp_path)
    flows = (pkg / "flows.py").read_text()
    # only the bare, never rebound def is reported
    assert f"flows.py:{_line_of(flows, 'durable(plain')}:" in proc.stderr
    assert proc.stderr.count("is not an @activity or @orchestration") == 1, proc.stderr


# --------------------------------------------------------------------------------------
# The determinism lint
# --------------------------------------------------------------------------------------

def test_the_body_of_a_durable_target_is_not_linted_as_a_helper() -> None:
    src = PRELUDE + dedent_src('''
        import time

        def shop_activity(fn):
            return activity(typed=True)(fn)

        @shop_activity
        async def stamp(x: str) -> str:
            return f"{x}{time.time()}"   # an activity: it may read the clock

        def label(x: str) -> str:
            return f"{x}{time.time()}"   # a helper: it may not

        @orchestration
        async def flow(ctx, x: str) -> str:
            return await durable(stamp(label(x)))
    ''')
    result = expand(src, "flow.py")
    assert [(p.line, "helper `label`" in p.message) for p in result.problems] == [
        (_line_of(src, "a helper: it may not"), True)]


def test_pure_conversions_in_time_and_secrets_are_not_flagged() -> None:
    src = PRELUDE + dedent_src('''
        import secrets
        import time

        @orchestration
        async def flow(ctx, order: dict) -> str:
            created = time.gmtime(order["created"])
            local = time.localtime(order["created"])
            text = time.ctime(order["created"]) + time.asctime(created)
            same = secrets.compare_digest(order["token"], "expected")
            now = time.gmtime()        # reads the clock
            token = secrets.token_hex()  # random
            return f"{created} {local} {text} {same} {now} {token}"
    ''')
    result = expand(src, "flow.py")
    assert [p.line for p in result.problems] == [_line_of(src, "reads the clock"), _line_of(src, "# random")]


def test_an_annotated_alias_of_a_clock_is_seen_through() -> None:
    src = PRELUDE + dedent_src('''
        from collections.abc import Callable
        from datetime import datetime

        clock: Callable[[], datetime] = datetime.now

        @orchestration
        async def flow(ctx, s: str) -> str:
            return str(clock())
    ''')
    result = expand(src, "flow.py")
    assert [p.line for p in result.problems] == [_line_of(src, "clock()")]
    assert "datetime.datetime.now" in result.problems[0].message


# --------------------------------------------------------------------------------------
# The context in scope
# --------------------------------------------------------------------------------------

def test_an_annotation_without_a_value_does_not_rebind_the_context() -> None:
    src = PRELUDE + dedent_src('''
        @activity
        async def act(s: str) -> str:
            return s

        @orchestration
        async def flow(ctx, s: str) -> str:
            ctx: OrchestrationContext   # a declaration for the type checker: binds nothing
            durable_trace_info("start")
            return await durable(act(s))
    ''')
    result = expand(src, "flow.py")
    assert result.problems == []
    assert '    ctx.trace_info("start")' in result.code
    assert "    return await (act.call(ctx, s))" in result.code


@pytest.mark.parametrize("annotation", [
    "OrchestrationContext", '"OrchestrationContext"',
    "duroxide_runtime.OrchestrationContext", '"duroxide_runtime.OrchestrationContext"',
])
def test_a_helper_annotated_with_the_context_in_any_spelling_gets_it(annotation: str) -> None:
    """A quoted dotted annotation (what `from __future__ import annotations` users write) was not seen."""
    src = PRELUDE + "import duroxide_runtime\n\n\n" + dedent_src(f'''
        async def step(ctx: {annotation}, s: str) -> str:
            return str(await durable_newguid())
    ''')
    result = expand(src, "helpers.py")
    assert result.problems == []
    assert "    return str(await ctx.new_guid())" in result.code


# --------------------------------------------------------------------------------------
# Forms re-exported through the user's own modules
# --------------------------------------------------------------------------------------

def test_forms_and_decorators_re_exported_by_a_project_module_are_resolved_by_binding(tmp_path: Path) -> None:
    """``from app.dx import durable``, where app/dx.py imports it from duroxide_macros, is the form.

    Before, such a module was claimed (it imports from duroxide_macros) but left unrewritten,
    and failed at run time saying the hook was not installed. The verdict depends on app/dx.py,
    so the cache is renewed when that changes.
    """
    app = tmp_path / "app"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "dx.py").write_text(PRELUDE + "from duroxide_macros import durable as run_durably\n")
    (app / "dx2.py").write_text("from app.dx import run_durably as rd, orchestration as orch\n")
    (app / "flows.py").write_text(dedent_src('''
        from duroxide_macros import activity
        from app.dx import durable
        from .dx2 import rd, orch
        from . import dx

        @activity
        async def act(s: str) -> str:
            return s

        @orch
        async def flow(ctx, s: str) -> str:
            a = await durable(act(s))
            b = await dx.durable(act(s))
            return a + await rd(act(s))
    '''))
    (tmp_path / "main.py").write_text(dedent_src('''
        import duroxide_macros.install
        import asyncio
        from duroxide_macros.prelude import *
        import app.flows

        print("durable" in app.flows.flow.fn.__code__.co_names)  # a call of `durable` left as it is

        async def main():
            store = InMemoryProvider()
            rt = await Runtime.builder().store(store).discover_activities().discover_orchestrations().start()
            try:
                print(await app.flows.flow.run(Client(store), "i1", "x", timeout=10))
            finally:
                await rt.shutdown()

        if "run" in __import__("sys").argv:
            asyncio.run(main())
    '''))
    proc = run_cmd([sys.executable, "main.py", "run"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "xx"]
    # app/dx.py now binds its own `durable`: the cached rewrite of app/flows.py is stale
    (app / "dx.py").write_text(PRELUDE + "from duroxide_macros import durable as run_durably\n\n"
                               "def durable(x):\n    return x\n")
    proc = run_cmd([sys.executable, "main.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True"]
    code = expand((app / "flows.py").read_text(), str(app / "flows.py"), "app.flows").code
    assert "await durable(act(s))" in code and "await (act.call(ctx, s))" in code


# --------------------------------------------------------------------------------------
# Signatures the runtime cannot call
# --------------------------------------------------------------------------------------

def test_a_keyword_only_orchestration_input_is_reported_at_import(tmp_path: Path) -> None:
    """Before, it imported cleanly and every instance failed with a TypeError."""
    (tmp_path / "flows.py").write_text(PRELUDE + dedent_src('''
        @orchestration
        async def ship(ctx, *, order: str) -> str:
            return order
    '''))
    (tmp_path / "main.py").write_text("import duroxide_macros.install\nimport flows\n")
    proc = run_cmd([sys.executable, "main.py"], tmp_path)
    assert proc.returncode == 1
    assert (f"flows.py:{_line_of((tmp_path / 'flows.py').read_text(), 'async def ship')}:1: orchestration 'ship' "
            "takes its input as a keyword-only parameter") in proc.stderr
    assert "(fix: remove the `*`" in proc.stderr


def test_helpers_re_exported_by_a_package_are_followed(tmp_path: Path) -> None:
    """``from app.util import stamp``, app/util/__init__.py re-exporting it from app/util/clock.py."""
    util = tmp_path / "app" / "util"
    util.mkdir(parents=True)
    (tmp_path / "app" / "__init__.py").write_text("")
    (util / "__init__.py").write_text("from .clock import stamp\n")
    (util / "clock.py").write_text("import time\n\n\ndef stamp(s):\n    return f'{s}{time.time()}'\n")
    flows = tmp_path / "app" / "flows.py"
    flows.write_text(PRELUDE + dedent_src('''
        from app.util import stamp

        @orchestration
        async def flow(ctx, s: str) -> str:
            return stamp(s)
    '''))
    result = expand(flows.read_text(), str(flows), "app.flows")
    assert [(p.path, p.line) for p in result.problems] == [(str(util / "clock.py"), 5)]
    assert "in helper `stamp`" in result.problems[0].message
    assert str(util / "clock.py") in result.dependencies and str(util / "__init__.py") in result.dependencies


def test_decorators_and_defaults_of_an_orchestration_are_not_its_code() -> None:
    """They run once, at import, where the def is: only the body is linted as orchestration code."""
    src = PRELUDE + dedent_src('''
        import random
        import time

        def read_version() -> str:
            with open("VERSION") as f:
                return f.read()

        @orchestration(version=read_version())
        async def flow(ctx, sides: int = random.randint(4, 6)) -> float:
            def inner(note=durable_trace_info("evaluated in the orchestration")) -> float:
                return time.time()
            return inner()
    ''')
    result = expand(src, "flow.py")
    assert [p.line for p in result.problems] == [_line_of(src, "return time.time()")]
    assert '    def inner(note=ctx.trace_info("evaluated in the orchestration")) -> float:' in result.code


@pytest.mark.parametrize("pattern", ["[c, *rest]", "[*c]", "str() as c", "{'k': c}", "{**c}"])
def test_a_match_capture_that_rebinds_the_context_is_reported(pattern: str) -> None:
    """libcst's scopes do not record match captures: the rewrite used to pass the captured value."""
    src = PRELUDE + dedent_src(f'''
        @activity
        async def notify(s: str) -> str:
            return s

        @orchestration
        async def flow(c, customers: list) -> str:
            match customers:
                case {pattern}:
                    pass
            return await durable(notify("x"))
    ''')
    result = expand(src, "flow.py")
    assert [(p.line, p.column) for p in result.problems] == [(_line_of(src, "durable(notify"), 18)]
    assert (f"would pass `c`, the context of orchestration `flow`, but `c` here is a match pattern capture "
            f"on line {_line_of(src, 'case ')}") in result.problems[0].message


# --------------------------------------------------------------------------------------
# Ownership: nothing that is not ours is read
# --------------------------------------------------------------------------------------

def test_a_namespace_package_shared_with_an_aware_distribution_is_not_read(tmp_path: Path) -> None:
    """acme-flows (declares a duroxide entry point) and acme-billing (does not) share the namespace `acme`.

    top_level.txt says `acme` for both: the hook used to read every `acme.*` source.
    """
    from .test_hook_ownership import AUDIT, FLOW

    site = tmp_path / "lib" / "site-packages"
    for project, pkg, meta in [("acme_flows", "flows", "[duroxide]\nacme_flows = acme.flows\n"),
                               ("acme_billing", "billing", "")]:
        (site / "acme" / pkg).mkdir(parents=True)
        (site / "acme" / pkg / "__init__.py").write_text(FLOW.format(name=pkg) if meta else "X = 1\n")
        info = site / f"{project}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project}\nVersion: 1.0\n")
        (info / "top_level.txt").write_text("acme\n")
        (info / "RECORD").write_text(f"acme/{pkg}/__init__.py,,\n{info.name}/RECORD,,\n")
        if meta:
            (info / "entry_points.txt").write_text(meta)
    (tmp_path / "audit.py").write_text(AUDIT)
    (tmp_path / "runner.py").write_text(dedent_src('''
        from audit import HOOK_FILES
        import duroxide_macros.install
        import json
        import acme.flows, acme.billing
        print(json.dumps([type(acme.flows.__spec__.loader).__name__, type(acme.billing.__spec__.loader).__name__,
                          sorted({p for e, p, w in HOOK_FILES if e == "open" and p.endswith(".py")})]))
    '''))
    proc = run_cmd([sys.executable, "runner.py"], tmp_path, PYTHONPATH=str(site))
    assert proc.returncode == 0, proc.stderr
    import json

    flows_loader, billing_loader, read = json.loads(proc.stdout.splitlines()[-1])
    assert (flows_loader, billing_loader) == ("DurableLoader", "SourceFileLoader")
    assert str(site / "acme" / "billing" / "__init__.py") not in read
    assert str(site / "acme" / "flows" / "__init__.py") in read


def test_a_helper_is_read_from_the_file_python_imports(tmp_path: Path) -> None:
    """With both app/util.py and app/util/__init__.py, Python imports the package; so does the lint."""
    app = tmp_path / "app"
    (app / "util").mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "util.py").write_text("def stamp(s):\n    return s\n")
    (app / "util" / "__init__.py").write_text("import time\n\n\ndef stamp(s):\n    return f'{s}{time.time()}'\n")
    flows = app / "flows.py"
    flows.write_text(PRELUDE + "from app.util import stamp\n\n\n@orchestration\nasync def flow(ctx, s):\n"
                     "    return stamp(s)\n")
    result = expand(flows.read_text(), str(flows), "app.flows")
    assert [(p.path, p.line) for p in result.problems] == [(str(app / "util" / "__init__.py"), 5)]


# --------------------------------------------------------------------------------------
# expand() never raises
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    "x = " + " + ".join(["a"] * 600) + "\n",
    "if a:\n    pass\n" + "".join(f"elif a == {i}:\n    pass\n" for i in range(500)),
    "x = a" + ".b" * 1000 + "\n",
    "x = " + "f(" * 150 + ")" * 150 + "\n",
    "@orchestration\nasync def flow(ctx, a):\n    durable_trace_info('x')\n    return " + " and ".join(["a"] * 800) + "\n",
])
def test_deep_code_that_python_compiles_is_expanded_not_a_recursion_error(body: str) -> None:
    """libcst's visitors recurse per level of nesting; the default recursion limit is not enough."""
    src = PRELUDE + body
    compile(src, "deep.py", "exec")
    limit = sys.getrecursionlimit()
    result = expand(src, "deep.py")
    assert result.problems == []
    assert result.code == src.replace("durable_trace_info(", "ctx.trace_info(")
    assert sys.getrecursionlimit() == limit


def test_code_libcst_cannot_parse_is_not_called_a_syntax_error() -> None:
    src = PRELUDE + "x = (" + " ".join(['"a"'] * 6000) + ")\n"
    compile(src, "long.py", "exec")
    [problem] = expand(src, "long.py").problems
    assert problem.line == 2 and "syntax error" not in problem.message
    assert problem.message.startswith("libcst, which the rewrite parses with, cannot parse this valid code")


def test_a_project_package_named_like_a_standard_library_module_is_claimed(tmp_path: Path) -> None:
    """The project's own `mailbox/` package: `mailbox.flows` was skipped by name as if it were stdlib."""
    (tmp_path / "mailbox").mkdir()
    (tmp_path / "mailbox" / "__init__.py").write_text("")
    (tmp_path / "mailbox" / "flows.py").write_text(PRELUDE + dedent_src('''
        @activity
        async def send(s: str) -> str:
            return s

        @orchestration
        async def deliver(ctx, s: str) -> str:
            return await durable(send(s))
    '''))
    (tmp_path / "main.py").write_text(dedent_src('''
        import duroxide_macros.install
        import email.mime.text, mailbox.flows
        print(type(mailbox.flows.__spec__.loader).__name__, type(email.mime.text.__spec__.loader).__name__)
    '''))
    proc = run_cmd([sys.executable, "main.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["DurableLoader", "SourceFileLoader"]


def test_a_main_module_run_with_dash_m_has_its_package_helpers_linted(tmp_path: Path) -> None:
    """`python -m app.main` is checked as the module app.main: helpers of app are followed."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "helpers.py").write_text("import time\n\ndef stamp():\n    return time.time()\n")
    (app / "main.py").write_text(dedent_src('''
        import duroxide_macros.install
        from duroxide_macros.prelude import *
        from .helpers import stamp

        @orchestration
        async def flow(ctx: OrchestrationContext, x: str) -> str:
            return str(stamp())

        print("RAN")
    '''))
    proc = run_cmd([sys.executable, "-m", "app.main"], tmp_path)
    assert proc.returncode != 0 and "RAN" not in proc.stdout
    assert f"{app / 'helpers.py'}:4:12: `time.time()` in helper `stamp` (called from orchestration `flow`" \
        in proc.stderr


def test_an_activity_called_without_durable_in_a_rewritten_module_names_that_cause(tmp_path: Path) -> None:
    (tmp_path / "flows_direct.py").write_text(dedent_src('''
        from duroxide_macros.prelude import *

        @activity(typed=True)
        async def dc_double(x: int) -> int:
            return 2 * x

        @orchestration
        async def dc_flow(ctx: OrchestrationContext, n: int) -> int:
            return await dc_double(n)
    '''))
    (tmp_path / "main.py").write_text(dedent_src('''
        import duroxide_macros.install
        import asyncio
        from duroxide_macros.prelude import *
        import flows_direct

        async def main():
            store = InMemoryProvider()
            rt = await Runtime.builder().store(store).discover_activities().discover_orchestrations().start()
            client = Client(store)
            await flows_direct.dc_flow.start(client, "i1", 2)
            status = await flows_direct.dc_flow.wait(client, "i1", 20)
            print("ERROR", status.error)
            await rt.shutdown()

        asyncio.run(main())
    '''))
    proc = run_cmd([sys.executable, "main.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "the call of 'dc_double' is not wrapped in durable(...)" in proc.stdout
    assert "await durable(dc_double(...))" in proc.stdout
    assert "import duroxide_macros.install" not in proc.stdout  # the hook did its part: not the advice here
