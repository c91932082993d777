"""The documentation cannot drift: every code block in README.md and docs/*.md is checked.

Every ``python`` block runs exactly as a reader would paste it: written alone to a
file, with only the imports it shows, and (unless it says otherwise) no event loop
but the one it starts itself. A fenced ``python`` block must be preceded (on the
nearest non-blank line) by a marker:

* ``<!-- doctest: run -->`` - a complete program: written to a file in the page's
  working directory (a temp dir shared by the page's blocks, in page order) and run
  with this interpreter; it must exit 0 (or N with ``exit=N``). ``file=NAME`` names
  the file.
* ``<!-- doctest: run await -->`` - an excerpt of async code with top-level ``await``.
  Its first line must be :data:`AWAIT_COMMENT`, which tells the reader to run it
  inside an ``async def`` or ``python -m asyncio``; it is run that way (compiled with
  top-level await allowed, in a fresh namespace: no names are injected).
* ``<!-- doctest: pytest file=NAME -->`` - a test module: written to ``NAME`` and run
  with ``python -m pytest NAME``; at least one test must pass, none fail or skip.
* ``<!-- doctest: file=NAME -->`` - a module written to ``NAME`` for a later block of
  the page to use (any language: a ``toml`` block may be a ``pyproject.toml``);
  ``file=NAME nocheck (reason)`` is not type-checked (a module wrong on purpose).
* ``<!-- doctest: skip (reason) -->`` - not checked; the reason is required.

``postgres`` in a marker sets ``DATABASE_URL`` (for that page) to a PostgreSQL
database of the test's own; the page says that the reader sets it. Python blocks
other than ``run await`` must compile as modules (no top-level ``await``).

Every python block but ``skip`` and ``nocheck`` is type-checked with pyright as the
module it is (``run await`` excerpts as the body of an ``async def``), one pyright
run for all, each page's files in a directory of their own so that they import
each other by name. A ``text`` block marked ``<!-- doctest: output -->`` lists lines
the previous run or pytest block must print, in order (stdout for python; stdout
and stderr for sh and pytest). ``sh`` blocks are always checked statically (the
programs, scripts, modules, console scripts and paths they name exist);
``<!-- doctest: run -->`` before one also runs it with bash in the page's working
directory with the venv's ``bin`` first on ``PATH``; it must exit 0, or N with
``run exit=N``. ``toml`` blocks must parse.

Links: README.md is also the package index page, where relative links do not
resolve, so it links the repository's files by absolute URL
(:data:`REPO_BLOB`); those URLs, and the docs' relative links, must name files
(and headings) that exist in this checkout.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import duroxide_macros
import duroxide_macros.prelude
import duroxide_runtime
import duroxide_runtime.errors
import duroxide_runtime.history
import duroxide_runtime.replayer
from duroxide_macros import decorators as macro_decorators
from duroxide_macros import expand as macro_expand
from duroxide_macros import lint as macro_lint
from duroxide_macros.main import duroxide_main
from duroxide_macros.nondeterminism import RULES
from duroxide_macros import hook as macro_hook

from .redis_session import REDIS
from .support import clean_env, own_pg_database

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
VENV_BIN = Path(sys.executable).parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: Where the repository's files are on GitHub; README.md links them by these absolute URLs.
REPO = "https://github.com/duroxide/duroxide-python"
REPO_BLOB = f"{REPO}/blob/main/"
REPO_TREE = f"{REPO}/tree/main/"
#: The first line of a ``run await`` block: what the reader needs to know to run it.
AWAIT_COMMENT = "# top-level await: run this inside an async def, or paste it into `python -m asyncio`"

_FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
_MARKER = re.compile(r"^<!--\s*doctest:\s*(?P<body>.*?)\s*-->$")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None  # the marker's body, e.g. "run file=app.py"

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        if self.marker is None:
            return ""
        head = self.marker.split()[0] if self.marker.split() else ""
        return "file" if head.startswith("file=") else head

    @property
    def words(self) -> list[str]:
        """The marker's options outside a parenthesised reason."""
        return re.sub(r"\(.*\)", "", self.marker or "").split()

    @property
    def awaits(self) -> bool:
        return self.kind == "run" and "await" in self.words

    @property
    def file_name(self) -> str | None:
        m = re.search(r"\bfile=(\S+)", self.marker or "")
        return m.group(1) if m else None

    @property
    def checked(self) -> bool:
        """Type-checked: python that runs, is run by pytest, or is a module (unless ``nocheck``)."""
        return self.lang == "python" and self.kind in ("run", "file", "pytest") and "nocheck" not in self.words


