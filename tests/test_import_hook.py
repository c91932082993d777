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

from duroxide_macros.cache import EXPANDER_VERSION
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
    # the plain module got an ordinary pyc and nothing else; the script (it imports duroxide_macros)
    # got its rewritten code cached
    files = sorted(p.name for p in (tmp_path / "__pycache__").iterdir())
    assert files == [f"plainmod.{TAG}.pyc", f"runner.{TAG}.duroxide-{EXPANDER_VERSION}.pyc"]


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

# Counts libcst parses (the expander's work) without touching duroxide's code. It installs
# the hook with install() rather than `import duroxide_macros.install`, so that only
# cachemod is rewritten (not this script, whose top would run twice).
CACHE_RUNNER = dedent_src('''
    import libcst
    _parse = libcst.parse_module
    _count = [0]
    def _counting(*args, **kwargs):
        _count[0] += 1
        return _parse(*args, **kwargs)
    libcst.parse_module = _counting

    from duroxide_macros.hook import install
    install()
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


def test_durable_options_run_and_a_wrong_one_is_reported_at_its_line(tmp_path: Path) -> None:
    src = dedent_src('''
        import duroxide_macros.install
        from duroxide_macros.prelude import *

        @activity(typed=True)
        async def opt_double(x: int) -> int:
            return 2 * x

        @orchestration
        async def opt_flow(ctx: OrchestrationContext, x: int) -> int:
            a = await durable(opt_double(x), retry=RetryPolicy(max_attempts=2), timeout=timedelta(seconds=30))
            b = await durable(
                opt_double(a),
                heartbeat_timeout=timedelta(seconds=30),
            )
            return b

        @duroxide_main(provider="memory", log_level="error")
        async def main() -> None:
            print("RESULT", await opt_flow.run("o-1", 5, timeout=30))

        if __name__ == "__main__":
            main()
    ''')
    app = tmp_path / "opt_app.py"
    app.write_text(src)
    proc = run_cmd([sys.executable, "opt_app.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "RESULT 20\n"

    bad = src.replace("heartbeat_timeout=timedelta(seconds=30)", "heartbeat=30").replace(
        "    b = await durable(", "    b = await durable(  # MARK:bad_option")
    app.write_text(bad)
    proc = run_cmd([sys.executable, "opt_app.py"], tmp_path)
    assert proc.returncode != 0
    assert "RESULT" not in proc.stdout
    assert "DurableExpansionError" in proc.stderr
    assert (f"{app}:{_mark(bad, 'bad_option')}:15: durable() has no option `heartbeat=` (fix: durable(charge(order), "
            "retry=RetryPolicy(max_attempts=3), timeout=timedelta(seconds=10), heartbeat_timeout=timedelta(seconds=30))"
            ", each optional)") in proc.stderr, proc.stderr


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
    # a test module that does not import duroxide_macros is pytest's alone
    (tmp_path / "test_plain.py").write_text(dedent_src('''
        """Not a duroxide_macros user."""
        import sys

        def test_loader_is_pytests():
            assert type(sys.modules[__name__].__spec__.loader).__name__ == "AssertionRewritingHook"

        def test_plain_fails():
            assert [1, 2] == [1, 3]
    '''))
    line = _mark(PYTEST_MODULE, "failing_assert")
    for attempt in ("fresh", "cached"):
        proc = run_cmd([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "test_flow.py",
                        "test_plain.py"], tmp_path, timeout=120)
        out = proc.stdout
        assert proc.returncode == 1, (attempt, out + proc.stderr)
        assert "2 failed, 2 passed" in out, (attempt, out)
        assert "PASSED test_plain.py::test_loader_is_pytests" in out
        assert "E       assert [1, 2] == [1, 3]" in out
        assert "PASSED test_flow.py::test_runs_an_orchestration" in out
        assert "E       assert 1 == 2" in out, (attempt, out)
        assert f"test_flow.py:{line}: AssertionError" in out, (attempt, out)
    cached = [p.name for p in (tmp_path / "__pycache__").iterdir() if ".duroxide-" in p.name]
    assert [name.split(".")[0] for name in cached] == ["test_flow"]


def test_a_module_is_claimed_as_soon_as_an_edit_imports_duroxide_macros(tmp_path: Path) -> None:
    """Nothing is remembered about a module that is not ours: an edit that makes it ours is seen at once."""
    mod = tmp_path / "laterforms.py"
    mod.write_text('"""Mentions duroxide_macros in a docstring only."""\nVALUE = 1\n')
    runner = tmp_path / "runner.py"
    runner.write_text(dedent_src('''
        import duroxide_macros.install
        import laterforms
        print("USES", type(laterforms.__spec__.loader).__name__)
    '''))
    first = run_cmd([sys.executable, "runner.py"], tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["USES", "SourceFileLoader"]
    assert sorted(p.name for p in (tmp_path / "__pycache__").iterdir()) == [
        f"laterforms.{TAG}.pyc", f"runner.{TAG}.duroxide-{EXPANDER_VERSION}.pyc"]
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
    assert second.stdout.split() == ["USES", "DurableLoader"]


# --------------------------------------------------------------------------------------
# Import machinery: multiprocessing children, moved projects, resources, editable installs
# --------------------------------------------------------------------------------------

MP_SCRIPT = dedent_src('''
    import duroxide_macros.install
    import asyncio, multiprocessing as mp, os, sys
    from duroxide_macros.prelude import *

    @activity(typed=True)
    async def mp_double(x: int) -> int:
        return 2 * x

    @orchestration
    async def mp_flow(ctx: OrchestrationContext, n: int) -> int:
        return await durable(mp_double(n)) + 1

    async def run_flow(n: int) -> int:
        store = InMemoryProvider()
        rt = await Runtime.builder().store(store).discover_activities().discover_orchestrations().start()
        try:
            return await mp_flow.run(Client(store), f"i{n}", n, timeout=30)
        finally:
            await rt.shutdown()

    def child(n, queue):
        queue.put((__name__, asyncio.run(run_flow(n))))

    if __name__ == "__main__":
        os.chdir("/")  # the children must not depend on the directory the script was started from
        for method in sys.argv[1:]:
            ctx = mp.get_context(method)
            queue = ctx.Queue()
            proc = ctx.Process(target=child, args=(20, queue))
            proc.start()
            name, result = queue.get(timeout=60)
            proc.join(60)
            print(method, name, result, proc.exitcode)
''')


def test_spawn_and_forkserver_children_run_the_rewritten_main_script(tmp_path: Path) -> None:
    """multiprocessing's children re-run the main script as __mp_main__: rewritten, so durable() works there."""
    (tmp_path / "mp_app.py").write_text(MP_SCRIPT)
    proc = run_cmd([sys.executable, "mp_app.py", "spawn", "forkserver"], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["spawn __mp_main__ 41 0", "forkserver __mp_main__ 41 0"], proc.stderr
    # python -m pkg.app: the children keep the package, so relative imports work there too
    (tmp_path / "mp_pkg").mkdir()
    (tmp_path / "mp_pkg" / "__init__.py").write_text("")
    (tmp_path / "mp_pkg" / "consts.py").write_text("ADD = 2\n")
    (tmp_path / "mp_pkg" / "app.py").write_text(
        MP_SCRIPT.replace("import asyncio,", "from .consts import ADD\nimport asyncio,").replace(") + 1", ") + ADD"))
    proc = run_cmd([sys.executable, "-m", "mp_pkg.app", "spawn"], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["spawn __mp_main__ 42 0"], proc.stderr


def test_moved_project_keeps_its_cache_and_reports_its_new_paths(tmp_path: Path) -> None:
    """A project moved (or copied with its __pycache__) loads from the cache, with its new file names."""
    src = tmp_path / "before"
    src.mkdir()
    (src / "moved_flows.py").write_text(dedent_src('''
        from duroxide_macros.prelude import *

        def boom():
            raise LookupError("moved boom")  # MARK:moved_raise

        @orchestration
        async def moved_flow(ctx, s: str) -> str:
            return await durable(moved_flow(s))
    '''))
    (src / "runner.py").write_text(dedent_src('''
        import duroxide_macros.install
        import sys, traceback
        import moved_flows
        print("LIBCST", "libcst" in sys.modules)
        print("FILES", moved_flows.moved_flow.__wrapped__.__code__.co_filename == moved_flows.__file__,
              moved_flows.boom.__code__.co_filename == moved_flows.__file__)
        moved_flows.boom()
    '''))
    first = run_cmd([sys.executable, "runner.py"], src)
    assert "LIBCST True" in first.stdout, first.stderr
    dst = tmp_path / "after"
    shutil.copytree(src, dst)  # copy2: the sources keep their mtimes, the caches come along
    shutil.rmtree(src)
    second = run_cmd([sys.executable, "runner.py"], dst)
    assert second.stdout.splitlines() == ["LIBCST False", "FILES True True"], second.stderr
    line = _mark((dst / "moved_flows.py").read_text(), "moved_raise")
    assert f'File "{dst / "moved_flows.py"}", line {line}, in boom' in second.stderr
    assert "before" not in second.stderr


def test_resources_and_get_data_work_for_rewritten_packages(tmp_path: Path) -> None:
    pkg = tmp_path / "respkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(FLOW_PKG_INIT)
    (pkg / "data.txt").write_text("hello resources\n")
    (tmp_path / "runner.py").write_text(dedent_src('''
        import duroxide_macros.install
        import importlib.resources, pkgutil
        import respkg
        print(type(respkg.__spec__.loader).__name__)
        print(importlib.resources.files("respkg").joinpath("data.txt").read_text().strip())
        print(pkgutil.get_data("respkg", "data.txt").decode().strip())
        print(sorted(p.name for p in importlib.resources.files("respkg").iterdir() if p.name != "__pycache__"))
    '''))
    proc = run_cmd([sys.executable, "runner.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["DurableLoader", "hello resources", "hello resources",
                                        "['__init__.py', 'data.txt']"]


FLOW_PKG_INIT = dedent_src('''
    from duroxide_macros.prelude import *

    @activity
    async def res_act(s: str) -> str:
        return s

    @orchestration
    async def res_flow(ctx, s: str) -> str:
        return await durable(res_act(s))
''')


def test_editable_install_top_level_module_is_rewritten_and_expandable(tmp_path: Path) -> None:
    """setuptools' editable finder (a meta-path finder after ours) serves the module; we still rewrite it."""
    proj = tmp_path / "edproj"
    proj.mkdir()
    (proj / "pyproject.toml").write_text(dedent_src('''
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "edproj-duroxide-test"
        version = "0.1"

        [tool.setuptools]
        py-modules = ["edflows"]
    '''))
    (proj / "edflows.py").write_text(dedent_src('''
        from duroxide_macros.prelude import *

        @activity(typed=True)
        async def ed_act(x: int) -> int:
            return x + 1

        @orchestration
        async def ed_flow(ctx, x: int) -> int:
            return await durable(ed_act(x))
    '''))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the tmp venv sees this one's packages (duroxide, libcst...) through a .pth that adds its site dir
    ours = sysconfig_purelib()
    Path(site, "with_duroxide.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    install = run_cmd([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                       "-e", str(proj)], tmp_path, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    assert any(p.name.startswith("__editable___edproj") for p in Path(site).iterdir())
    work = tmp_path / "elsewhere"  # not the project directory: only the editable finder knows edflows
    work.mkdir()
    (work / "runner.py").write_text(dedent_src('''
        import duroxide_macros.install
        import asyncio, sys, edflows
        from duroxide_macros.prelude import *

        async def main():
            store = InMemoryProvider()
            rt = await Runtime.builder().store(store).discover_activities().discover_orchestrations().start()
            print("RESULT", await edflows.ed_flow.run(Client(store), "e1", 41, timeout=30))
            await rt.shutdown()

        print(type(edflows.__spec__.loader).__name__, edflows.__file__)
        asyncio.run(main())
    '''))
    proc = run_cmd([str(python), "runner.py"], work, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"DurableLoader {proj / 'edflows.py'}", "RESULT 42"]
    expanded = run_cmd([str(python), "-m", "duroxide_macros.cli", "edflows"], work)
    assert expanded.returncode == 0, expanded.stderr
    assert "await (ed_act.call(ctx, x))" in expanded.stdout


def sysconfig_purelib() -> str:
    import sysconfig

    return sysconfig.get_paths()["purelib"]


def test_durable_followed_by_a_line_continuation_keeps_every_line(tmp_path: Path) -> None:
    src = dedent_src('''
        from duroxide_macros.prelude import *

        def check(n):
            if n == 0:
                raise ZeroDivisionError("zero")  # MARK:lc_check
            return n

        @activity(typed=True)
        async def lc_step(n: int) -> int:
            return n

        @orchestration
        async def lc_flow(ctx, n: int) -> int:
            a = await durable \\
                (lc_step(check(n)))  # MARK:lc_arg
            b = await durable \\
                (
                    lc_step(a)
                )
            if b == 7:
                raise LookupError("seven")  # MARK:lc_raise
            return b
    ''')
    (tmp_path / "lc_mod.py").write_text(src)
    (tmp_path / "runner.py").write_text(dedent_src('''
        import duroxide_macros.install
        import asyncio, json, lc_mod
        from duroxide_macros.prelude import *

        async def main():
            store = InMemoryProvider()
            rt = await Runtime.builder().store(store).discover_activities().discover_orchestrations().start()
            client, out = Client(store), {}
            for n in (5, 0, 7):
                await lc_mod.lc_flow.start(client, f"n{n}", n)
                status = await lc_mod.lc_flow.wait(client, f"n{n}", 30)
                out[n] = [type(status).__name__, getattr(status, "output", None),
                          status.details.traceback if getattr(status, "details", None) else None]
            await rt.shutdown()
            print(json.dumps(out))

        asyncio.run(main())
    '''))
    proc = run_cmd([sys.executable, "runner.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    mod = tmp_path / "lc_mod.py"
    assert out["5"][:2] == ["Completed", 5]
    assert out["0"][0] == "Failed"
    assert _tb_lines(out["0"][2], mod, "lc_flow") == [_mark(src, "lc_arg")]
    assert _tb_lines(out["0"][2], mod, "check") == [_mark(src, "lc_check")]
    assert out["7"][0] == "Failed"
    assert _tb_lines(out["7"][2], mod, "lc_flow") == [_mark(src, "lc_raise")]


# --------------------------------------------------------------------------------------
# The main script: code above the install line
# --------------------------------------------------------------------------------------

def test_code_above_the_install_line_is_reported_before_the_body_runs(tmp_path: Path) -> None:
    src = dedent_src('''
        #!/usr/bin/env python
        """An app."""
        from __future__ import annotations
        import os
        print("TOP RAN")  # MARK:top_print
        LIMIT = 3  # MARK:top_assign
        import duroxide_macros.install
        from duroxide_macros.prelude import *
        print("BODY RAN")
    ''')
    app = tmp_path / "above.py"
    app.write_text(src)
    proc = run_cmd([sys.executable, "above.py"], tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == "TOP RAN\n"  # once, as Python ran it before the hook could; the body never ran
    assert "DurableExpansionError: duroxide: 2 problem(s)" in proc.stderr
    assert (f"{app}:{_mark(src, 'top_print')}:1: `print(\"TOP RAN\")  # MARK:top_print` runs before "
            "`import duroxide_macros.install`, so it would run twice") in proc.stderr, proc.stderr
    assert f"{app}:{_mark(src, 'top_assign')}:1: `LIMIT = 3" in proc.stderr
    assert "(fix: make `import duroxide_macros.install` the first statement of the script" in proc.stderr
    # docstring, comments, __future__ and other imports above it are fine
    app.write_text(src.replace('print("TOP RAN")  # MARK:top_print\n', "").replace("LIMIT = 3  # MARK:top_assign\n", ""))
    proc = run_cmd([sys.executable, "above.py"], tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "BODY RAN\n"), proc.stderr


# --------------------------------------------------------------------------------------
# A durable() that reaches run time unexpanded says why
# --------------------------------------------------------------------------------------

def _flow_module(name: str, header: str, call: str = "durable") -> str:
    return header + dedent_src(f'''

        @activity
        async def {name}_act(s: str) -> str:
            return s

        @orchestration
        async def {name}_flow(ctx, s: str) -> str:
            return await {call}({name}_act(s))
    ''')


CALL_FLOWS = dedent_src('''
    import asyncio, importlib, sys
    from duroxide_macros import DurableNotExpandedError
    for name in sys.argv[1:]:
        mod = importlib.import_module(name + "_flows")
        try:
            asyncio.run(getattr(mod, name + "_flow").__wrapped__(None, "s"))
        except DurableNotExpandedError as exc:
            print(name, "|", exc)
''')


def test_unexpanded_durable_names_the_real_cause(tmp_path: Path) -> None:
    prelude = "from duroxide_macros.prelude import *\n"
    (tmp_path / "nohook_flows.py").write_text(_flow_module("nohook", prelude))
    (tmp_path / "early_flows.py").write_text(_flow_module("early", prelude))
    (tmp_path / "my_forms.py").write_text("from duroxide_macros import durable, activity, orchestration\n")
    (tmp_path / "indirect_flows.py").write_text(_flow_module("indirect", "from my_forms import *\n"))
    (tmp_path / "renamed_flows.py").write_text(
        _flow_module("renamed", prelude + "FORMS = {'d': durable}\n", call="FORMS['d']"))
    (tmp_path / "call_flows.py").write_text(CALL_FLOWS)
    (tmp_path / "no_hook.py").write_text("import call_flows\n")
    (tmp_path / "with_hook.py").write_text("import early_flows\nimport duroxide_macros.install\nimport call_flows\n")

    plain = run_cmd([sys.executable, "no_hook.py", "nohook"], tmp_path)
    hooked = run_cmd([sys.executable, "with_hook.py", "early", "indirect", "renamed"], tmp_path)
    lines = dict(line.split(" | ", 1) for line in (plain.stdout + hooked.stdout).splitlines())
    assert set(lines) == {"nohook", "early", "indirect", "renamed"}, plain.stderr + hooked.stderr
    assert "the duroxide import hook is not installed. Fix: make `import duroxide_macros.install` the first " \
           "line of your program's main script" in lines["nohook"]
    assert "module 'early_flows' was imported before the import hook was installed. Fix: move " \
           "`import duroxide_macros.install` above the import of 'early_flows'" in lines["early"]
    assert "module 'indirect_flows' is not rewritten because it does not import from duroxide_macros" \
           in lines["indirect"]
    assert "`from duroxide_macros.prelude import *`" in lines["indirect"]
    assert "module 'renamed_flows' was rewritten, but this call was not written `durable(...)`" in lines["renamed"]


# --------------------------------------------------------------------------------------
# Cost: libcst only when something must be rewritten; pre-built caches
# --------------------------------------------------------------------------------------

WARM_APP = dedent_src('''
    import duroxide_macros.install
    import sys
    import warm_flows, warm_plain
    from duroxide_macros.prelude import *

    @orchestration
    async def warm_main_flow(ctx, s: str) -> str:
        return await durable(warm_flows.warm_act(s))

    print("LIBCST", "libcst" in sys.modules)
    print("REWRITTEN", "durable" not in warm_main_flow.__wrapped__.__code__.co_names,
          type(warm_flows.__spec__.loader).__name__, type(warm_plain.__spec__.loader).__name__)
''')


def _warm_project(tmp_path: Path) -> Path:
    proj = tmp_path / "warm"
    proj.mkdir()
    (proj / "warm_app.py").write_text(WARM_APP)
    (proj / "warm_flows.py").write_text(dedent_src('''
        from duroxide_macros.prelude import *

        @activity
        async def warm_act(s: str) -> str:
            return s

        @orchestration
        async def warm_flow(ctx, s: str) -> str:
            return await durable(warm_act(s))
    '''))
    (proj / "warm_plain.py").write_text("VALUE = 1\n")
    return proj


def _pycache(proj: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (proj / "__pycache__").iterdir()} \
        if (proj / "__pycache__").exists() else {}


def test_a_warm_start_never_imports_libcst(tmp_path: Path) -> None:
    proj = _warm_project(tmp_path)
    cold = run_cmd([sys.executable, "warm_app.py"], proj)
    assert cold.stdout.splitlines() == ["LIBCST True", "REWRITTEN True DurableLoader SourceFileLoader"], cold.stderr
    warm = run_cmd([sys.executable, "warm_app.py"], proj)
    assert warm.stdout.splitlines() == ["LIBCST False", "REWRITTEN True DurableLoader SourceFileLoader"], warm.stderr


def test_compile_prebuilds_caches_that_are_read_under_dont_write_bytecode(tmp_path: Path) -> None:
    proj = _warm_project(tmp_path)
    (proj / "sub").mkdir()
    (proj / "sub" / "deep_flows.py").write_text(_flow_module("deep", "from duroxide_macros.prelude import *\n"))
    (proj / "sub" / "notes.py").write_text("# duroxide_macros is mentioned here only\n")
    compiled = run_cmd([sys.executable, "-m", "duroxide_macros.cli", "--compile", "."], proj,
                       PYTHONDONTWRITEBYTECODE="1")  # --compile writes all the same: that is its job
    assert compiled.returncode == 0, compiled.stderr
    assert "3 module(s) cached, 2 left alone" in compiled.stdout, compiled.stdout
    tag = f"{TAG}.duroxide-{EXPANDER_VERSION}.pyc"
    assert sorted(_pycache(proj)) == [f"warm_app.{tag}", f"warm_flows.{tag}"]
    assert sorted(p.name for p in (proj / "sub" / "__pycache__").iterdir()) == [f"deep_flows.{tag}"]
    before = _pycache(proj)
    run = run_cmd([sys.executable, "warm_app.py"], proj, PYTHONDONTWRITEBYTECODE="1")
    assert run.stdout.splitlines() == ["LIBCST False", "REWRITTEN True DurableLoader SourceFileLoader"], run.stderr
    assert _pycache(proj) == before  # read, and nothing written


def test_compile_reports_problems_and_code_above_the_install_line(tmp_path: Path) -> None:
    (tmp_path / "bad_main.py").write_text("X = 1\nimport duroxide_macros.install\n")
    (tmp_path / "bad_flow.py").write_text(dedent_src('''
        from duroxide_macros.prelude import *

        async def nowhere(s):
            return await durable(nowhere(s))
    '''))
    proc = run_cmd([sys.executable, "-m", "duroxide_macros.cli", "--compile", "bad_main.py", "bad_flow.py"],
                   tmp_path)
    assert proc.returncode == 1
    assert f"{tmp_path / 'bad_main.py'}:1:1: `X = 1` runs before `import duroxide_macros.install`" in proc.stderr
    assert f"{tmp_path / 'bad_flow.py'}:4:" in proc.stderr
    assert "0 module(s) cached, 0 left alone (no duroxide_macros import), 2 with problems" in proc.stdout
    assert not (tmp_path / "__pycache__").exists()


def test_cache_is_stale_when_a_dependency_changes_or_vanishes(tmp_path: Path) -> None:
    """Expansion.dependencies (files the lint read) are stamped in the cache; any change invalidates it."""
    from duroxide_macros.cache import cache_key, read_cache, write_cache

    mod, dep = tmp_path / "m.py", tmp_path / "helpers.py"
    mod.write_text("X = 1\n")
    dep.write_text("def h(): pass\n")
    code = compile("X = 1\n", str(mod), "exec")
    where, key = str(tmp_path / "m.cache"), cache_key(b"X = 1\n")
    assert write_cache(where, key, str(mod), code, [str(dep)])
    assert read_cache(where, key, str(mod)) is not None
    assert read_cache(where, cache_key(b"X = 2\n"), str(mod)) is None  # other source
    dep.write_text("def h(): return 1\n")  # changed
    assert read_cache(where, key, str(mod)) is None
    assert write_cache(where, key, str(mod), code, [str(dep)])
    assert read_cache(where, key, str(mod)) is not None
    dep.unlink()  # vanished
    assert read_cache(where, key, str(mod)) is None
