"""The import hook: which modules it claims, its bytecode-like cache, line numbers, main scripts, pytest.

Everything that depends on interpreter state (cache, -O, PYTHONDONTWRITEBYTECODE,
PYTHONPYCACHEPREFIX, the main script, pytest's assertion rewriting) runs in a
fresh subprocess on real files in ``tmp_path``.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from duroxide_macros.expand import EXPANDER_VERSION
from duroxide_macros.hook import DurableFinder

FIXTURES = Path(__file__).parent / "fixtures" / "macros"
TAG = sys.implementation.cache_tag

from .support import clean_env, dedent_src, run_cmd


def _mark(source: str, name: str) -> int:
    hits = [i for i, line in enumerate(source.splitlines(), 1) if f"MARK:{name}" in line]
    assert len(hits) == 1, (name, hits)
    return hits[0]


# --------------------------------------------------------------------------------------
# Which modules the hook claims
# --------------------------------------------------------------------------------------

def test_only_modules_using_forms_are_claimed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tag = uuid.uuid4().hex[:8]
    plain, flows = f"plain_{tag}", f"flows_{tag}"
    (tmp_path / f"{plain}.py").write_text("import json\n\ndef dump(x):\n    return json.dumps(x)\n")
    (tmp_path / f"{flows}.py").write_text(dedent_src(f'''
        from duroxide_macros.prelude import *

        @activity
        async def oc_act_{tag}(s: str) -> str:
            return s

        @orchestration
        async def oc_flow_{tag}(ctx, s: str) -> str:
            return await durable(oc_act_{tag}(s))
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    assert sum(isinstance(f, DurableFinder) for f in sys.meta_path) == 1  # installed by the pytest plugin

    spec = importlib.util.find_spec(plain)
    assert spec is not None and type(spec.loader) is importlib.machinery.SourceFileLoader
    mod = importlib.import_module(plain)
    assert type(mod.__spec__.loader) is importlib.machinery.SourceFileLoader
    assert mod.dump([1]) == "[1]"

    spec = importlib.util.find_spec(flows)
    assert spec is not None and type(spec.loader) is not importlib.machinery.SourceFileLoader
    fmod = importlib.import_module(flows)
    assert fmod.__file__ == str(tmp_path / f"{flows}.py")
    body = getattr(fmod, f"oc_flow_{tag}").__wrapped__.__code__
    assert "durable" not in body.co_names and "call" in body.co_names


def test_install_import_claims_nothing_else_and_is_idempotent(tmp_path: Path) -> None:
    (tmp_path / "plainmod.py").write_text("X = 1\n")
    (tmp_path / "runner.py").write_text(dedent_src('''
        import duroxide_macros.install
        import duroxide_macros.install
        import importlib, importlib.machinery, sys
        from duroxide_macros.hook import install
        install(); install()
        import plainmod, colorsys
        print("FINDERS", sum(type(f).__name__ == "DurableFinder" for f in sys.meta_path))
        for m in (plainmod, colorsys):
            print("LOADER", m.__name__, type(m.__spec__.loader) is importlib.machinery.SourceFileLoader)
        print("RAN ONCE")
    '''))
    proc = run_cmd([sys.executable, "runner.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["FINDERS 1", "LOADER plainmod True", "LOADER colorsys True", "RAN ONCE"]
    # the plain module got an ordinary pyc, and the hook only an empty "no forms" verdict
    # (so the next import does not read and scan its source again); no rewritten code
    files = sorted(p.name for p in (tmp_path / "__pycache__").iterdir())
    assert files[1] == f"plainmod.{TAG}.pyc"
    assert files[0].startswith(f"plainmod.{TAG}.duroxide-") and files[0].endswith(".noforms")
    assert (tmp_path / "__pycache__" / files[0]).stat().st_size == 0
    assert len(files) == 2


def test_packages_and_relative_imports_of_rewritten_modules(tmp_path: Path) -> None:
    pkg = tmp_path / "shop"
    (pkg / "flows").mkdir(parents=True)
    (pkg / "__init__.py").write_text(dedent_src('''
        from duroxide_macros.prelude import *

        @orchestration
        async def pk_root(ctx, s: str) -> str:
            return await durable(pk_act(s))

        from .flows.acts import pk_act
    '''))
    (pkg / "flows" / "__init__.py").write_text("")
    (pkg / "flows" / "helpers.py").write_text("def up(s):\n    return s.upper()\n")
    (pkg / "flows" / "acts.py").write_text(dedent_src('''
        from duroxide_macros.prelude import *
        from . import helpers

        @activity
        async def pk_act(s: str) -> str:
            durable_trace_info("acting")
            return helpers.up(s)
    '''))
    (tmp_path / "run.py").write_text(dedent_src('''
        import duroxide_macros.install
        import asyncio, importlib.machinery
        import shop, shop.flows.acts, shop.flows.helpers
        from duroxide_macros.prelude import *

        for m in (shop, shop.flows.acts, shop.flows.helpers):
            print(m.__name__, m.__package__, type(m.__spec__.loader) is importlib.machinery.SourceFileLoader)
        print("PATH", shop.__path__ == [shop.__file__.rsplit("/", 1)[0]])

        async def main():
            store = InMemoryProvider()
            rt = await Runtime.builder().store(store).discover_activities().discover_orchestrations().start()
            print("RESULT", await shop.pk_root.run(Client(store), "x", "abc", timeout=20))
            await rt.shutdown()

        asyncio.run(main())
    '''))
    proc = run_cmd([sys.executable, "run.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "shop shop False", "shop.flows.acts shop.flows False", "shop.flows.helpers shop.flows True",
        "PATH True", "RESULT ABC"]


def test_source_encoding_of_rewritten_modules_is_honoured(tmp_path: Path) -> None:
    """PEP 263 coding declarations and a UTF-8 BOM work as they do without the hook."""
    (tmp_path / "latin_flows.py").write_bytes(
        b"# -*- coding: latin-1 -*-\n"
        b"from duroxide_macros.prelude import *\n"
        b"NAME = 'caf\xe9'\n"
        b"@orchestration\n"
        b"async def enc_latin_flow(ctx, s):\n"
        b"    return await durable(enc_latin_flow(s))\n")
    (tmp_path / "bom_flows.py").write_bytes(
        b"\xef\xbb\xbffrom duroxide_macros.prelude import *\n"
        b"NAME = 'caf\xc3\xa9'\n"
        b"@orchestration\n"
        b"async def enc_bom_flow(ctx, s):\n"
        b"    return await durable(enc_bom_flow(s))\n")
    (tmp_path / "run.py").write_text(
        "import duroxide_macros.install\nimport bom_flows, latin_flows\n"
        "print(bom_flows.NAME == latin_flows.NAME == 'caf\\u00e9')\n")
    proc = run_cmd([sys.executable, "run.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "True\n"


# --------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------

CACHE_MODULE = dedent_src('''
    from duroxide_macros.prelude import *

    VALUE = 1

    def asserts_on():
        try:
            assert False
        except AssertionError:
            return True
        return False

    @activity
    async def cache_act(s: str) -> str:
        return s

    @orchestration
    async def cache_flow(ctx, s: str) -> str:
        return await durable(cache_act(s))

    FLOW_NAMES = cache_flow.__wrapped__.__code__.co_names
''')

# Counts libcst parses (the expander's work) without touching duroxide's code.
CACHE_RUNNER = dedent_src('''
    import libcst
    _parse = libcst.parse_module
    _count = [0]
    def _counting(*args, **kwargs):
        _count[0] += 1
        return _parse(*args, **kwargs)
    libcst.parse_module = _counting

    import duroxide_macros.install
    import cachemod
    assert "durable" not in cachemod.FLOW_NAMES
    print("VALUE", cachemod.VALUE)
    print("ASSERTS", cachemod.asserts_on())
    print("PARSES", _count[0])
''')


def _cache_project(tmp_path: Path) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "cachemod.py").write_text(CACHE_MODULE)
    (proj / "runner.py").write_text(CACHE_RUNNER)
    return proj


def _load(proj: Path, *flags: str, **env: str) -> dict[str, str]:
    proc = run_cmd([sys.executable, *flags, "runner.py"], proj, **env)
    assert proc.returncode == 0, proc.stderr
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines())


def _cache_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.pyc") if p.is_file() and "cachemod" in p.name)


def test_cache_is_written_with_its_own_name_and_reused(tmp_path: Path) -> None:
    proj = _cache_project(tmp_path)
    assert _load(proj) == {"VALUE": "1", "ASSERTS": "True", "PARSES": "1"}
    files = _cache_files(tmp_path)
    assert len(files) == 1, files
    cache = files[0]
    assert cache.parent == proj / "__pycache__"
    assert cache.name.startswith(f"cachemod.{TAG}.") and cache.name.endswith(".pyc")
    assert cache.name != f"cachemod.{TAG}.pyc", "must not take the name of the plain bytecode"
    assert "duroxide" in cache.name and str(EXPANDER_VERSION) in cache.name
    assert "opt-" not in cache.name
    before = cache.stat()
    assert _load(proj) == {"VALUE": "1", "ASSERTS": "True", "PARSES": "0"}
    after = cache.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert _cache_files(tmp_path) == [cache]
    assert [p.name for p in (proj / "__pycache__").iterdir()] == [cache.name]  # no temp files left


def test_cache_is_invalidated_when_the_source_changes(tmp_path: Path) -> None:
    proj = _cache_project(tmp_path)
    assert _load(proj)["PARSES"] == "1"
    src = proj / "cachemod.py"
    stat = src.stat()
    src.write_text(CACHE_MODULE.replace("VALUE = 1", "VALUE = 2"))  # same size ...
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))         # ... and same mtime: only the hash differs
    assert _load(proj) == {"VALUE": "2", "ASSERTS": "True", "PARSES": "1"}
    assert _load(proj) == {"VALUE": "2", "ASSERTS": "True", "PARSES": "0"}


def test_optimisation_level_gets_its_own_cache_file(tmp_path: Path) -> None:
    proj = _cache_project(tmp_path)
    assert _load(proj) == {"VALUE": "1", "ASSERTS": "True", "PARSES": "1"}
    plain = _cache_files(tmp_path)
    # -O must not reuse the plain cache (its asserts would survive)
    assert _load(proj, "-O") == {"VALUE": "1", "ASSERTS": "False", "PARSES": "1"}
    files = _cache_files(tmp_path)
    assert len(files) == 2
    (opt1,) = set(files) - set(plain)
    assert "opt-1" in opt1.name and "duroxide" in opt1.name
    assert _load(proj, "-O") == {"VALUE": "1", "ASSERTS": "False", "PARSES": "0"}
    assert _load(proj) == {"VALUE": "1", "ASSERTS": "True", "PARSES": "0"}
    assert _load(proj, "-OO") == {"VALUE": "1", "ASSERTS": "False", "PARSES": "1"}
    assert any("opt-2" in p.name for p in _cache_files(tmp_path))


def test_dont_write_bytecode_writes_no_cache(tmp_path: Path) -> None:
    proj = _cache_project(tmp_path)
    assert _load(proj, PYTHONDONTWRITEBYTECODE="1")["PARSES"] == "1"
    assert _cache_files(tmp_path) == []
    assert _load(proj, "-B")["PARSES"] == "1"
    assert _cache_files(tmp_path) == []
    assert not (proj / "__pycache__").exists()


def test_pycache_prefix_holds_the_cache(tmp_path: Path) -> None:
    proj = _cache_project(tmp_path)
    prefix = tmp_path / "prefix"
    assert _load(proj, PYTHONPYCACHEPREFIX=str(prefix))["PARSES"] == "1"
    files = _cache_files(tmp_path)
    assert len(files) == 1
    cache = files[0]
    assert cache.parent == prefix / str(proj.resolve()).lstrip(os.sep)
    assert "duroxide" in cache.name
    assert not (proj / "__pycache__").exists()
    assert _load(proj, PYTHONPYCACHEPREFIX=str(prefix))["PARSES"] == "0"
    # without the prefix the cache under the prefix is not used
    assert _load(proj)["PARSES"] == "1"


def test_corrupt_cache_is_ignored_and_replaced(tmp_path: Path) -> None:
    proj = _cache_project(tmp_path)
    _load(proj)
    (cache,) = _cache_files(tmp_path)
    good = cache.read_bytes()
    cache.write_bytes(good[: len(good) // 2])  # truncated
    assert _load(proj) == {"VALUE": "1", "ASSERTS": "True", "PARSES": "1"}
    assert cache.read_bytes() == good
    cache.write_bytes(b"garbage" * 10)
    assert _load(proj)["PARSES"] == "1"
    assert _load(proj)["PARSES"] == "0"


def test_concurrent_first_imports_share_the_cache_safely(tmp_path: Path) -> None:
    proj = _cache_project(tmp_path)
    procs = [subprocess.Popen([sys.executable, "runner.py"], cwd=proj, env=clean_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert "VALUE 1" in out
    assert _load(proj)["PARSES"] == "0"
    assert len(list((proj / "__pycache__").iterdir())) == 1  # no temp files left behind


# --------------------------------------------------------------------------------------
# Line numbers: tracebacks, inspect, tracing (coverage), pdb
# --------------------------------------------------------------------------------------

LINES_RUNNER = dedent_src('''
    import duroxide_macros.install
    import asyncio, inspect, json, logging, sys
    import lines_mod
    from duroxide_macros.prelude import *

    FILE = lines_mod.__file__
    traced = set()
    def tracer(frame, event, arg):
        if frame.f_code.co_filename != FILE:
            return None
        def local(frame, event, arg):
            if event == "line":
                traced.add(frame.f_lineno)
            return local
        return local

    records = []
    class Capture(logging.Handler):
        def emit(self, record):
            records.append({"logger": record.name, "msg": record.getMessage(),
                            "instance_id": getattr(record, "instance_id", None),
                            "activity": getattr(record, "activity", None)})
    logging.getLogger("duroxide").addHandler(Capture())
    logging.getLogger("duroxide").setLevel(logging.INFO)

    async def main():
        out = {"getsource_flow": inspect.getsource(lines_mod.ln_flow),
               "getsource_add": inspect.getsource(lines_mod.ln_add),
               "getsource_helper": inspect.getsource(lines_mod.ln_plain_helper)}
        store = InMemoryProvider()
        rt = await Runtime.builder().store(store).discover_activities().discover_orchestrations().start()
        client = Client(store)
        sys.settrace(tracer)
        try:
            out["ok"] = await lines_mod.ln_flow.run(client, "ok", 1, timeout=20)
        finally:
            sys.settrace(None)
        for n in (7, 0, -1):
            await lines_mod.ln_flow.start(client, f"n{n}", n)
            status = await lines_mod.ln_flow.wait(client, f"n{n}", 20)
            out[f"status_{n}"] = type(status).__name__
            out[f"tb_{n}"] = status.details.traceback if status.details else status.error
        for event in await client.read_history("n-1"):
            if type(event).__name__ == "ActivityFailed":
                out["activity_tb"] = event.details.traceback
        out["traced"] = sorted(traced)
        out["records"] = records
        await rt.shutdown()
        print(json.dumps(out))

    asyncio.run(main())
''')


def _tb_lines(tb: str, path: Path, func: str) -> list[int]:
    import re
    return [int(m) for m in re.findall(rf'File "{re.escape(str(path))}", line (\d+), in {func}\n', tb)]


def test_tracebacks_inspect_and_tracing_point_at_the_users_lines(tmp_path: Path) -> None:
    mod = tmp_path / "lines_mod.py"
    shutil.copy(FIXTURES / "multiline_orch.py", mod)
    (tmp_path / "runner.py").write_text(LINES_RUNNER)
    src = mod.read_text()
    lines = src.splitlines(keepends=True)
    proc = run_cmd([sys.executable, "runner.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["ok"] > 0

    # inspect.getsource: the user's text, decorator to last line
    flow_start = _mark(src, "flow_def") - 1
    assert out["getsource_flow"] == "".join(lines[flow_start - 1:_mark(src, "orch_return")])
    assert out["getsource_add"].startswith("@activity(typed=True)\nasync def ln_add(")
    assert out["getsource_add"].endswith("    return a + b\n")
    assert out["getsource_helper"] == "".join(lines[_mark(src, "helper_div") - 2:_mark(src, "helper_div")])

    # an exception raised in the orchestration body
    assert out["status_7"] == "Failed"
    assert _tb_lines(out["tb_7"], mod, "ln_flow") == [_mark(src, "orch_raise")]
    assert "seven is unlucky" in out["tb_7"]
    # ... in a helper called from an argument on a continuation line of a multi-line durable(...)
    assert out["status_0"] == "Failed"
    assert _tb_lines(out["tb_0"], mod, "ln_flow") == [_mark(src, "arg_line")]
    assert _tb_lines(out["tb_0"], mod, "ln_plain_helper") == [_mark(src, "helper_div")]
    # ... in an activity
    assert out["status_-1"] == "Failed"
    assert _tb_lines(out["activity_tb"], mod, "ln_add") == [_mark(src, "activity_raise")]
    assert _tb_lines(out["tb_-1"], mod, "ln_flow") == [_mark(src, "first_durable")]

    # a tracer (what coverage uses) only sees lines that hold code in the user's file
    traced = set(out["traced"])
    code_lines = {i for i, line in enumerate(lines, 1)
                  if line.strip() and not line.strip().startswith(("#", '"""', "@"))}
    assert traced <= code_lines, sorted(traced - code_lines)
    assert {_mark(src, "first_durable"), _mark(src, "arg_line"), _mark(src, "orch_return")} <= traced
    assert _mark(src, "orch_raise") not in traced

    # trace forms log with the orchestration's and the activity's context
    recs = out["records"]
    flow_logs = [r for r in recs if r["msg"] == "flow start 1"]
    assert len(flow_logs) == 1 and flow_logs[0]["instance_id"] == "ok"
    assert flow_logs[0]["logger"] == "duroxide.orchestration"
    act_logs = [r for r in recs if r["msg"].startswith("adding 1 and 100")]
    assert len(act_logs) == 1
    assert act_logs[0]["instance_id"] == "ok" and act_logs[0]["activity"] == "ln_add"
    assert act_logs[0]["logger"] == "duroxide.activity"


