"""What each name in a module is bound to: the facts the rewrite and the lint decide on.

One pass of libcst's scope and qualified-name analysis over a module gives
plain facts, so that nothing downstream decides by spelling:

* a call is a *form* only when its function is bound to a ``duroxide_macros``
  form (``from duroxide_macros import durable as d``, ``dx.durable(...)``,
  the prelude's star import when no other binding of the name exists, or a
  re-export through a module of the project, followed with ``resolve``);
  a parameter, assignment, def or import from elsewhere of the same name
  shadows it;
* a function is an orchestration or an activity when a decorator bound to
  ``duroxide_macros``'s ``orchestration``/``activity`` decorates it;
* the context a form would receive is the enclosing orchestration's own
  context parameter, and the facts say whether that name still means that
  parameter where the form is (a comprehension, lambda, nested function or
  ``match`` capture may rebind it);
* the qualified names a call may reach (``import random as r; r.randint`` is
  ``random.randint``; ``now = datetime.now; now()`` is
  ``datetime.datetime.now``), for the determinism lint.

Example::

    facts = analyze(cst.parse_module(source), "app.py", "app")
    [call] = [c for c in facts.calls.values() if c.form is Form.DURABLE]
    assert call.context is not None and call.context.name == "ctx"
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import libcst as cst
from libcst.metadata import (
    Assignment,
    CodeRange,
    ClassScope,
    ComprehensionScope,
    GlobalScope,
    MetadataWrapper,
    PositionProvider,
    QualifiedName,
    QualifiedNameProvider,
    QualifiedNameSource,
    Scope,
    ScopeProvider,
)

__all__ = ["Form", "Kind", "ContextRef", "CallFacts", "FunctionFacts", "ModuleFacts", "analyze",
           "imports_duroxide_macros", "global_binding", "OWN_PACKAGE"]

OWN_PACKAGE = "duroxide_macros"


class Form(enum.Enum):
    """A call form and the context method it becomes (``None``: ``durable`` rewrites the call itself)."""

    DURABLE = None
    TRACE_INFO = "trace_info"
    TRACE_WARN = "trace_warn"
    TRACE_ERROR = "trace_error"
    TRACE_DEBUG = "trace_debug"
    NEW_GUID = "new_guid"
    UTC_NOW = "utc_now"

    @property
    def is_trace(self) -> bool:
        return self.value is not None and self.value.startswith("trace_")


#: Public names of duroxide_macros that are forms (aliases included), and what each one is.
FORM_NAMES: dict[str, Form] = {
    "durable": Form.DURABLE,
    **{f"{prefix}{lvl}": Form[f"TRACE_{lvl.upper()}"]
       for prefix in ("durable_trace_", "trace_", "orch_") for lvl in ("info", "warn", "error", "debug")},
    "durable_newguid": Form.NEW_GUID, "durable_guid": Form.NEW_GUID,
    "durable_utcnow": Form.UTC_NOW, "durable_now": Form.UTC_NOW,
}


class Kind(enum.Enum):
    """What a function definition is, by its decorators."""

    PLAIN = "plain"
    ACTIVITY = "activity"
    ORCHESTRATION = "orchestration"


@dataclass(frozen=True)
class ContextRef:
    """The context a form in some place receives: the parameter ``name`` of ``owner``."""

    name: str
    owner: str
    #: False when ``name`` at the form's place is bound to something else (a comprehension
    #: variable, a lambda's or nested function's parameter, a reassignment, a ``match`` capture).
    bound_here: bool
    #: The other binding, and what it is, for the error message.
    rebound_at: cst.CSTNode | None = None
    rebound_by: str | None = None


@dataclass
class CallFacts:
    """One call: where it is, what its function is bound to, and the context in scope."""

    node: cst.Call
    form: Form | None
    #: Qualified names the called function may be (imports and builtins only).
    qualified_names: frozenset[str]
    #: Set when the callee is a def at module level of this module.
    local_def: str | None
    #: The context a form here would pass (None: no orchestration context in scope).
    context: ContextRef | None
    #: The innermost orchestration-code function around the call (None outside orchestration code).
    orchestration_code: FunctionFacts | None
    #: Whether ``func`` is a builtin that is not an activity (``print``, ``len``, ...).
    builtin: bool = False


@dataclass
class FunctionFacts:
    """One ``def``: its name, kind, place and the calls lexically inside it."""

    node: cst.FunctionDef
    name: str
    kind: Kind
    is_method: bool
    top_level: bool
    is_async: bool
    params: list[cst.Param]
    has_star_params: bool
    #: The context parameter (an orchestration's first, or one annotated OrchestrationContext).
    context_param: cst.Param | None
    calls: list[CallFacts] = field(default_factory=list)
    #: False when its scope binds the name again (``charge = activity(charge)``): what the
    #: name finally means is then not this def.
    sole_binding: bool = True


@dataclass
class ModuleFacts:
    """Everything :func:`analyze` learnt about one module."""

    path: str
    module: str | None
    imports_ours: bool
    wrapper: MetadataWrapper
    #: ``from duroxide_macros... import *`` somewhere at module level.
    star_ours: bool = False
    calls: dict[cst.Call, CallFacts] = field(default_factory=dict)
    functions: list[FunctionFacts] = field(default_factory=list)
    top_level_defs: dict[str, FunctionFacts] = field(default_factory=dict)
    _positions: Mapping[cst.CSTNode, CodeRange] | None = None

    def where(self, node: cst.CSTNode) -> tuple[int, int]:
        """``(line, column)`` of ``node``, both from 1; positions are computed only when a problem needs one."""
        if self._positions is None:
            self._positions = self.wrapper.resolve(PositionProvider)
        pos = self._positions[node]
        return pos.start.line, pos.start.column + 1


def _dotted(node: cst.BaseExpression | None) -> str | None:
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr.value}"
    return None


class _ImportSurvey(cst.CSTVisitor):
    """Does the module import duroxide_macros, does it star-import from it, and its simple aliases."""

    def __init__(self) -> None:
        self.imports_ours = False
        self.star_ours = False
        #: ``now = datetime.now``: the target ``Name`` node and the aliased expression.
        self.aliases: dict[cst.Name, cst.BaseExpression] = {}
        #: Targets of annotations without a value (``ctx: OrchestrationContext``): libcst counts
        #: them as assignments, but they bind nothing at run time.
        self.declarations: set[cst.Name] = set()
        #: Names bound by ``match`` patterns (``case [c, *rest]``, ``case str() as c``), by name:
        #: libcst's scopes do not record them as assignments.
        self.captures: dict[str, list[cst.Name]] = {}

    def _capture(self, name: cst.Name | None) -> None:
        if name is not None:
            self.captures.setdefault(name.value, []).append(name)

    def visit_MatchAs(self, node: cst.MatchAs) -> None:
        self._capture(node.name)

    def visit_MatchStar(self, node: cst.MatchStar) -> None:
        self._capture(node.name)

    def visit_MatchMapping(self, node: cst.MatchMapping) -> None:
        self._capture(node.rest)

    def visit_Assign(self, node: cst.Assign) -> None:
        if len(node.targets) == 1 and isinstance(node.targets[0].target, cst.Name) \
                and isinstance(node.value, (cst.Name, cst.Attribute)):
            self.aliases[node.targets[0].target] = node.value

    def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
        if isinstance(node.target, cst.Name):
            if node.value is None:
                self.declarations.add(node.target)
            elif isinstance(node.value, (cst.Name, cst.Attribute)):  # `now: Clock = datetime.now` is an alias too
                self.aliases[node.target] = node.value

    def visit_Import(self, node: cst.Import) -> None:
        for alias in node.names:
            name = _dotted(alias.name)
            if name and (name == OWN_PACKAGE or name.startswith(OWN_PACKAGE + ".")):
                self.imports_ours = True

    def visit_ImportFrom(self, node: cst.ImportFrom) -> None:
        if node.relative:
            return
        name = _dotted(node.module)
        if name and (name == OWN_PACKAGE or name.startswith(OWN_PACKAGE + ".")):
            self.imports_ours = True
            if isinstance(node.names, cst.ImportStar):
                self.star_ours = True


def imports_duroxide_macros(module: cst.Module) -> bool:
    """Whether ``module`` has an ``import``/``from ... import`` of duroxide_macros anywhere."""
    survey = _ImportSurvey()
    module.visit(survey)
    return survey.imports_ours


@dataclass
class _Frame:
    facts: FunctionFacts | None  # None for a lambda or a class body
    is_class: bool = False


def _is_context_annotation(param: cst.Param) -> bool:
    if param.annotation is None:
        return False
    ann = param.annotation.annotation
    if isinstance(ann, cst.SimpleString):
        # the same spellings as unquoted, `"duroxide_runtime.OrchestrationContext"` included
        value = ann.evaluated_value
        return isinstance(value, str) and value.strip().rsplit(".", 1)[-1] == "OrchestrationContext"
    name = _dotted(ann)
    return name is not None and name.rsplit(".", 1)[-1] == "OrchestrationContext"


class _Analyzer(cst.CSTVisitor):
    METADATA_DEPENDENCIES = (ScopeProvider, QualifiedNameProvider)

    def __init__(self, facts: ModuleFacts, survey: _ImportSurvey,
                 resolve: Callable[[str], str | None] | None = None) -> None:
        super().__init__()
        self.facts = facts
        self.resolve_import = resolve  # not `resolve`: the visitor has a method of that name
        self.star_ours = survey.star_ours
        self.aliases = survey.aliases
        self.declarations = survey.declarations
        self.captures = survey.captures
        self.frames: list[_Frame] = []
        self._pending: dict[cst.FunctionDef, FunctionFacts] = {}

    # -- what a name is bound to ---------------------------------------------------

    def _qualified(self, node: cst.CSTNode) -> set[QualifiedName]:
        try:
            return set(self.get_metadata(QualifiedNameProvider, node, set()))
        except KeyError:
            return set()

    def ours(self, node: cst.BaseExpression, follow: bool = True) -> str | None:
        """The public duroxide_macros name ``node`` is bound to, if it is bound to one.

        ``follow``: also follow an import from a module of the project (which reads that module).
        """
        qnames = self._qualified(node)
        if qnames:
            if all(q.source is QualifiedNameSource.IMPORT and q.name.split(".")[0] == OWN_PACKAGE for q in qnames):
                lasts = {q.name.rsplit(".", 1)[-1] for q in qnames}
                if len(lasts) == 1:
                    return lasts.pop()
            if follow and self.resolve_import is not None and len(qnames) == 1:
                # imported from a module of the user's own project, which may re-export the form
                # (`from app.dx import durable`, app/dx.py importing it from duroxide_macros)
                (q,) = qnames
                if q.source is QualifiedNameSource.IMPORT:
                    return self.resolve_import(q.name)
            return None
        if isinstance(node, cst.Name) and self.star_ours and self._unbound(node):
            return node.value
        return None

    def _unbound(self, node: cst.Name) -> bool:
        scope = self.get_metadata(ScopeProvider, node, None)
        return scope is None or not any(True for _ in scope[node.value])

    def resolve_call_target(self, func: cst.BaseExpression, depth: int = 0) -> tuple[frozenset[str], bool]:
        """Qualified names (imports and builtins) a call of ``func`` may reach, through simple aliases."""
        qnames = self._qualified(func)
        out: set[str] = set()
        builtin = False
        for q in qnames:
            if q.source is QualifiedNameSource.IMPORT:
                out.add(q.name)
            elif q.source is QualifiedNameSource.BUILTIN:
                out.add(q.name)
                builtin = True
        if not out and isinstance(func, cst.Name) and depth < 3:
            for value in self._alias_values(func):
                names, _ = self.resolve_call_target(value, depth + 1)
                out |= names
        return frozenset(out), builtin and len(out) == sum(1 for q in qnames if q.source is QualifiedNameSource.BUILTIN)

    def _alias_values(self, name: cst.Name) -> list[cst.BaseExpression]:
        """For ``now = datetime.now`` the expression ``datetime.now``; nothing unless every binding is such."""
        scope = self.get_metadata(ScopeProvider, name, None)
        if scope is None:
            return []
        values: list[cst.BaseExpression] = []
        for assignment in scope[name.value]:
            value = self.aliases.get(assignment.node) if isinstance(assignment, Assignment) else None  # type: ignore[call-overload]
            if value is None:
                return []
            values.append(value)
        return values

    def local_def(self, func: cst.BaseExpression) -> str | None:
        """The module-level def a bare name calls, if that is its only binding."""
        if not isinstance(func, cst.Name):
            return None
        scope = self.get_metadata(ScopeProvider, func, None)
        if scope is None:
            return None
        assignments = list(scope[func.value])
        if len(assignments) == 1:
            only = assignments[0]
            if (isinstance(only, Assignment) and isinstance(only.node, cst.FunctionDef)
                    and isinstance(only.scope, GlobalScope)):
                return only.node.name.value
        return None

    # -- scopes --------------------------------------------------------------------

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.frames.append(_Frame(None, is_class=True))

    def leave_ClassDef(self, original_node: cst.ClassDef) -> None:
        self.frames.pop()

    def visit_Lambda(self, node: cst.Lambda) -> None:
        self.frames.append(_Frame(None))

    def leave_Lambda(self, original_node: cst.Lambda) -> None:
        self.frames.pop()

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        kind = Kind.PLAIN
        for dec in node.decorators:
            target = dec.decorator.func if isinstance(dec.decorator, cst.Call) else dec.decorator
            bound = self.ours(target)
            if bound == "orchestration":
                kind = Kind.ORCHESTRATION
            elif bound == "activity" and kind is Kind.PLAIN:
                kind = Kind.ACTIVITY
        params = [*node.params.posonly_params, *node.params.params, *node.params.kwonly_params]
        positional = [*node.params.posonly_params, *node.params.params]
        context_param = None
        if kind is Kind.ORCHESTRATION:
            context_param = positional[0] if positional else None
        elif kind is Kind.PLAIN:
            context_param = next((p for p in params if _is_context_annotation(p)), None)
        facts = FunctionFacts(
            node=node, name=node.name.value, kind=kind,
            is_method=bool(self.frames) and self.frames[-1].is_class,
            top_level=not self.frames, is_async=node.asynchronous is not None, params=params,
            has_star_params=isinstance(node.params.star_arg, cst.Param) or node.params.star_kwarg is not None,
            context_param=context_param, sole_binding=self._sole_binding(node))
        self.facts.functions.append(facts)
        if facts.top_level:
            self.facts.top_level_defs[facts.name] = facts
        self._pending[node] = facts

    # Only the body runs as the function: its decorators, defaults and annotations are evaluated
    # where the def is (`@orchestration(version=read_version())` is not orchestration code).
    def visit_FunctionDef_body(self, node: cst.FunctionDef) -> None:
        self.frames.append(_Frame(self._pending.pop(node)))

    def leave_FunctionDef_body(self, node: cst.FunctionDef) -> None:
        self.frames.pop()

    def _sole_binding(self, node: cst.FunctionDef) -> bool:
        scope = self.get_metadata(ScopeProvider, node, None)
        return scope is None or len(list(scope[node.name.value])) <= 1


    # -- calls ---------------------------------------------------------------------

    def visit_Call(self, node: cst.Call) -> None:
        owner = self._context_owner()
        # A form matters only where a context is: elsewhere re-exports are not followed, so that
        # a big module without orchestrations reads no other module.
        bound = self.ours(node.func, follow=owner is not None)
        form = FORM_NAMES.get(bound) if bound is not None else None
        qnames, builtin = self.resolve_call_target(node.func)
        call = CallFacts(node=node, form=form, qualified_names=qnames,
                         local_def=self.local_def(node.func),
                         context=self._context_at(node, owner) if owner is not None else None,
                         orchestration_code=owner, builtin=builtin)
        self.facts.calls[node] = call
        for frame in reversed(self.frames):  # an activity's calls are its own, not its encloser's
            if frame.facts is not None:
                frame.facts.calls.append(call)
                if frame.facts.kind is Kind.ACTIVITY:
                    break

    def _context_owner(self) -> FunctionFacts | None:
        """The innermost function around here whose context is in scope (stops at activities)."""
        for frame in reversed(self.frames):
            if frame.facts is None:
                continue
            if frame.facts.kind is Kind.ACTIVITY:
                return None
            if frame.facts.context_param is not None:
                return frame.facts
        return None

    def _context_at(self, node: cst.Call, owner: FunctionFacts) -> ContextRef:
        assert owner.context_param is not None
        name = owner.context_param.name.value
        scope: Scope | None = self.get_metadata(ScopeProvider, node, None)
        bindings = list(scope[name]) if scope is not None else []
        others = [b for b in bindings if not (isinstance(b, Assignment) and (
            b.node is owner.context_param or b.node in self.declarations))]
        capture = self._capture_in_reach(name, scope, owner)
        if capture is not None:
            return ContextRef(name, owner.name, False, capture, "a match pattern capture")
        if len(bindings) >= 1 and not others:
            return ContextRef(name, owner.name, True)
        other = others[0] if others else None
        at = None
        by = "nothing (the name is unbound here)"
        if isinstance(other, Assignment):
            at = other.node
            if isinstance(other.scope, ComprehensionScope):
                by = "a comprehension variable"
            elif isinstance(other.node, cst.Param):
                by = "a parameter of a nested lambda or function"
            elif isinstance(other.node, (cst.FunctionDef, cst.ClassDef)):
                by = "a def or class of the same name"
            else:
                by = "an assignment"
        return ContextRef(name, owner.name, False, at, by)


    def _capture_in_reach(self, name: str, scope: Scope | None, owner: FunctionFacts) -> cst.Name | None:
        """A ``match`` capture of ``name`` in a scope between the form's and the orchestration's, if any."""
        captures = self.captures.get(name)
        if not captures or scope is None:
            return None
        owner_scope = self.get_metadata(ScopeProvider, owner.node.body, None)
        reach: list[Scope] = []
        current: Scope | None = scope
        while current is not None and current is not owner_scope and not isinstance(current, GlobalScope):
            if current is scope or not isinstance(current, ClassScope):  # class bodies do not enclose functions
                reach.append(current)
            current = current.parent
        if owner_scope is not None:
            reach.append(owner_scope)
        return next((c for c in captures if self.get_metadata(ScopeProvider, c, None) in reach), None)


def analyze(module: cst.Module, path: str, module_name: str | None = None,
            *, helpers_only: bool = False,
            resolve: Callable[[str], str | None] | None = None) -> tuple[ModuleFacts, MetadataWrapper]:
    """The facts of one parsed module (the wrapper keeps node identities for a later transform).

    A module that does not import duroxide_macros has no forms and no orchestrations, so it
    is analysed only when it is read for its helpers (``helpers_only``). ``resolve`` maps a
    name imported from elsewhere (``app.dx.durable``) to the public duroxide_macros name it is
    bound to there, if any.
    """
    survey = _ImportSurvey()
    module.visit(survey)
    wrapper = MetadataWrapper(module, unsafe_skip_copy=True)
    facts = ModuleFacts(path=path, module=module_name, imports_ours=survey.imports_ours, wrapper=wrapper,
                        star_ours=survey.star_ours)
    if survey.imports_ours or helpers_only:
        wrapper.visit(_Analyzer(facts, survey, resolve))
    return facts, wrapper


def global_binding(facts: ModuleFacts, name: str) -> str | None:
    """The qualified name the module-level ``name`` of ``facts`` is imported as, if that is its only binding.

    A name the module binds nowhere is ``duroxide_macros.<name>`` when the module star-imports
    from duroxide_macros (the form, if it is one).
    """
    scope = facts.wrapper.resolve(ScopeProvider).get(facts.wrapper.module)
    if not isinstance(scope, GlobalScope):
        return None
    bindings = list(scope[name])
    if not bindings:
        return f"{OWN_PACKAGE}.{name}" if facts.star_ours else None
    qnames = scope.get_qualified_names_for(name)
    if len(bindings) == 1 and len(qnames) == 1:
        (q,) = qnames
        if q.source is QualifiedNameSource.IMPORT:
            return q.name
    return None


def positional_inputs(fn: FunctionFacts) -> Sequence[cst.Param]:
    """An orchestration's parameters after its context."""
    return [p for p in fn.params if p is not fn.context_param]
