"""The determinism lint: calls in orchestration code that break replay, helpers followed.

Orchestration code is the body of an ``@orchestration`` (and of a function
taking a parameter annotated ``OrchestrationContext``), with its nested
functions and lambdas, but not nested activities. Each call there is checked
against :data:`duroxide_macros.nondeterminism.RULES` by qualified name, and
each plain function it calls is checked the same way, transitively: a def of
the same module, or a def imported from another module of the same top-level
package (for a script: a module beside it; re-exports such as a package's
``__init__.py`` followed), read from its source without importing it. A
problem in a helper is reported at the helper's line. The call inside
``durable(...)`` is not followed: it runs as an activity, not in the
orchestration. :class:`Project` also tells which forms a module of the project
re-exports (``from app.dx import durable``).

Limits (also in docs/troubleshooting.md): calls through attributes of
objects (``self.helper()``, ``client.get()``), functions passed as values,
and code outside the package are not followed; the lint catches the common
mistakes, the replay check (``NonDeterminismError``) catches the rest.

Example::

    facts, _ = analyze(cst.parse_module(source), "app.py", "app")
    for problem in lint(facts, Project("app.py", "app")):
        print(problem)        # app.py:9:12: `time.time()` ... (fix: use await durable_utcnow() ...)
"""

from __future__ import annotations

import os
import sys
import tokenize

import libcst as cst

from .analysis import OWN_PACKAGE, CallFacts, Form, FunctionFacts, Kind, ModuleFacts, analyze, global_binding
from .nondeterminism import rule_for
from .problems import Problem

__all__ = ["Project", "lint"]

_SCRIPT_NAMES = (None, "__main__", "__mp_main__")


class Project:
    """The modules beside the one being expanded, found by path and analysed on demand.

    ``dependencies`` lists every other source file read, so a cache of the
    expansion can be invalidated when one of them changes.
    """

    def __init__(self, path: str, module: str | None) -> None:
        self.module = module
        self.is_package = os.path.basename(path) == "__init__.py"
        self.dependencies: set[str] = set()
        self._facts: dict[str, ModuleFacts | None] = {}
        self._forms: dict[tuple[str, str | None, bool | None], str | None] = {}
        self.root: str | None = None
        self.top: str | None = None
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isfile(path):
            pass  # source given as text: nothing beside it to read
        elif module in _SCRIPT_NAMES:
            self.root = folder  # a script: the modules beside it are its project
        elif module is not None:
            parts = module.split(".")
            ups = len(parts) if self.is_package else len(parts) - 1
            root = folder
            for _ in range(ups):
                root = os.path.dirname(root)
            if self._file_of(module, root) == os.path.abspath(path):
                self.root, self.top = root, parts[0]

    def absolute(self, name: str, from_module: str | None, from_package: bool) -> str | None:
        """``name`` with a relative prefix (``.helpers.f``) resolved against ``from_module``."""
        if not name.startswith("."):
            return name
        if from_module in _SCRIPT_NAMES or from_module is None:
            return None
        dots = len(name) - len(name.lstrip("."))
        base = from_module.split(".")
        keep = len(base) - dots + (1 if from_package else 0)
        if keep < 1:
            return None
        rest = name[dots:]
        return ".".join(base[:keep]) + ("." + rest if rest else "")

    def function(self, name: str, facts: ModuleFacts, depth: int = 0) -> tuple[ModuleFacts, FunctionFacts] | None:
        """The top-level def that ``name`` (as imported in ``facts``' module) names, if it is ours to read.

        Re-exports (``from .helpers import stamp`` in a package's ``__init__.py``) are followed.
        """
        if self.root is None or depth > 3:
            return None
        from_package = os.path.basename(facts.path) == "__init__.py"
        absolute = self.absolute(name, facts.module, from_package)
        if absolute is None or (self.top is not None and absolute.split(".")[0] != self.top):
            return None
        parts = absolute.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            modname, attrs = ".".join(parts[:cut]), parts[cut:]
            path = self._file_of(modname, self.root)
            if path is None:
                continue
            other = self._analyse(path, modname)
            if other is None or len(attrs) != 1:
                return None
            fn = other.top_level_defs.get(attrs[0])
            if fn is not None:
                return other, fn
            bound = global_binding(other, attrs[0])  # imported there from another module of the project?
            return self.function(bound, other, depth + 1) if bound is not None else None
        return None

    def form_name(self, name: str, from_module: str | None = None, from_package: bool | None = None,
                  depth: int = 0) -> str | None:
        """The public duroxide_macros name that ``name``, imported from a module of the project, is bound to.

        ``from app.dx import durable``, where app/dx.py imports ``durable`` from duroxide_macros
        (or star-imports the prelude), is the form; chains of such re-exports are followed.
        """
        if self.root is None or depth > 3:
            return None
        if from_module is None:
            from_module, from_package = self.module, self.is_package
        key = (name, from_module, from_package)
        if key not in self._forms:  # asked for every call of an imported name: look each up once
            self._forms[key] = self._form_name(name, from_module, bool(from_package), depth)
        return self._forms[key]

    def _form_name(self, name: str, from_module: str | None, from_package: bool, depth: int) -> str | None:
        absolute = self.absolute(name, from_module, from_package)
        if self.root is None or absolute is None or (self.top is not None and absolute.split(".")[0] != self.top):
            return None
        if absolute.split(".")[0] in sys.stdlib_module_names:
            return None  # beside a script: never re-exports a form, and costly to read
        parts = absolute.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            modname = ".".join(parts[:cut])
            path = self._file_of(modname, self.root)
            if path is None:
                continue
            other = self._analyse(path, modname)
            if other is None or cut != len(parts) - 1:
                return None
            bound = global_binding(other, parts[-1])
            if bound is None:
                return None
            if bound.split(".")[0] == OWN_PACKAGE:
                return bound.rsplit(".", 1)[-1]
            return self.form_name(bound, modname, os.path.basename(path) == "__init__.py", depth + 1)
        return None

    @staticmethod
    def _file_of(module: str, root: str) -> str | None:
        base = os.path.join(root, *module.split("."))
        # a package before a module of the same name, as Python's own path finder looks
        for candidate in (os.path.join(base, "__init__.py"), base + ".py"):
            if os.path.isfile(candidate):
                return os.path.abspath(candidate)
        return None

    def _analyse(self, path: str, module: str) -> ModuleFacts | None:
        if path not in self._facts:
            self.dependencies.add(path)
            try:
                with tokenize.open(path) as f:  # honours the file's coding declaration
                    source = f.read()
                self._facts[path] = analyze(cst.parse_module(source), path, module, helpers_only=True)[0]
            except (OSError, SyntaxError, UnicodeDecodeError, cst.ParserSyntaxError):
                self._facts[path] = None  # its own import reports it
        return self._facts[path]

    def lookup(self, facts: ModuleFacts, call: CallFacts) -> tuple[ModuleFacts, FunctionFacts] | None:
        """The def a call reaches: a def of the same module, or one imported from the project."""
        if call.local_def is not None:
            fn = facts.top_level_defs.get(call.local_def)
            return (facts, fn) if fn is not None else None
        for name in sorted(call.qualified_names):
            found = self.function(name, facts)
            if found is not None:
                return found
        return None


