"""The rewrite: ``durable(...)`` forms into explicit calls on the context in scope, with libcst.

Pure source-to-source, no imports executed: the import hook, ``duroxide-expand``
and the tests all call :func:`expand`.

What changes (and nothing else, so every line keeps its number):

==========================================  =========================================
``durable(charge(order, total))``            ``(charge.call(ctx, order, total))``
``durable_trace_info("x {}", a, k=v)``       ``ctx.trace_info("x {}", a, k=v)``
``durable_newguid()`` / ``durable_utcnow()``  ``ctx.new_guid()`` / ``ctx.utc_now()``
==========================================  =========================================

``ctx`` is the context in scope: the first parameter of the enclosing
``@orchestration`` function, whatever its name, or a parameter annotated
``OrchestrationContext``. The outer parentheses of ``durable(...)`` stay, as
grouping parentheses, so a call spread over several lines stays valid and
keeps its line breaks.

Problems are collected as :class:`Problem` (``path:line:col: message``):
``durable`` without a context or without a call, orchestrations that are
not ``async def`` or lack a context parameter, and non-deterministic calls
(``time.time()``, ``datetime.now()``, ``uuid.uuid4()``, ``random.*``,
``open()``, ``time.sleep()``) in an orchestration body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import libcst as cst
from libcst.metadata import CodeRange, MetadataWrapper, PositionProvider

__all__ = ["expand", "uses_forms", "Problem", "Expansion", "EXPANDER_VERSION", "FORM_NAMES"]

#: Bump when the output of :func:`expand` changes: it keys the import cache.
EXPANDER_VERSION = 1

_TRACE = {
    **{f"durable_trace_{lvl}": f"trace_{lvl}" for lvl in ("info", "warn", "error", "debug")},
    **{f"trace_{lvl}": f"trace_{lvl}" for lvl in ("info", "warn", "error", "debug")},
    **{f"orch_{lvl}": f"trace_{lvl}" for lvl in ("info", "warn", "error", "debug")},
}
_SYSTEM = {"durable_newguid": "new_guid", "durable_guid": "new_guid",
           "durable_utcnow": "utc_now", "durable_now": "utc_now"}
FORM_NAMES = frozenset({"durable", *_TRACE, *_SYSTEM})
_FORMS_RE = re.compile(rb"\b(?:durable|durable_\w+|trace_(?:info|warn|error|debug)|orch_(?:info|warn|error|debug))\s*\(")

# Calls that break replay, with the deterministic replacement to suggest.
_NONDETERMINISTIC: dict[tuple[str, ...], str] = {
    ("time", "time"): "await durable_utcnow() (or ctx.utc_now())",
    ("time", "time_ns"): "await durable_utcnow() (or ctx.utc_now())",
    ("time", "monotonic"): "await durable_utcnow() (or ctx.utc_now())",
    ("time", "sleep"): "await asyncio.sleep(...) or ctx.schedule_timer(...) (a durable timer)",
    ("datetime", "now"): "await durable_utcnow() (or ctx.utc_now())",
    ("datetime", "utcnow"): "await durable_utcnow() (or ctx.utc_now())",
    ("datetime", "today"): "await durable_utcnow() (or ctx.utc_now())",
    ("date", "today"): "await durable_utcnow() (or ctx.utc_now())",
    ("uuid", "uuid1"): "await durable_newguid() (or ctx.new_guid())",
    ("uuid", "uuid4"): "await durable_newguid() (or ctx.new_guid())",
    ("open",): "an activity that does the I/O",
    ("input",): "an external event: await ctx.schedule_wait(name)",
}


def uses_forms(source: bytes | str) -> bool:
    """Cheap pre-check: does the source use a form? Modules that don't are left alone.

    Plain substring scans reject almost every module far faster than the regex
    (this runs for every module imported while the hook is installed): every
    form but the ``trace_*``/``orch_*`` aliases contains "durable", and those
    aliases exist only in ``duroxide_macros``, which the module must then name.
    """
    data = source.encode() if isinstance(source, str) else source
    if b"durable" not in data and b"duroxide" not in data:
        return False
    return bool(_FORMS_RE.search(data))


@dataclass(frozen=True)
class Problem:
    """One import-time error, printed like a compiler's."""

    path: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"


