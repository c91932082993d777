"""The two packages are layered: ``duroxide_macros`` is built on ``duroxide_runtime``, never the reverse.

Checked statically, over the source of every module of both packages (imports
inside functions and ``importlib.import_module("...")`` / ``__import__("...")``
string literals included, relative imports resolved):

* nothing in ``duroxide_runtime`` imports ``duroxide_macros`` (discovery is a
  registration API the macro layer plugs into);
* ``duroxide_macros`` imports names from ``duroxide_runtime`` itself only (its
  public API, ``duroxide_runtime/__init__.py``), never a submodule;
* ``duroxide_runtime.context`` is in no import cycle, in particular none with
  the engine's execution (``duroxide_runtime.engine.execution``): the context
  issues typed commands (``engine/commands.py``) to a Protocol.

Imports under ``if TYPE_CHECKING:`` (annotations only; they never run) are
allowed, but they count like any other import for all three rules: a
type-checking import of the macros from the runtime, or of the engine from the
context, would couple the layers for type checkers just the same.

And at run time: a program that uses only the runtime never loads the macros.
"""

from __future__ import annotations

import ast
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .support import run_cmd

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("duroxide_runtime", "duroxide_macros")


@dataclass(frozen=True)
class Import:
    """One import in a module: the module it names, where, and whether only type checkers see it."""

    importer: str
    target: str
    line: int
    type_checking_only: bool

    def __str__(self) -> str:
        where = self.importer.replace(".", "/")
        return f"{where}.py:{self.line} imports {self.target}" + (" (TYPE_CHECKING)" if self.type_checking_only else "")


def _module_files() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = _module_files()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = importer if _is_package(importer) else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _imports_of(module: str) -> Iterator[Import]:
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))

    def walk(node: ast.AST, typing_only: bool) -> Iterator[Import]:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.body:
                yield from walk(stmt, True)
            for stmt in node.orelse:  # the `else:` of `if TYPE_CHECKING:` is what runs
                yield from walk(stmt, typing_only)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno, typing_only)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            if len(submodules) < len(node.names):  # some names come from `base` itself
                yield Import(module, base, node.lineno, typing_only)
            for target in submodules:  # `from pkg import submodule` imports the submodule
                yield Import(module, target, node.lineno, typing_only)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__"):
                yield Import(module, node.args[0].value, node.lineno, typing_only)
        for child in ast.iter_child_nodes(node):
            yield from walk(child, typing_only)

    yield from walk(tree, False)


IMPORTS = [imp for module in MODULES for imp in _imports_of(module)]


def _in(target: str, package: str) -> bool:
    return target == package or target.startswith(package + ".")


def test_the_walk_sees_both_packages_and_their_imports() -> None:
    # Guards the checks below against passing vacuously (a path or parsing mistake).
    assert {"duroxide_runtime.context", "duroxide_runtime.engine.execution", "duroxide_runtime.dispatch.turns",
            "duroxide_macros.decorators"} <= set(MODULES)
    assert "duroxide_runtime.context" in _reachable("duroxide_runtime.engine.execution")
    assert any(i.importer == "duroxide_macros.decorators" and i.target == "duroxide_runtime" for i in IMPORTS)


def test_the_runtime_never_imports_the_macro_layer() -> None:
    offenders = [str(i) for i in IMPORTS if _in(i.importer, "duroxide_runtime") and _in(i.target, "duroxide_macros")]
    assert not offenders, ("duroxide_runtime must not import duroxide_macros (the macro layer registers itself "
                           "through duroxide_runtime's public API instead):\n" + "\n".join(offenders))


def test_the_macro_layer_uses_only_the_runtime_public_api() -> None:
    offenders = [str(i) for i in IMPORTS
                 if _in(i.importer, "duroxide_macros") and _in(i.target, "duroxide_runtime")
                 and i.target != "duroxide_runtime"]
    assert not offenders, ("duroxide_macros may import only names exported by duroxide_runtime itself "
                           "(add and document an export in duroxide_runtime/__init__.py):\n" + "\n".join(offenders))


def _reachable(start: str) -> dict[str, list[Import]]:
    """Every runtime module ``start`` reaches, with the chain of imports that reaches it."""
    paths: dict[str, list[Import]] = {start: []}
    todo = [start]
    while todo:
        module = todo.pop()
        for imp in IMPORTS:
            if imp.importer == module and imp.target in MODULES and imp.target not in paths:
                paths[imp.target] = [*paths[module], imp]
                todo.append(imp.target)
    return paths


def test_context_and_replay_have_no_import_cycle() -> None:
    # The engine (replay, and the modules it is built from) imports the context; the context must not
    # reach any module that imports it back: it knows the engine only through a Protocol.
    from_context = _reachable("duroxide_runtime.context")
    cycles = [chain + _reachable(module)["duroxide_runtime.context"] for module, chain in from_context.items()
              if module != "duroxide_runtime.context" and "duroxide_runtime.context" in _reachable(module)]
    assert not cycles, ("duroxide_runtime.context is in an import cycle (refer to the engine through a "
                        "Protocol defined beside the context instead):\n"
                        + "\n".join(str(i) for i in min(cycles, key=len)))


def test_a_runtime_only_program_never_loads_the_macro_layer(tmp_path: Path) -> None:
    program = tmp_path / "runtime_only.py"
    program.write_text(textwrap.dedent('''
        import asyncio, sys
        from duroxide_runtime import (Client, ConfigurationError, InMemoryProvider, OrchestrationContext,
                                      OrchestrationRegistry, ActivityRegistry, Runtime, orchestration_context)

        async def greet(name: str) -> str:
            return f"Hello, {name}!"

        async def hello(ctx: OrchestrationContext, name: str) -> str:
            assert orchestration_context() is ctx
            return await ctx.schedule_activity("Greet", name)

        async def main() -> None:
            store = InMemoryProvider()
            rt = await (Runtime.builder().store(store)
                        .activities(ActivityRegistry.builder().register("Greet", greet).build())
                        .orchestrations(OrchestrationRegistry.builder().register("Hello", hello).build())
                        .start())
            client = Client(store)
            await client.start_orchestration("i1", "Hello", "World")
            print("STATUS", await client.wait_for_orchestration("i1", 20))
            await rt.shutdown()
            try:
                Runtime.builder().discover_activities()
            except ConfigurationError as err:
                print("DISCOVERY", err.fix)
            print("MACROS LOADED", sorted(m for m in sys.modules if m.startswith("duroxide_macros")))

        asyncio.run(main())
    '''))
    proc = run_cmd([sys.executable, str(program)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "STATUS Completed(output='Hello, World!', custom_status=None)" in proc.stdout
    # Discovery without the macro layer (and no `duroxide` entry points installed) says how to fix it.
    assert "DISCOVERY import duroxide_macros" in proc.stdout
    assert "MACROS LOADED []" in proc.stdout, proc.stdout