def parse(page: Path) -> list[Block]:
    """The fenced blocks of a page, each with the marker on the nearest non-blank line before it."""
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        assert j < len(lines), f"{page.name}:{start + 1}: unclosed code block"
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = _MARKER.match(lines[k].strip()) if k >= 0 else None
        blocks.append(Block(page, start + 1, m.group("lang"), "\n".join(lines[start + 1:j]) + "\n",
                            marker.group("body") if marker else None))
        i = j + 1
    return blocks


ALL_BLOCKS = [b for page in PAGES for b in parse(page)]
PY_BLOCKS = [b for b in ALL_BLOCKS if b.lang == "python"]


def test_pages_exist() -> None:
    names = {p.name for p in PAGES}
    for page in ("getting-started.md", "concepts.md", "api.md", "migration.md", "versioning.md",
                 "troubleshooting.md", "performance.md", "runtime.md", "postgres.md"):
        assert page in names, f"docs/{page} is missing"


def test_every_python_block_is_marked() -> None:
    problems = []
    for b in PY_BLOCKS:
        if b.marker is None:
            problems.append(f"{b.where}: python block without a <!-- doctest: ... --> marker")
        elif b.kind == "skip":
            if not re.fullmatch(r"skip\s*\(\s*\S.*\)", b.marker):
                problems.append(f"{b.where}: `doctest: skip` needs a reason: <!-- doctest: skip (why) -->")
        elif b.kind not in ("run", "file", "pytest"):
            problems.append(f"{b.where}: unknown marker {b.marker!r} (run, run await, pytest, file=, skip)")
        elif b.kind == "pytest" and not b.file_name:
            problems.append(f"{b.where}: a pytest block names its module: <!-- doctest: pytest file=test_x.py -->")
        elif "nocheck" in b.words and not re.search(r"\(\s*\S.*\)", b.marker):
            problems.append(f"{b.where}: `nocheck` needs a reason: <!-- doctest: file=x.py nocheck (why) -->")
    for b in ALL_BLOCKS:
        if b.kind == "output" and b.lang == "python":
            problems.append(f"{b.where}: an output block must not be python")
    assert not problems, "\n".join(problems)


def test_top_level_await_only_where_the_block_says_so() -> None:
    """A pasted block with a stray top-level ``await`` is a SyntaxError; one that needs a loop says so."""
    problems = []
    for b in PY_BLOCKS:
        if b.kind == "skip":
            continue
        error = ""
        try:
            compile(b.code, b.where, "exec")
        except SyntaxError as exc:
            error = f"{exc.msg} (line {exc.lineno})"
        module_ok = not error
        if b.awaits:
            if b.code.splitlines()[0] != AWAIT_COMMENT:
                problems.append(f"{b.where}: a `run await` block starts with the line {AWAIT_COMMENT!r}")
            if module_ok:
                problems.append(f"{b.where}: marked `run await` but has no top-level await: drop `await`")
        elif not module_ok:
            problems.append(f"{b.where}: does not compile as a module: {error}; wrap top-level awaits in "
                            "`async def main()` + `asyncio.run(main())`, or mark it `run await`")
    assert not problems, "\n".join(problems)


def test_output_blocks_follow_something_that_runs() -> None:
    for page in PAGES:
        last_runnable = None
        for b in parse(page):
            if b.kind == "output":
                assert last_runnable is not None, f"{b.where}: output block with no run block before it"
            elif b.kind in ("run", "pytest"):
                last_runnable = b


# -- running ----------------------------------------------------------------------------


def _expected_lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def _assert_prints(block: Block, stdout: str, expected: Block) -> None:
    got = [line.rstrip() for line in stdout.splitlines()]
    pos = 0
    for want in _expected_lines(expected.code):
        while pos < len(got) and got[pos] != want:
            pos += 1
        assert pos < len(got), (f"{expected.where}: {block.where} did not print {want!r} (in order); "
                                f"it printed:\n{stdout}")
        pos += 1


def _env(database_url: str | None, redis_url: str | None = None) -> dict[str, str]:
    """A reader's shell: the venv (where duroxide is installed) first on PATH, nothing put on sys.path."""
    env = clean_env()
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return env