def _spelled(call: CallFacts) -> str:
    return cst.Module([]).code_for_node(call.node.func)


def lint(facts: ModuleFacts, project: Project) -> list[Problem]:
    """Every non-deterministic call in the orchestration code of ``facts`` and in the helpers it calls."""
    problems: dict[tuple[str, int, int], Problem] = {}
    visited: set[tuple[str, str]] = set()
    # The call inside `durable(...)` runs as an activity or sub-orchestration, never in the
    # orchestration's own code: its body is not followed as a helper (its decorator may be a
    # user's wrapper of `activity`, which the analysis cannot see through).
    targets: dict[str, set[cst.CSTNode]] = {}

    def durable_targets(module: ModuleFacts) -> set[cst.CSTNode]:
        if module.path not in targets:
            targets[module.path] = {c.node.args[0].value for c in module.calls.values()
                                    if c.form is Form.DURABLE and c.node.args}
        return targets[module.path]

    def check(module: ModuleFacts, calls: list[CallFacts], orchestration: str, helper: FunctionFacts | None,
              entry: tuple[str, int] | None) -> None:
        for call in calls:
            for name in sorted(call.qualified_names):
                rule = rule_for(name)
                if rule is None or (rule.seeded and call.node.args):
                    continue
                where = (f" in helper `{helper.name}` (called from orchestration `{orchestration}` at "
                         f"{entry[0]}:{entry[1]})" if helper is not None and entry is not None else "")
                line, column = module.where(call.node)
                problems.setdefault((module.path, line, column), Problem(
                    module.path, line, column,
                    f"`{_spelled(call)}()`{where} is not deterministic: `{name}` {rule.why} (fix: use {rule.fix})"))
                break
            if call.node in durable_targets(module):
                continue
            target = project.lookup(module, call)
            if target is None:
                continue
            other, fn = target
            if fn.kind is not Kind.PLAIN or fn.context_param is not None:
                continue  # activities may do anything; context functions are checked on their own
            key = (other.path, fn.name)
            if key in visited:
                continue
            visited.add(key)
            check(other, fn.calls, orchestration, fn, entry or (module.path, module.where(call.node)[0]))

    for fn in facts.functions:
        if fn.context_param is not None and fn.kind is not Kind.ACTIVITY:
            own = [c for c in fn.calls if c.orchestration_code is fn]
            check(facts, own, fn.name, None, None)
    return sorted(problems.values())
