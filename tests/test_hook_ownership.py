"""Which modules the import hook claims, reads and writes for - and that it changes nothing for the others.

Every check runs the hook in a fresh subprocess on real files; an audit hook
(``sys.addaudithook``) records each file the hook's own code opens or writes, so
"never read" and "writes nothing" are observed, not inferred.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from duroxide_macros.cache import cache_path
from duroxide_macros.ownership import imports_duroxide_macros, skipped_by_name

from .support import dedent_src, run_cmd

# audit.py: records every file opened, created or renamed by code of duroxide_macros (the hook,
# the cache) as (event, path, writing), in HOOK_FILES. Imported first by the runner scripts.
AUDIT = dedent_src('''
    import os, sys
    HOOK_FILES = []
    def _audit(event, args):
        if event not in ("open", "os.rename", "os.mkdir"):  # os.replace raises "os.rename"
            return
        path = str(args[1] if event == "os.rename" else args[0])  # a rename: where it lands
        if any(part in path for part in ("/duroxide_macros/", "/duroxide_runtime/", ".dist-info", ".egg-info")):
            return  # our own modules being imported; distributions' metadata (how ownership is decided)
        # the nearest caller that is not the standard library (os.makedirs, tempfile...) or the import system
        f = sys._getframe(1)
        while f is not None and (f.f_code.co_filename.startswith((STDLIB, "<frozen"))):
            f = f.f_back
        name = f.f_code.co_filename if f is not None else ""
        if "duroxide_macros" in name and not name.endswith("diagnose.py"):  # diagnose: on an error only
            writing = event != "open" or (isinstance(args[1], str) and any(c in args[1] for c in "wax+")) \\
                or (isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            HOOK_FILES.append((event, path, bool(writing)))
    STDLIB = os.path.dirname(os.__file__) + os.sep
    sys.addaudithook(_audit)
''')

FLOW = dedent_src('''
    from duroxide_macros.prelude import *

    @activity
    async def {name}_act(s: str) -> str:
        return s

    @orchestration
    async def {name}_flow(ctx, s: str) -> str:
        return await durable({name}_act(s))
''')


def _dist_info(site: Path, project: str, version: str = "1.0", requires: str = "", entry_points: str = "") -> None:
    info = site / f"{project}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n{requires}")
    (info / "top_level.txt").write_text(f"{project}\n")
    (info / "RECORD").write_text(f"{project}/__init__.py,,\n")
    if entry_points:
        (info / "entry_points.txt").write_text(entry_points)


def test_skip_list_matches_whole_names_and_packages() -> None:
    assert skipped_by_name("pydantic") and skipped_by_name("pydantic.fields")
    assert not skipped_by_name("pydantic_orders") and not skipped_by_name("pydanticx.y")
    assert skipped_by_name("duroxide_macros.prelude") and skipped_by_name("duroxide_runtime")
    assert skipped_by_name("json") and skipped_by_name("email.mime.text") and skipped_by_name("__main__")
    assert not skipped_by_name("jsonschema_orders") and not skipped_by_name("orders.json")


def test_only_real_import_statements_make_a_module_ours() -> None:
    assert imports_duroxide_macros(b"from duroxide_macros.prelude import *\n")
    assert imports_duroxide_macros("import duroxide_macros as dx\n")
    assert imports_duroxide_macros(b"def f():\n    if x:\n        try:\n            import duroxide_macros.forms\n"
                                   b"        except ImportError:\n            pass\n")
    assert not imports_duroxide_macros(b'"""Uses duroxide_macros, see docs."""\n# import duroxide_macros\n'
                                       b'x = "from duroxide_macros import durable"\n')
    assert not imports_duroxide_macros(b"from duroxide_macros_extra import y\nimport duroxide_macrosx\n")
    assert not imports_duroxide_macros(b"from .duroxide_macros import durable\n")  # a local package of that name
    assert not imports_duroxide_macros(b"import duroxide_macros\ndef broken(:\n")  # Python reports it, not us


def test_project_and_site_packages_modules_are_claimed_by_the_rules(tmp_path: Path) -> None:
    """Project modules by their imports; installed ones only if their distribution is declared duroxide's."""
    proj = tmp_path / "proj"
    site = tmp_path / "lib" / "site-packages"
    proj.mkdir()
    site.mkdir(parents=True)
    (proj / "pydantic_orders.py").write_text(FLOW.format(name="po"))   # "pydantic" is skipped, not this
    (proj / "mentions.py").write_text('"""See duroxide_macros."""\nX = 1\n')
    for pkg, meta in {
        "awarepkg": dict(entry_points="[duroxide]\nawarepkg = awarepkg\n"),
        "reqpkg": dict(requires="Requires-Dist: duroxide>=0.1\n"),
        "strangerpkg": dict(requires="Requires-Dist: duroxide-tools>=1\n"),  # not duroxide itself
    }.items():
        (site / pkg).mkdir()
        (site / pkg / "__init__.py").write_text(FLOW.format(name=pkg))
        _dist_info(site, pkg, **meta)
    (proj / "audit.py").write_text(AUDIT)
    (proj / "runner.py").write_text(dedent_src('''
        from audit import HOOK_FILES
        import duroxide_macros.install
        import asyncio, importlib, json
        from duroxide_macros import DurableNotExpandedError
        out = {}
        for name in ("pydantic_orders", "mentions", "awarepkg", "reqpkg", "strangerpkg", "colorsys", "json"):
            mod = importlib.import_module(name)
            out[name] = type(mod.__spec__.loader).__name__
        try:
            asyncio.run(importlib.import_module("strangerpkg").strangerpkg_flow.__wrapped__(None, "s"))
        except DurableNotExpandedError as exc:
            out["error"] = str(exc)
        out["read"] = sorted({p for e, p, w in HOOK_FILES if e == "open" and p.endswith(".py")})
        out["written"] = sorted({p for e, p, w in HOOK_FILES if w})
        print(json.dumps(out))
    '''))
    proc = run_cmd([sys.executable, "runner.py"], proj, PYTHONPATH=str(site))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert {k: out[k] for k in ("pydantic_orders", "mentions", "awarepkg", "reqpkg", "strangerpkg")} == {
        "pydantic_orders": "DurableLoader", "mentions": "SourceFileLoader", "awarepkg": "DurableLoader",
        "reqpkg": "DurableLoader", "strangerpkg": "SourceFileLoader"}
    assert out["colorsys"] == out["json"] == "SourceFileLoader"
    # the hook read the project's files and the declared distributions' - never the stranger's or the stdlib's
    assert out["read"] == sorted([str(proj / "mentions.py"), str(proj / "pydantic_orders.py"),
                                  str(proj / "runner.py"), str(site / "awarepkg" / "__init__.py"),
                                  str(site / "reqpkg" / "__init__.py")])
    # it wrote rewritten code for the claimed modules only (and the main script)
    written = {p for p in out["written"] if p.endswith(".pyc")}
    assert written == {cache_path(str(p)) for p in (proj / "pydantic_orders.py", proj / "runner.py",
                                                    site / "awarepkg" / "__init__.py", site / "reqpkg" / "__init__.py")}
    assert "belongs to an installed distribution that neither declares a `duroxide` entry point" in out["error"]