#: Runs a ``run await`` excerpt the way ``python -m asyncio`` runs what is pasted into it: top-level
#: await allowed, in a namespace that holds nothing the excerpt did not import (the REPL itself would
#: also offer ``asyncio``; an excerpt must import it).
_AWAIT_RUNNER = """\
import ast, asyncio, inspect, sys
path = sys.argv[1]
code = compile(open(path).read(), path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
namespace = {"__name__": "__main__", "__builtins__": __builtins__}
result = eval(code, namespace)
if inspect.iscoroutine(result):
    asyncio.run(result)
"""


def _command(b: Block, name: str) -> list[str] | None:
    if b.lang == "sh" and b.kind == "run":
        return ["bash", "-e", "-c", b.code]
    if b.lang != "python" or b.kind not in ("run", "pytest"):
        return None
    if b.kind == "pytest":
        return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", name]
    if b.awaits:
        return [sys.executable, "-c", _AWAIT_RUNNER, name]
    return [sys.executable, name]


def _run_page(page: Path, database_url: str | None, redis_url: str | None = None) -> None:
    blocks = parse(page)
    with tempfile.TemporaryDirectory(prefix="duroxide-doc-") as tmp:
        last: tuple[Block, str] | None = None
        for b in blocks:
            if b.kind == "output":
                assert last is not None
                _assert_prints(last[0], last[1], b)
                continue
            name = b.file_name or f"block_{b.line}.py"
            if b.file_name or (b.lang == "python" and b.kind == "run"):
                (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / name).write_text(b.code)
            cmd = _command(b, name)
            if cmd is None:
                continue
            merged = b.lang == "sh" or b.kind == "pytest"
            proc = subprocess.run(cmd, cwd=tmp, env=_env(database_url, redis_url), stdout=subprocess.PIPE, text=True,
                                  timeout=90, stderr=subprocess.STDOUT if merged else subprocess.PIPE)
            m = re.search(r"\bexit=(\d+)", b.marker or "")
            want = int(m.group(1)) if m else 0
            assert proc.returncode == want, (f"{b.where} exited {proc.returncode}, not {want}\n--- stdout\n"
                                             f"{proc.stdout[-6000:]}\n--- stderr\n{(proc.stderr or '')[-4000:]}")
            if b.kind == "pytest":
                summary = proc.stdout.strip().splitlines()[-1]
                assert re.search(r"\b\d+ passed\b", summary) and not re.search(r"skipped|failed|error|xfail",
                                                                                 summary), (
                    f"{b.where}: the tests must run and pass, not be skipped:\n{proc.stdout[-3000:]}")
            last = (b, proc.stdout)


PAGES_THAT_RUN = [p for p in PAGES if any(b.kind in ("run", "pytest") for b in parse(p))]


@pytest.mark.parametrize("page", PAGES_THAT_RUN, ids=lambda p: p.name)
async def test_run_blocks(page: Path) -> None:
    """Run, pytest and file blocks of a page, in order, in one working directory; outputs are compared."""
    # ``redis`` in a marker sets REDIS_URL to the session's own redis-server (tests/redis_session.py).
    redis_url = REDIS.url() if any("redis" in b.words for b in parse(page)) else None
    if any("postgres" in b.words for b in parse(page)):
        async with own_pg_database("doc") as url:  # PostgreSQL unreachable: fails here, never skips
            _run_page(page, url, redis_url)
    else:
        _run_page(page, None, redis_url)


# -- type checking ----------------------------------------------------------------------


def _as_module(b: Block) -> tuple[str, int]:
    """The source pyright checks for a block, and how many lines precede the block's first line."""
    if not b.awaits:
        return b.code, 0
    # An excerpt of async code: checked as the body of the coroutine a reader pastes it into.
    body = "".join(f"    {line}" if line.strip() else line for line in b.code.splitlines(keepends=True))
    return "async def _excerpt() -> None:\n" + body, 1


def _pyright() -> str:
    exe = VENV_BIN / "pyright"
    found = str(exe) if exe.exists() else shutil.which("pyright")
    assert found, "pyright is needed to check the docs (pip install -e '.[test]')"
    return found