def test_pdb_breakpoint_on_a_user_line_stops_there(tmp_path: Path) -> None:
    mod = tmp_path / "lines_mod.py"
    shutil.copy(FIXTURES / "multiline_orch.py", mod)
    src = mod.read_text()
    (tmp_path / "runner.py").write_text(dedent_src('''
        import duroxide_macros.install
        import asyncio, lines_mod
        from duroxide_macros.prelude import *

        async def main():
            store = InMemoryProvider()
            rt = await Runtime.builder().store(store).discover_activities().discover_orchestrations().start()
            print("RESULT", await lines_mod.ln_flow.run(Client(store), "p1", 2, timeout=30))
            await rt.shutdown()

        asyncio.run(main())
    '''))
    line = _mark(src, "orch_return")
    commands = f"break {mod}:{line}\ncontinue\np ('N_IS', n, second)\ncontinue\nquit\n"
    proc = subprocess.run([sys.executable, "-m", "pdb", "runner.py"], cwd=tmp_path, env=clean_env(), input=commands,
                          capture_output=True, text=True, timeout=60)
    out = proc.stdout
    assert f"Breakpoint 1 at {mod}:{line}" in out, out
    assert f"> {mod}({line})ln_flow()" in out, out
    assert "-> return second  # MARK:orch_return" in out
    assert "('N_IS', 2, " in out
    assert "RESULT" in out