@dataclass
class Expansion:
    """The rewritten source and what was found on the way."""

    code: str
    problems: list[Problem] = field(default_factory=list)
    rewrites: int = 0


def _dotted(node: cst.BaseExpression) -> tuple[str, ...] | None:
    if isinstance(node, cst.Name):
        return (node.value,)
    if isinstance(node, cst.Attribute):
        head = _dotted(node.value)
        return None if head is None else (*head, node.attr.value)
    return None


def _decorator_name(dec: cst.Decorator) -> str | None:
    target = dec.decorator.func if isinstance(dec.decorator, cst.Call) else dec.decorator
    parts = _dotted(target)
    return parts[-1] if parts else None


def _is_context_annotation(param: cst.Param) -> bool:
    if param.annotation is None:
        return False
    ann = param.annotation.annotation
    if isinstance(ann, cst.SimpleString):
        return "OrchestrationContext" in ann.value
    parts = _dotted(ann)
    return parts is not None and parts[-1] == "OrchestrationContext"


@dataclass
class _Scope:
    ctx: str | None
    orchestration: bool
    activity: bool


class _Rewriter(cst.CSTTransformer):
    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, path: str, local_plain_functions: set[str], shadowed: set[str]) -> None:
        super().__init__()
        self.path = path
        self.plain_functions = local_plain_functions
        self.shadowed = shadowed
        self.scopes: list[_Scope] = []
        self.problems: list[Problem] = []
        self.rewrites = 0

    # -- scopes --------------------------------------------------------------------

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        decorators = {_decorator_name(d) for d in node.decorators}
        is_orch = "orchestration" in decorators
        is_activity = "activity" in decorators
        params = list(node.params.posonly_params) + list(node.params.params)
        ctx = next((p.name.value for p in params if _is_context_annotation(p)), None)
        if is_orch:
            if node.asynchronous is None:
                self._problem(node, "@orchestration functions must be `async def` "
                                    "(fix: write `async def " + node.name.value + "(ctx, ...)`)")
            if not params:
                self._problem(node, f"orchestration {node.name.value!r} has no context parameter "
                                    "(fix: make the first parameter `ctx: OrchestrationContext`)")
            else:
                ctx = params[0].name.value
        enclosing = self.scopes[-1] if self.scopes else None
        if is_activity:
            scope = _Scope(None, False, True)
        elif ctx is not None:
            scope = _Scope(ctx, True, False)
        elif enclosing is not None and enclosing.ctx is not None:
            scope = _Scope(enclosing.ctx, enclosing.orchestration, False)  # closures see the context
        else:
            scope = _Scope(None, False, False)
        self.scopes.append(scope)

    def leave_FunctionDef(self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef) -> cst.FunctionDef:
        self.scopes.pop()
        return updated_node

    # -- calls ---------------------------------------------------------------------

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.BaseExpression:
        func = original_node.func
        if isinstance(func, cst.Name) and func.value in FORM_NAMES and func.value not in self.shadowed:
            return self._form(original_node, updated_node, func.value)
        self._check_determinism(original_node)
        return updated_node

    def _form(self, original: cst.Call, updated: cst.Call, name: str) -> cst.BaseExpression:
        scope = self.scopes[-1] if self.scopes else None
        ctx = scope.ctx if scope else None
        if name in _TRACE:
            if ctx is None:
                return updated  # in activities and plain code the trace forms work at run time as they are
            self.rewrites += 1
            return updated.with_changes(func=cst.Attribute(cst.Name(ctx), cst.Name(_TRACE[name])))
        if name in _SYSTEM:
            if ctx is None:
                self._problem(original, f"{name}() needs an orchestration context in scope "
                                        "(fix: use it inside an @orchestration function)")
                return updated
            self.rewrites += 1
            return updated.with_changes(func=cst.Attribute(cst.Name(ctx), cst.Name(_SYSTEM[name])))
        # durable(...)
        if ctx is None:
            self._problem(original, "durable() has no OrchestrationContext in scope (fix: use it inside an "
                                    "@orchestration function, or a function with a parameter annotated "
                                    "OrchestrationContext)")
            return updated
        if len(updated.args) != 1 or updated.args[0].keyword is not None or updated.args[0].star:
            self._problem(original, "durable() takes exactly one call (fix: durable(charge_payment(order)))")
            return updated
        inner = updated.args[0].value
        if not isinstance(inner, cst.Call):
            code = cst.Module([]).code_for_node(original.args[0].value)
            self._problem(original, f"durable() needs a call of an activity or orchestration, got `{code}` "
                                    "(fix: durable(my_activity(arg)))")
            return updated
        target = _dotted(inner.func)
        if target is not None and len(target) == 1 and target[0] in self.plain_functions:
            self._problem(original, f"durable({target[0]}(...)): {target[0]!r} is not an @activity or "
                                    "@orchestration (fix: decorate it, or call it directly)")
            return updated
        self.rewrites += 1
        ctx_arg = cst.Arg(cst.Name(ctx), comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
                          if inner.args else cst.MaybeSentinel.DEFAULT)
        outer_arg = updated.args[0]
        return inner.with_changes(
            func=cst.Attribute(inner.func, cst.Name("call")),
            args=[ctx_arg, *inner.args],
            lpar=[cst.LeftParen(whitespace_after=updated.whitespace_before_args), *inner.lpar],
            rpar=[*inner.rpar, cst.RightParen(whitespace_before=outer_arg.whitespace_after_arg)],
        )

    def _check_determinism(self, call: cst.Call) -> None:
        scope = self.scopes[-1] if self.scopes else None
        if scope is None or not scope.orchestration:
            return
        parts = _dotted(call.func)
        if parts is None:
            return
        advice = _NONDETERMINISTIC.get(parts[-2:] if len(parts) >= 2 else parts)
        if advice is None and len(parts) >= 2 and parts[0] == "random":
            advice = "an activity, or a value derived from await durable_newguid()"
        if advice is not None:
            self._problem(call, f"`{'.'.join(parts)}()` is not deterministic and breaks replay "
                                f"(fix: use {advice})")

    def _problem(self, node: cst.CSTNode, message: str) -> None:
        pos = self.get_metadata(PositionProvider, node)
        assert isinstance(pos, CodeRange)
        self.problems.append(Problem(self.path, pos.start.line, pos.start.column + 1, message))