# Imports every given module in order; prints, per module, its sorted dir() or the exception's type.
IMPORT_ALL = dedent_src('''
    from audit import HOOK_FILES
    import importlib, io, json, sys, warnings, contextlib
    names = json.loads(sys.argv[2])
    from duroxide_macros.hook import DurableLoader, install  # in both runs, so duroxide_macros looks the same
    if sys.argv[1] == "hook":
        install()
    warnings.simplefilter("ignore")
    result = {}
    for name in names:
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                mod = importlib.import_module(name)
            result[name] = sorted(dir(mod))
        except BaseException as exc:  # SystemExit and KeyboardInterrupt included: compared, not hidden
            result[name] = "raised " + type(exc).__name__
    claimed = sorted(n for n, m in list(sys.modules.items())
                     if isinstance(getattr(getattr(m, "__spec__", None), "loader", None), DurableLoader))
    print(json.dumps({"modules": result, "claimed": claimed,
                      "hook_files": HOOK_FILES}))
''')

# Importing these has effects beyond the import (a browser, a GUI, printing to the terminal).
SIDE_EFFECTS = {"antigravity", "this", "idlelib", "turtledemo", "__phello__", "_pydev_bundle"}


def test_modules_that_are_not_ours_import_exactly_as_without_the_hook(tmp_path: Path) -> None:
    """Every stdlib module and every installed distribution's top-level modules, with and without the hook:

    the same attributes, the same failures, no file of theirs read by the hook, nothing written.
    """
    lister = run_cmd([sys.executable, "-c", dedent_src('''
        import importlib.metadata, json, sys
        tops = set(importlib.metadata.packages_distributions())
        print(json.dumps(sorted(set(sys.stdlib_module_names) | tops)))
    ''')], tmp_path)
    assert lister.returncode == 0, lister.stderr
    names = [n for n in json.loads(lister.stdout) if n not in SIDE_EFFECTS and not n.startswith("__editable__")
             and n.isidentifier()]
    assert len(names) > 250
    (tmp_path / "audit.py").write_text(AUDIT)
    (tmp_path / "import_all.py").write_text(IMPORT_ALL)
    runs = {}
    for mode in ("plain", "hook"):
        proc = run_cmd([sys.executable, "import_all.py", mode, json.dumps(names)], tmp_path, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[mode] = json.loads(proc.stdout.splitlines()[-1])
    plain, hooked = runs["plain"]["modules"], runs["hook"]["modules"]
    differ = {n: (plain[n], hooked[n]) for n in names if plain[n] != hooked[n]}
    assert not differ, {n: (p if isinstance(p, str) else sorted(set(p) ^ set(h))) for n, (p, h) in differ.items()}
    assert sum(isinstance(v, list) for v in hooked.values()) > 250  # most of them really imported
    assert runs["hook"]["claimed"] == []
    # not one of their sources read, nothing written (other files opened under the hook's frames are
    # the import system's: the .pyc of modules the hook imports, path entries' zip checks)
    touched = [(e, p) for e, p, writing in runs["hook"]["hook_files"] if writing or p.endswith(".py")]
    assert touched == [], touched[:20]