def test_python_blocks_typecheck() -> None:
    """One pyright run over every checked block; each page's files import each other by name."""
    with tempfile.TemporaryDirectory(prefix="duroxide-doc-types-") as tmp:
        files: dict[str, tuple[Block, int]] = {}
        roots = []
        for page in PAGES:
            checked = [b for b in parse(page) if b.checked]
            if not checked:
                continue
            folder = Path(tmp) / page.stem.replace("-", "_").lower()
            roots.append({"root": str(folder)})
            for b in checked:
                src, offset = _as_module(b)
                path = folder / (b.file_name or f"block_{b.line}.py")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(src)
                files[str(path)] = (b, offset)
        # Each page's folder is an execution root, so `from check_deploy import checkout` resolves
        # as it does for the reader who saved check_deploy.py next to the test.
        (Path(tmp) / "pyrightconfig.json").write_text(json.dumps({"executionEnvironments": roots}))
        proc = subprocess.run([_pyright(), "--pythonpath", sys.executable, "--outputjson", *files],
                              cwd=tmp, capture_output=True, text=True, timeout=150)
        try:
            report = json.loads(proc.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"pyright did not report JSON:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        errors = []
        for d in report["generalDiagnostics"]:
            if d["severity"] != "error":
                continue
            line = d["range"]["start"]["line"] + 1
            if d["file"] in files:
                b, offset = files[d["file"]]
                where = f"{b.page.relative_to(ROOT)}:{b.line + line - offset}"
            else:
                where = f"{d['file']}:{line}"
            errors.append(f"{where}: {d['message']}")
        assert not errors, "\n".join(errors)
        assert report["summary"]["filesAnalyzed"] >= len(files)


# -- shell blocks -----------------------------------------------------------------------


def _commands(code: str) -> Iterator[list[str]]:
    for raw in code.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        for part in re.split(r"&&|\|\||;|\|", line):
            words = shlex.split(part)
            while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value prefix
                words = words[1:]
            if words:
                yield words


def _declared_files(page: Path) -> set[str]:
    return {b.file_name for b in parse(page) if b.file_name}


def _check_path(arg: str, page: Path) -> str | None:
    path = arg.split("[", 1)[0]
    if path in _declared_files(page) or (ROOT / path).exists():
        return None
    return f"no file {path!r}"


def _check_command(words: list[str], page: Path) -> str | None:
    cmd, args = words[0], words[1:]
    base = cmd.rsplit("/", 1)[-1]
    if cmd.startswith(".venv/bin/") and not (VENV_BIN / base).exists():
        return f"{cmd}: no {base} in a venv with duroxide installed"
    if base in PYPROJECT["project"].get("scripts", {}):
        if not (VENV_BIN / base).exists():
            return f"console script {base} is not installed"
        target = next((a for a in args if not a.startswith("-")), None) if base == "duroxide-expand" else None
        if target and (ROOT / target).exists() is False and target not in _declared_files(page):
            if importlib.util.find_spec(target) is None:
                return f"{base}: {target!r} is neither a file nor a module"
        return None
    if re.fullmatch(r"python3?(\.\d+)?", base):
        if args[:1] == ["-m"]:
            return None if importlib.util.find_spec(args[1]) else f"python -m {args[1]}: no such module"
        if args[:1] == ["-c"]:
            return None
        script = next((a for a in args if not a.startswith("-")), None)
        return _check_path(script, page) if script else None
    if base in ("pip", "pip3"):
        if args[:1] == ["install"]:
            for a in args[1:]:
                if a.startswith("-"):
                    continue
                extras = re.findall(r"\[([\w,]+)\]", a)
                if a.split("[", 1)[0] in (".", "", PYPROJECT["project"]["name"]) or a.startswith(".["):
                    for extra in ",".join(extras).split(","):
                        if extra and extra not in PYPROJECT["project"]["optional-dependencies"]:
                            return f"pip install: no extra [{extra}] in pyproject.toml"
                    continue
                problem = _check_path(a, page)
                if problem:
                    return f"pip install: {problem}"
        return None
    if base == "cd":
        return None if not args or (ROOT / args[0]).is_dir() else f"cd: no directory {args[0]!r}"
    if shutil.which(cmd) or (VENV_BIN / base).exists():
        return None
    return f"{cmd}: not a program on this machine or in the venv"


def test_shell_blocks_name_real_things() -> None:
    problems = []
    for b in ALL_BLOCKS:
        if b.lang not in ("sh", "bash", "shell", "console"):
            continue
        assert b.lang == "sh", f"{b.where}: use ```sh for shell blocks"
        for words in _commands(b.code):
            problem = _check_command(words, b.page)
            if problem:
                problems.append(f"{b.where}: {' '.join(words)}: {problem}")
    assert not problems, "\n".join(problems)


def test_toml_blocks_parse() -> None:
    for b in ALL_BLOCKS:
        if b.lang == "toml":
            tomllib.loads(b.code)


# -- coverage of the public API and the errors -----------------------------------------


def _backticked(page: str) -> set[str]:
    text = re.sub(r"^```.*?^```", "", (ROOT / "docs" / page).read_text(), flags=re.S | re.M)
    spans = re.findall(r"`([^`\n]+)`", text)
    return {w for s in spans for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", s)}


def test_api_reference_names_every_public_name() -> None:
    names = _backticked("api.md")
    public = {
        "duroxide_runtime": duroxide_runtime.__all__,
        "duroxide_macros": duroxide_macros.__all__,
        "duroxide_macros.prelude": duroxide_macros.prelude.__all__,
        "duroxide_runtime.replayer": duroxide_runtime.replayer.__all__,
        "Event": list(duroxide_runtime.history._VARIANTS),
        "OrchestrationStatus": ["Pending", "Running", "Completed", "Failed", "NotFound"],
        "RuntimeOptions": [f.name for f in duroxide_runtime.RuntimeOptions.__dataclass_fields__.values()],
        "RetryPolicy": list(duroxide_runtime.RetryPolicy.__dataclass_fields__),
        "InstanceInfo": list(duroxide_runtime.InstanceInfo.__dataclass_fields__),
        "pytest plugin": ["duroxide_store", "duroxide_runtime", "duroxide_client", "virtual_clock"],
    }
    for cls in (duroxide_runtime.Client, duroxide_runtime.OrchestrationContext, duroxide_runtime.Runtime,
                duroxide_runtime.RuntimeBuilder, duroxide_runtime.ActivityRegistry,
                duroxide_runtime.OrchestrationRegistry, macro_decorators.Orchestration, macro_decorators.Activity,
                duroxide_runtime.ActivityContext, duroxide_runtime.SqliteProvider,
                duroxide_runtime.PostgresProvider):
        public[cls.__name__] = [n for n, v in vars(cls).items()
                                if not n.startswith("_") and (callable(v) or isinstance(v, (property, classmethod,
                                                                                             staticmethod)))
                                and n not in _PROVIDER_PLUMBING]
    missing = [f"{where}: {n}" for where, ns in public.items() for n in ns if n not in names]
    assert not missing, "docs/api.md does not mention:\n" + "\n".join(missing)


#: Provider methods the runtime calls; users never do (documented as a group in api.md).
_PROVIDER_PLUMBING = {n for n, v in vars(duroxide_runtime.Provider).items()
                      if getattr(v, "__isabstractmethod__", False)} - {"read_history", "close"}


def _error_classes() -> list[type[BaseException]]:
    classes = [c for _, c in inspect.getmembers(duroxide_runtime.errors, inspect.isclass)
               if issubclass(c, BaseException) and c.__module__ == duroxide_runtime.errors.__name__]
    return [*classes, macro_decorators.DurableNotExpandedError, macro_decorators.OrchestrationFailedError,
            macro_hook.DurableExpansionError]


def test_troubleshooting_lists_every_error_class_and_code() -> None:
    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    missing = [c.__name__ for c in _error_classes() if f"`{c.__name__}`" not in text]
    missing += [f"code {c.code}" for c in _error_classes()  # type: ignore[attr-defined]
                if getattr(c, "code", None) and f"`{c.code}`" not in text]  # type: ignore[attr-defined]
    assert not missing, "docs/troubleshooting.md does not mention:\n" + "\n".join(missing)


def _literal_parts(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [p.value for p in node.values if isinstance(p, ast.Constant) and isinstance(p.value, str)]
    if isinstance(node, ast.BinOp):
        return _literal_parts(node.left) + _literal_parts(node.right)
    return []


def test_troubleshooting_lists_every_hook_problem() -> None:
    """Each problem message of the expander and the lint (its longest literal part), and each lint rule."""
    text = " ".join((ROOT / "docs" / "troubleshooting.md").read_text().split())
    missing = []
    for module in (macro_expand, macro_lint):
        tree = ast.parse(Path(str(module.__file__)).read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and (isinstance(node.func, ast.Attribute) and node.func.attr == "_problem"
                                                or isinstance(node.func, ast.Name) and node.func.id == "Problem")):
                message = node.args[1] if node.func.__class__ is ast.Attribute else node.args[-1]
                parts = sorted((" ".join(p.split()) for p in _literal_parts(message)), key=len)
                if parts and parts[-1].strip(" ()`'") and parts[-1].strip() not in text:
                    missing.append(parts[-1].strip())
    for rule in RULES:
        shown = rule.name.replace("datetime.datetime.", "datetime.").replace("datetime.date.", "date.")
        shown = shown.removeprefix("builtins.")
        if f"`{shown}`" not in text and f"`{shown}()`" not in text:
            missing.append(f"the rule for {rule.name}")
    assert not missing, "docs/troubleshooting.md does not mention:\n" + "\n".join(missing)


def test_troubleshooting_lists_every_failure_type_name() -> None:
    """Instances can end Failed with ErrorDetails whose type is not a class; those are listed too."""
    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    names: set[str] = set()
    for path in (ROOT / "duroxide_runtime").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "ErrorDetails"
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                names.add(node.args[0].value)
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing, "docs/troubleshooting.md does not mention failure types:\n" + "\n".join(missing)


def test_troubleshooting_states_the_strict_encode_check() -> None:
    """Each row of the table in "The encode check is strict" holds for the codec the decorators use."""
    import dataclasses
    import enum
    import math
    import uuid
    from datetime import datetime
    from typing import Any, TypedDict

    from pydantic import BaseModel

    from duroxide_macros.codec import Codec

    class Size(enum.Enum):
        SMALL = "S"

    @dataclasses.dataclass
    class Line:
        price: float

    class Model(BaseModel):
        n: int

    class Typed(TypedDict):
        n: int

    def encodes(annotation: Any, value: object) -> bool:
        try:
            Codec[Any](annotation, "test").encode(value)
            return True
        except duroxide_runtime.PayloadError:
            return False

    str_in_float = Line("12.50")  # type: ignore[arg-type]  # wrong on purpose
    rows: dict[str, list[tuple[Any, object, bool]]] = {  # a table row's first cells; what the codec does
        "| `2` | `float` |": [(float, 2, True)],
        '| `"2"`, `2.0`, `True` | `int` |': [(int, "2", False), (int, 2.0, False), (int, True, False)],
        '| `"12.50"` | `float` (also a field inside a dataclass) |': [(float, "12.50", False),
                                                                     (Line, str_in_float, False)],
        '| `1`, `"true"` | `bool` |': [(bool, 1, False), (bool, "true", False)],
        "| `(1, 2)` / `[1, 2]` | `list[int]` / `tuple[int, int]` |": [(list[int], (1, 2), False),
                                                                      (tuple[int, int], [1, 2], False)],
        "| a `dict` | a dataclass |": [(Line, {"price": 1.0}, False)],
        "| a `dict` | a pydantic model or a `TypedDict` |": [(Model, {"n": 1}, True), (Typed, {"n": 1}, True),
                                                             (Model, {"n": "1"}, False), (Typed, {"n": "1"}, False)],
        '| `"S"`, the value of `Size.SMALL` | `Size` (an `Enum`) |': [(Size, "S", False), (Size, Size.SMALL, True)],
        "| `\"2027-01-01T00:00:00\"`, a UUID's text | `datetime`, `UUID` |": [
            (datetime, "2027-01-01T00:00:00", False), (uuid.UUID, str(uuid.uuid4()), False)],
        "| an `int` outside 64 bits, NaN, infinity | any number |": [(int, 2**64, False), (float, math.nan, False),
                                                                    (float, math.inf, False)],
    }
    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    wrong = []
    for row, cases in rows.items():
        assert row in text, f"docs/troubleshooting.md has no table row starting {row!r}"
        wrong += [f"{row} {value!r} as {annotation}" for annotation, value, ok in cases
                  if encodes(annotation, value) is not ok]
    assert not wrong, "the codec does not do what the table says:\n" + "\n".join(wrong)
    # ... and the receiving side is lenient, as the page says.
    assert Codec(int, "test").decode('"2"') == 2


# -- the README -------------------------------------------------------------------------


def test_readme_quick_start_is_short_runnable_and_links_the_docs() -> None:
    readme = parse(ROOT / "README.md")
    quick = next(b for b in readme if b.lang == "python")
    assert quick.kind == "run", "the README quick start must be a run block"
    assert len(quick.code.splitlines()) <= 15, "the README quick start has more than 15 lines"
    text = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"({REPO_BLOB}docs/{page.name})" in text, f"README.md does not link docs/{page.name}"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _link_target(page: Path, target: str) -> tuple[Path | None, str]:
    """The local file a link names (None for another site) and its #anchor."""
    target, _, anchor = target.partition("#")
    for prefix in (REPO_BLOB, REPO_TREE):
        if target.startswith(prefix):
            return ROOT / target.removeprefix(prefix), anchor
    if re.match(r"[a-z]+:", target):
        return None, anchor
    return ((page.parent / target).resolve() if target else page), anchor


def _link_problems(page: Path) -> list[str]:
    problems = []
    where = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page.name
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        file, anchor = _link_target(page, target)
        if file is None:
            continue
        if page.name == "README.md" and not target.startswith(REPO):
            # README.md is the package index page too, where a relative link leads nowhere.
            problems.append(f"README.md: relative link {target}: write {REPO_BLOB}{target.lstrip('./')}")
        if not file.exists():
            problems.append(f"{where}: link to missing {target}")
            continue
        if anchor and file.suffix == ".md":
            body = re.sub(r"^```.*?^```", "", file.read_text(), flags=re.S | re.M)
            anchors = {_anchor(h) for h in re.findall(r"^#+\s+(.*)$", body, flags=re.M)}
            if anchor not in anchors:
                problems.append(f"{where}: no heading for #{anchor} in {file.name}")
    return problems


def test_links_resolve() -> None:
    """Links between the pages (and their #anchors) and to the repository's files name what exists;
    README.md links absolutely (it is also the package index page), into this repository."""
    problems = [p for page in PAGES for p in _link_problems(page)]
    assert not problems, "\n".join(problems)


def test_link_check_catches_what_it_should(tmp_path: Path) -> None:
    page = tmp_path / "README.md"
    page.write_text(f"[a]({REPO_BLOB}docs/api.md) [b]({REPO_BLOB}docs/nope.md) [c](docs/api.md) "
                    f"[d]({REPO_BLOB}docs/api.md#no-such-heading) [e](https://example.org/x)\n")
    assert [p.split(": ", 1)[1] for p in _link_problems(page)] == [
        f"link to missing {REPO_BLOB}docs/nope.md",
        f"relative link docs/api.md: write {REPO_BLOB}docs/api.md", "link to missing docs/api.md",
        "no heading for #no-such-heading in api.md"]


def test_api_reference_states_the_option_defaults() -> None:
    """`field=default` in docs/api.md matches RuntimeOptions and RetryPolicy."""
    text = (ROOT / "docs" / "api.md").read_text()
    for cls in (duroxide_runtime.RuntimeOptions, duroxide_runtime.RetryPolicy):
        for f in cls.__dataclass_fields__.values():
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            shown = f"{f.name}={default!r}"
            assert shown in text, f"docs/api.md should show `{shown}` for {cls.__name__}"


def test_api_reference_lists_every_duroxide_main_parameter() -> None:
    """docs/api.md shows duroxide_main's signature as it is (names, order, defaults) and explains each."""
    text = (ROOT / "docs" / "api.md").read_text()
    shown = re.search(r"`@duroxide_main(\(\*, [^`]*\))`", text)
    assert shown, "docs/api.md should show `@duroxide_main(*, ...)` with its keyword parameters"
    documented = ast.parse(f"def f{shown.group(1)}: pass").body[0]
    assert isinstance(documented, ast.FunctionDef)
    doc_params = [(a.arg, ast.literal_eval(d)) for a, d in zip(documented.args.kwonlyargs,
                                                                  documented.args.kw_defaults, strict=True)
                  if d is not None]
    real = [(n, p.default) for n, p in inspect.signature(duroxide_main).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert doc_params == real, f"docs/api.md shows {doc_params}; duroxide_main takes {real}"
    unexplained = [n for n, _ in real if not re.search(rf"^\s+- `{n}` — ", text, re.M)]
    assert not unexplained, f"docs/api.md has no `- `name` — ...` line for: {unexplained}"