class _Survey(cst.CSTVisitor):
    """Module-level facts: plain functions defined here, names that shadow the forms."""

    def __init__(self) -> None:
        self.plain_functions: set[str] = set()
        self.shadowed: set[str] = set()

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        decorators = {_decorator_name(d) for d in node.decorators}
        if not decorators & {"activity", "orchestration"}:
            self.plain_functions.add(node.name.value)
        if node.name.value in FORM_NAMES:
            self.shadowed.add(node.name.value)

    def visit_ImportFrom(self, node: cst.ImportFrom) -> None:
        module = _dotted(node.module) if node.module is not None else None
        if module and module[0] == "duroxide_macros":
            return
        if isinstance(node.names, cst.ImportStar):
            return
        for alias in node.names:
            bound = alias.asname.name if alias.asname else alias.name
            if isinstance(bound, cst.Name) and bound.value in FORM_NAMES:
                self.shadowed.add(bound.value)


def expand(source: str, path: str = "<string>") -> Expansion:
    """Rewrite the forms in ``source``; problems are returned, not raised."""
    try:
        module = cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        try:  # Python's own message and position are the familiar ones (libcst's tokenizer gives none)
            compile(source, path, "exec", dont_inherit=True)
        except SyntaxError as py_exc:
            return Expansion(source, [Problem(path, py_exc.lineno or 1, py_exc.offset or 1,
                                              f"syntax error: {py_exc.msg}")])
        return Expansion(source, [Problem(path, exc.editor_line, exc.editor_column, f"syntax error: {exc.message}")])
    survey = _Survey()
    module.visit(survey)
    wrapper = MetadataWrapper(module, unsafe_skip_copy=True)
    rewriter = _Rewriter(path, survey.plain_functions, survey.shadowed)
    new_module = wrapper.visit(rewriter)
    return Expansion(new_module.code, rewriter.problems, rewriter.rewrites)