# --------------------------------------------------------------------------------------
# The main script
# --------------------------------------------------------------------------------------

MAIN_SCRIPT = dedent_src('''
    import duroxide_macros.install
    import asyncio
    from duroxide_macros.prelude import *

    print("BODY", __name__)

    @activity(typed=True)
    async def ms_double(x: int) -> int:
        return 2 * x

    @orchestration
    async def ms_flow(ctx: OrchestrationContext, n: int) -> int:
        durable_trace_info("n={}", n)
        a = await durable(ms_double(
            n,
        ))
        return a + 1

    def fail():
        raise LookupError("main boom")  # MARK:fail_raise

    async def main():
        store = InMemoryProvider()
        rt = await Runtime.builder().store(store).discover_activities().discover_orchestrations().start()
        print("RESULT", await ms_flow.run(Client(store), "m1", 20, timeout=20))
        await rt.shutdown()

    if __name__ == "__main__":
        asyncio.run(main())
        fail()  # MARK:fail_call
''')


def test_main_script_is_rewritten_and_keeps_its_lines(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(MAIN_SCRIPT)
    proc = run_cmd([sys.executable, "app.py"], tmp_path)
    assert proc.stdout.splitlines() == ["BODY __main__", "RESULT 41"], proc.stderr
    assert proc.returncode == 1
    err = proc.stderr
    assert f'File "{app}", line {_mark(MAIN_SCRIPT, "fail_raise")}, in fail' in err, err
    assert f'File "{app}", line {_mark(MAIN_SCRIPT, "fail_call")}, in <module>' in err, err
    assert err.rstrip().endswith("LookupError: main boom")
    assert err.count("LookupError: main boom") == 1


def test_main_script_exit_code_and_plain_scripts(tmp_path: Path) -> None:
    (tmp_path / "exits.py").write_text(dedent_src('''
        import duroxide_macros.install
        import sys
        from duroxide_macros.prelude import *
        print("BODY")

        @orchestration
        async def ex_flow(ctx, s):
            return await durable(ex_flow(s))

        sys.exit(3)
    '''))
    proc = run_cmd([sys.executable, "exits.py"], tmp_path)
    assert (proc.returncode, proc.stdout) == (3, "BODY\n"), proc.stderr
    (tmp_path / "plain.py").write_text("import duroxide_macros.install\nprint('PLAIN', __name__)\n")
    proc = run_cmd([sys.executable, "plain.py"], tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "PLAIN __main__\n"), proc.stderr


def test_main_script_misuse_is_reported_before_anything_runs(tmp_path: Path) -> None:
    src = dedent_src('''
        import duroxide_macros.install
        import time
        from duroxide_macros.prelude import *
        print("BODY RAN")

        @orchestration
        async def bad_flow(ctx, x):
            t = time.time()  # MARK:bad_time
            return await durable(x)  # MARK:bad_durable
    ''')
    app = tmp_path / "bad_app.py"
    app.write_text(src)
    proc = run_cmd([sys.executable, "bad_app.py"], tmp_path)
    assert proc.returncode != 0
    assert "BODY RAN" not in proc.stdout
    assert f"{app}:{_mark(src, 'bad_time')}:9: " in proc.stderr, proc.stderr
    assert f"{app}:{_mark(src, 'bad_durable')}:18: " in proc.stderr
    assert "DurableExpansionError" in proc.stderr


# --------------------------------------------------------------------------------------
# pytest test modules
# --------------------------------------------------------------------------------------

PYTEST_MODULE = dedent_src('''
    from duroxide_macros.prelude import *

    @activity(typed=True)
    async def pt_double(x: int) -> int:
        return x * 2

    @orchestration
    async def pt_flow(ctx: OrchestrationContext, n: int) -> int:
        a = await durable(pt_double(n))
        durable_trace_info("got {}", a)
        return a + 1

    async def test_runs_an_orchestration(duroxide_runtime, duroxide_client):
        assert await pt_flow.run(duroxide_client, "i1", 20, timeout=20) == 41

    def test_fails():
        a = 1
        b = 2
        assert a == b  # MARK:failing_assert
''')


def test_pytest_modules_with_forms_keep_assertion_rewriting(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    (tmp_path / "test_flow.py").write_text(PYTEST_MODULE)
    line = _mark(PYTEST_MODULE, "failing_assert")
    for attempt in ("fresh", "cached"):
        proc = run_cmd([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "test_flow.py"], tmp_path,
                    timeout=120)
        out = proc.stdout
        assert proc.returncode == 1, (attempt, out + proc.stderr)
        assert "1 failed, 1 passed" in out, (attempt, out)
        assert "PASSED test_flow.py::test_runs_an_orchestration" in out
        assert "E       assert 1 == 2" in out, (attempt, out)
        assert f"test_flow.py:{line}: AssertionError" in out, (attempt, out)
    assert any("duroxide" in p.name for p in (tmp_path / "__pycache__").iterdir())


def test_no_forms_verdict_is_dropped_when_the_source_changes(tmp_path: Path) -> None:
    """A module once seen without forms is rewritten as soon as an edit adds one."""
    mod = tmp_path / "laterforms.py"
    mod.write_text("VALUE = 1\n")
    runner = tmp_path / "runner.py"
    runner.write_text(dedent_src('''
        import duroxide_macros.install
        import laterforms
        print("USES", type(laterforms.__spec__.loader).__name__)
    '''))
    first = run_cmd([sys.executable, "runner.py"], tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["USES", "SourceFileLoader"]
    mod.write_text(dedent_src('''
        from duroxide_macros.prelude import *

        @orchestration
        async def later_orch(ctx, s: str) -> str:
            return await durable(later_act(s))

        @activity(typed=True)
        async def later_act(s: str) -> str:
            return s
    '''))
    second = run_cmd([sys.executable, "runner.py"], tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split() == ["USES", "DurableLoader"]  # the stale verdict names the old mtime/size
