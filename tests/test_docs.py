"""The documentation cannot drift: every code block in README.md and docs/*.md is checked.

A fenced ``python`` block must be preceded (on the nearest non-blank line) by a marker:

* ``<!-- doctest: run -->`` - a complete program: written to a file in the page's
  working directory (a temp dir shared by the page's blocks, in page order) and run
  with this interpreter; it must exit 0. ``file=NAME`` names the file.
* ``<!-- doctest: file=NAME -->`` - a complete module written to ``NAME`` in that
  directory and type-checked, for a later ``sh`` block of the page to use;
  ``file=NAME nocheck (reason)`` is not type-checked (a module wrong on purpose).
* ``<!-- doctest: typecheck -->`` - a fragment, type-checked with pyright inside a
  scaffold: its import lines go to module level after ``from duroxide_macros.prelude
  import *`` and ``from duroxide_runtime import *`` (and asyncio, json, datetime,
  typing.Any); the rest becomes the body of ``async def _fragment(ctx:
  OrchestrationContext, client: Client, store: Provider, rt: Runtime) -> Any``.
* ``<!-- doctest: skip (reason) -->`` - not checked; the reason is required.

Run and file blocks are type-checked too, as whole modules (one pyright run for all).
A ``text`` block marked ``<!-- doctest: output -->`` lists lines the previous run
block must print, in order (stdout for python; stdout and stderr for sh). ``sh``
blocks are always checked statically (the programs, scripts, modules, console
scripts and paths they name exist); ``<!-- doctest: run -->`` before one also runs
it with bash in the page's working directory with the venv's ``bin`` first on
``PATH``; it must exit 0, or N with ``run exit=N``. ``toml`` blocks must parse.
"""

from __future__ import annotations

import ast
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
from duroxide_macros.nondeterminism import RULES
from duroxide_macros import hook as macro_hook

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
VENV_BIN = Path(sys.executable).parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

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
    def file_name(self) -> str | None:
        m = re.search(r"\bfile=(\S+)", self.marker or "")
        return m.group(1) if m else None


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
        elif b.kind not in ("run", "typecheck", "file"):
            problems.append(f"{b.where}: unknown marker {b.marker!r}")
        elif "nocheck" in b.marker.split() and not re.search(r"\(\s*\S.*\)", b.marker):
            problems.append(f"{b.where}: `nocheck` needs a reason: <!-- doctest: file=x.py nocheck (why) -->")
    for b in ALL_BLOCKS:
        if b.kind == "output" and b.lang == "python":
            problems.append(f"{b.where}: an output block must not be python")
    assert not problems, "\n".join(problems)


def test_output_blocks_follow_something_that_runs() -> None:
    for page in PAGES:
        last_runnable = None
        for b in parse(page):
            if b.kind == "output":
                assert last_runnable is not None, f"{b.where}: output block with no run block before it"
            elif b.kind == "run":
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


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


PAGES_THAT_RUN = [p for p in PAGES if any(b.kind == "run" for b in parse(p))]


@pytest.mark.parametrize("page", PAGES_THAT_RUN, ids=lambda p: p.name)
def test_run_blocks(page: Path) -> None:
    """Run and file blocks of a page, in order, in one working directory; outputs are compared."""
    blocks = parse(page)
    with tempfile.TemporaryDirectory(prefix="duroxide-doc-") as tmp:
        last: tuple[Block, str] | None = None
        for b in blocks:
            if b.kind == "output":
                assert last is not None
                _assert_prints(last[0], last[1], b)
                continue
            if b.lang == "python" and b.kind in ("run", "file"):
                name = b.file_name or f"block_{b.line}.py"
                (Path(tmp) / name).write_text(b.code)
                if b.kind == "file":
                    continue
                cmd = [sys.executable, name]
            elif b.lang == "sh" and b.kind == "run":
                cmd = ["bash", "-e", "-c", b.code]
            else:
                continue
            proc = subprocess.run(cmd, cwd=tmp, env=_env(), stdout=subprocess.PIPE, text=True, timeout=90,
                                  stderr=subprocess.STDOUT if b.lang == "sh" else subprocess.PIPE)
            m = re.search(r"\bexit=(\d+)", b.marker or "")
            want = int(m.group(1)) if m else 0
            assert proc.returncode == want, (f"{b.where} exited {proc.returncode}, not {want}\n--- stdout\n"
                                             f"{proc.stdout}\n--- stderr\n{(proc.stderr or '')[-4000:]}")
            last = (b, proc.stdout)


# -- type checking ----------------------------------------------------------------------

_SCAFFOLD_HEAD = """\
import asyncio
import json
from datetime import datetime, timedelta, timezone
from typing import Any

from duroxide_macros.prelude import *
from duroxide_runtime import *
"""


def scaffold(code: str) -> tuple[str, int]:
    """A fragment as a checkable module; returns the source and the offset of fragment line 1."""
    imports = [line for line in code.splitlines() if re.match(r"(import|from)\s+\S+", line)]
    head = _SCAFFOLD_HEAD + "\n".join(imports) + "\n\n\n"
    head += "async def _fragment(ctx: OrchestrationContext, client: Client, store: Provider, rt: Runtime) -> Any:\n"
    # Fragment lines keep their relative positions: imports become blank lines in the body.
    lines = [("    " + line if line.strip() and line not in imports else "") for line in code.splitlines()]
    src = head + "\n".join(lines) + "\n    pass\n"
    return src, head.count("\n")


def _pyright() -> str:
    exe = VENV_BIN / "pyright"
    found = str(exe) if exe.exists() else shutil.which("pyright")
    assert found, "pyright is needed to check the docs (pip install -e '.[test]')"
    return found


def test_python_blocks_typecheck() -> None:
    """One pyright run over every run, file and typecheck block; errors point at the doc lines."""
    checked = [b for b in PY_BLOCKS
               if b.kind in ("run", "file", "typecheck") and "nocheck" not in (b.marker or "").split()]
    with tempfile.TemporaryDirectory(prefix="duroxide-doc-types-") as tmp:
        files: dict[str, tuple[Block, int]] = {}
        for n, b in enumerate(checked):
            if b.kind == "typecheck":
                src, offset = scaffold(b.code)
            else:
                src, offset = b.code, 0
            path = Path(tmp) / f"doc_{n:03d}_{b.page.stem.replace('-', '_')}.py"
            path.write_text(src)
            files[str(path)] = (b, offset)
        proc = subprocess.run([_pyright(), "--pythonpath", sys.executable, "--outputjson", *files],
                              cwd=ROOT, capture_output=True, text=True, timeout=150)
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
                if a.split("[", 1)[0] in (".", "") or a.startswith(".["):
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
        "pytest plugin": ["duroxide_store", "duroxide_runtime", "duroxide_client"],
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
        tree = ast.parse(Path(module.__file__).read_text())
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


# -- the README -------------------------------------------------------------------------


def test_readme_quick_start_is_short_runnable_and_links_the_docs() -> None:
    readme = parse(ROOT / "README.md")
    quick = next(b for b in readme if b.lang == "python")
    assert quick.kind == "run", "the README quick start must be a run block"
    assert len(quick.code.splitlines()) <= 15, "the README quick start has more than 15 lines"
    text = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in text, f"README.md does not link docs/{page.name}"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_resolve() -> None:
    """Links between the pages (and their #anchors) and to files of the repository exist."""
    problems = []
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                problems.append(f"{page.relative_to(ROOT)}: link to missing {target}")
                continue
            if anchor and file.suffix == ".md":
                body = re.sub(r"^```.*?^```", "", file.read_text(), flags=re.S | re.M)
                anchors = {_anchor(h) for h in re.findall(r"^#+\s+(.*)$", body, flags=re.M)}
                if anchor not in anchors:
                    problems.append(f"{page.relative_to(ROOT)}: no heading for #{anchor} in {file.name}")
    assert not problems, "\n".join(problems)


def test_api_reference_states_the_option_defaults() -> None:
    """`field=default` in docs/api.md matches RuntimeOptions and RetryPolicy."""
    text = (ROOT / "docs" / "api.md").read_text()
    for cls in (duroxide_runtime.RuntimeOptions, duroxide_runtime.RetryPolicy):
        for f in cls.__dataclass_fields__.values():
            shown = f"{f.name}={f.default!r}"
            assert shown in text, f"docs/api.md should show `{shown}` for {cls.__name__}"
