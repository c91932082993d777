"""The rewrite: ``durable(...)`` forms into explicit calls on the context in scope, with libcst.

Pure source-to-source, no imports executed: the import hook, ``duroxide-expand``
and the tests all call :func:`expand`.

What changes (and nothing else, so every line keeps its number):

==========================================  ==================================================
``durable(charge(order, total))``            ``(charge.call(ctx, order, total))``
``durable(charge(order), timeout=t)``        ``(charge.with_options(timeout=t).call(ctx, order))``
``durable_trace_info("x {}", a, k=v)``       ``ctx.trace_info("x {}", a, k=v)``
``durable_newguid()`` / ``durable_utcnow()``  ``ctx.new_guid()`` / ``ctx.utc_now()``
==========================================  ==================================================

``durable()``'s options are ``retry``, ``timeout`` and ``heartbeat_timeout``
(:data:`DURABLE_OPTIONS`); any other keyword is a problem, as are options on
the call of a function of the project known to be an ``@orchestration``.

A call is a form only if its function is *bound* to the ``duroxide_macros``
form (see :mod:`duroxide_macros.analysis`): aliases and ``dx.durable(...)``
are forms, and any other binding of the name shadows it. A module that does
not import ``duroxide_macros`` comes back unchanged, without problems.

``ctx`` is the context in scope: the first parameter of the enclosing
``@orchestration`` function, whatever its name, or a parameter annotated
``OrchestrationContext``. The outer parentheses of ``durable(...)`` stay, as
grouping parentheses, so a call spread over several lines stays valid and
keeps its line breaks.

Problems are collected as :class:`Problem` (``path:line:col: message (fix: ...)``):
forms without a context or whose context name is rebound where they are,
``durable()`` of something that is not a call of an activity or
orchestration, decorated methods, orchestrations that are not ``async def``
or take other than one input, and non-deterministic calls in orchestration
code and its helpers (:mod:`duroxide_macros.lint`).

Example::

    result = expand(source, "shop/flows.py", "shop.flows")
    if result.problems:
        print(*result.problems, sep="\\n")
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import libcst as cst

from .analysis import OWN_PACKAGE, CallFacts, Form, Kind, ModuleFacts, analyze, positional_inputs
from .lint import Project, lint
from .problems import Problem

__all__ = ["expand", "Problem", "Expansion", "DURABLE_OPTIONS"]

#: The keyword options of ``durable(call, ...)``: ``charge.with_options(...)``'s parameters.
DURABLE_OPTIONS = ("retry", "timeout", "heartbeat_timeout")
_OPTIONS_FIX = ("durable(charge(order), retry=RetryPolicy(max_attempts=3), timeout=timedelta(seconds=10), "
                "heartbeat_timeout=timedelta(seconds=30)), each optional")


@dataclass
class Expansion:
    """The rewritten source and what was found on the way."""

    code: str
    problems: list[Problem] = field(default_factory=list)
    rewrites: int = 0
    #: Other source files read (helpers of the same package): a cache of this expansion
    #: is stale when one of them changes.
    dependencies: tuple[str, ...] = ()


def _code(node: cst.CSTNode) -> str:
    return cst.Module([]).code_for_node(node)


class _Rewriter(cst.CSTTransformer):
    def __init__(self, facts: ModuleFacts, project: Project) -> None:
        super().__init__()
        self.facts = facts
        self.project = project
        self.problems: list[Problem] = []
        self.rewrites = 0

    def _problem(self, at: CallFacts, message: str) -> None:
        self.problems.append(Problem(self.facts.path, *self.facts.where(at.node), message))

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.BaseExpression:
        call = self.facts.calls.get(original_node)
        if call is None or call.form is None:
            return updated_node
        spelled = _code(original_node.func)
        ctx = call.context
        if ctx is None:
            if call.form.is_trace:
                return updated_node  # in activities and plain code the trace forms work at run time as they are
            if call.form is Form.DURABLE:
                self._problem(call, f"{spelled}() has no OrchestrationContext in scope (fix: use it inside an "
                                    "@orchestration function, or a function with a parameter annotated "
                                    "OrchestrationContext)")
            else:
                self._problem(call, f"{spelled}() needs an orchestration context in scope "
                                    "(fix: use it inside an @orchestration function)")
            return updated_node
        if not ctx.bound_here:
            where = f" on line {self.facts.where(ctx.rebound_at)[0]}" if ctx.rebound_at is not None else ""
            self._problem(call, f"{spelled}() would pass `{ctx.name}`, the context of orchestration "
                                f"`{ctx.owner}`, but `{ctx.name}` here is {ctx.rebound_by}{where} "
                                f"(fix: rename that variable so `{ctx.name}` means the context)")
            return updated_node
        if call.form is not Form.DURABLE:
            self.rewrites += 1
            func = updated_node.func  # its parentheses stay: `(\n    durable_trace_info\n)(...)` keeps its lines
            return updated_node.with_changes(func=cst.Attribute(cst.Name(ctx.name), cst.Name(call.form.value),
                                                                lpar=func.lpar, rpar=func.rpar))
        return self._durable(call, spelled, original_node, updated_node, ctx.name)

    def _durable(self, call: CallFacts, spelled: str, original: cst.Call, updated: cst.Call,
                 ctx: str) -> cst.BaseExpression:
        first = updated.args[0] if updated.args else None
        if (first is None or first.keyword is not None or first.star
                or any(a.keyword is None and not a.star for a in updated.args[1:])):
            self._problem(call, f"{spelled}() takes exactly one call (fix: {spelled}(charge_payment(order)))")
            return updated
        options = list(updated.args[1:])
        for option in options:
            if option.star or option.keyword is None:
                self._problem(call, f"{spelled}() takes its options by name, not as "
                                    f"`{option.star}{_code(option.value)}` (fix: write them out: {_OPTIONS_FIX})")
                return updated
            if option.keyword.value not in DURABLE_OPTIONS:
                self._problem(call, f"{spelled}() has no option `{option.keyword.value}=` (fix: {_OPTIONS_FIX})")
                return updated
        inner_original = original.args[0].value
        inner = first.value
        if not isinstance(inner_original, cst.Call) or not isinstance(inner, cst.Call):
            self._problem(call, f"{spelled}() needs a call of an activity or orchestration, got "
                                f"`{_code(inner_original)}` (fix: {spelled}(my_activity(arg)))")
            return updated
        target = self.facts.calls[inner_original]
        why_not = self._not_durable(target)
        if why_not is None and options:
            why_not = self._not_an_activity(target, [o.keyword.value for o in options if o.keyword is not None])
        if why_not is not None:
            self._problem(call, f"{spelled}({_code(inner_original.func)}(...)): {why_not}")
            return updated
        self.rewrites += 1
        ctx_arg = cst.Arg(cst.Name(ctx), comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
                          if inner.args else cst.MaybeSentinel.DEFAULT)
        # The whitespace around `durable` (parenthesized as `(durable)` too) to its `(`, line breaks kept.
        func = updated.func
        opening: cst.BaseParenthesizableWhitespace = cst.SimpleWhitespace("")
        for space in [*(p.whitespace_after for p in func.lpar), *(p.whitespace_before for p in func.rpar),
                      updated.whitespace_after_func, updated.whitespace_before_args]:
            opening = _joined(opening, space)
        if options:
            # `durable(f(x), retry=r)` -> `(f.with_options(retry=r).call(ctx, x))`: the options keep
            # their own whitespace (and a trailing comma) inside `with_options(...)`, and the comma
            # after the call gives its whitespace to that `(`, so every line break stays.
            comma = first.comma
            assert isinstance(comma, cst.Comma)  # more arguments follow the call
            before_options = _joined(_joined(comma.whitespace_before, comma.whitespace_after),
                                     first.whitespace_after_arg)
            if isinstance(before_options, cst.SimpleWhitespace):
                before_options = cst.SimpleWhitespace("")  # no line break to keep: `with_options(retry=...)`
            called: cst.BaseExpression = cst.Attribute(
                cst.Call(cst.Attribute(inner.func, cst.Name("with_options")), options,
                         whitespace_before_args=before_options),
                cst.Name("call"))
            after_arg: cst.BaseParenthesizableWhitespace = cst.SimpleWhitespace("")
        else:
            called = cst.Attribute(inner.func, cst.Name("call"))
            after_arg = first.whitespace_after_arg
            if isinstance(first.comma, cst.Comma):
                # A trailing comma (`durable(\n    f(x),\n)`, as black writes it) goes, but its
                # whitespace stays: it may hold a line break, and every line keeps its number.
                after_arg = _joined(_joined(first.comma.whitespace_before, first.comma.whitespace_after),
                                    after_arg)
        return inner.with_changes(
            func=called,
            args=[ctx_arg, *inner.args],
            # The form's own parentheses (`x = (\n    durable(f(x))\n)`) stay too, for the same reason.
            lpar=[*updated.lpar,
                  cst.LeftParen(whitespace_after=opening),
                  *inner.lpar],
            rpar=[*inner.rpar, cst.RightParen(whitespace_before=after_arg), *updated.rpar],
        )

    def _not_an_activity(self, target: CallFacts, options: list[str]) -> str | None:
        """Why ``durable(f(x), retry=...)`` cannot take options (None: ``f`` may be an activity)."""
        found = self.project.lookup(self.facts, target)
        if found is not None and found[1].kind is Kind.ORCHESTRATION:
            given = ", ".join(f"{o}=" for o in options)
            return (f"{found[1].name!r} is an @orchestration, and {given} {'is' if len(options) == 1 else 'are'} "
                    "for activities only "
                    "(fix: set the policy on the activities it calls, e.g. @activity(retry=3), and drop it here)")
        return None

    def _not_durable(self, target: CallFacts) -> str | None:
        """Why the call inside ``durable()`` cannot be an activity or orchestration (None: it may be one)."""
        name = _code(target.node.func)
        if target.form is not None:
            return (f"`{name}` is itself a duroxide form, not an activity or orchestration "
                    "(fix: wrap the call of the activity once: durable(charge(order)))")
        if target.builtin:
            return f"`{name}` is a builtin, not an @activity or @orchestration (fix: call it directly)"
        for qualified in sorted(target.qualified_names):
            top = qualified.split(".")[0]
            if top in sys.stdlib_module_names:
                advice = ("await asyncio.sleep(...) directly: it is a durable timer in an orchestration"
                          if qualified == "asyncio.sleep" else "call it directly, or wrap it in an @activity")
                return f"`{qualified}` is a standard-library function, not an @activity or @orchestration (fix: {advice})"
        found = self.project.lookup(self.facts, target)
        if found is not None:
            _, fn = found
            # A decorator that is not ours (`@shop_activity`, wrapping `activity(...)`) or a later
            # rebinding (`charge = activity(charge)`) may well make it one: only a bare def is plain.
            if fn.kind is Kind.PLAIN and not fn.node.decorators and fn.sole_binding:
                return (f"{fn.name!r} is not an @activity or @orchestration "
                        "(fix: decorate it, or call it directly)")
        return None


def _joined(first: cst.BaseParenthesizableWhitespace,
            second: cst.BaseParenthesizableWhitespace) -> cst.BaseParenthesizableWhitespace:
    """Two runs of whitespace as one, line breaks and comments kept (``durable \\`` + ``(``).

    The whitespace between ``durable`` and its ``(`` moves inside the grouping paren
    that replaces them, so every line keeps its number.
    """
    if isinstance(first, cst.SimpleWhitespace):
        if not first.value:
            return second
        if isinstance(second, cst.SimpleWhitespace):
            return cst.SimpleWhitespace(first.value + second.value)
        assert isinstance(second, cst.ParenthesizedWhitespace)
        line = second.first_line
        return second.with_changes(first_line=line.with_changes(
            whitespace=cst.SimpleWhitespace(first.value + line.whitespace.value)))
    assert isinstance(first, cst.ParenthesizedWhitespace)
    if isinstance(second, cst.SimpleWhitespace):
        return first.with_changes(last_line=cst.SimpleWhitespace(first.last_line.value + second.value))
    assert isinstance(second, cst.ParenthesizedWhitespace)
    middle = cst.EmptyLine(indent=first.indent,
                           whitespace=cst.SimpleWhitespace(first.last_line.value + second.first_line.whitespace.value),
                           comment=second.first_line.comment, newline=second.first_line.newline)
    return first.with_changes(empty_lines=[*first.empty_lines, middle, *second.empty_lines],
                              indent=second.indent, last_line=second.last_line)


def _signature_problems(facts: ModuleFacts) -> list[Problem]:
    problems: list[Problem] = []
    for fn in facts.functions:
        if fn.kind is Kind.PLAIN:
            continue
        deco = f"@{fn.kind.value}"
        if fn.is_method:
            problems.append(Problem(facts.path, *facts.where(fn.node),
                                    f"{deco} {fn.name!r} is defined as a method; the runtime calls it without an "
                                    "instance (fix: define it at module level, outside the class)"))
        if fn.kind is not Kind.ORCHESTRATION or fn.is_method:
            continue
        if not fn.is_async:
            problems.append(Problem(facts.path, *facts.where(fn.node),
                                    "@orchestration functions must be `async def` "
                                    f"(fix: write `async def {fn.name}(ctx, ...)`)"))
        if fn.context_param is None:
            problems.append(Problem(facts.path, *facts.where(fn.node),
                                    f"orchestration {fn.name!r} has no context parameter "
                                    "(fix: make the first parameter `ctx: OrchestrationContext`)"))
        elif len(positional_inputs(fn)) > 1 or fn.has_star_params:
            problems.append(Problem(facts.path, *facts.where(fn.node),
                                    f"orchestration {fn.name!r} takes more than one input parameter; an "
                                    "orchestration gets one input (fix: pass one dataclass, TypedDict or "
                                    "pydantic model that holds them all)"))
        elif any(p in fn.node.params.kwonly_params for p in positional_inputs(fn)):
            # the runtime passes the input positionally: a keyword-only input fails every instance
            problems.append(Problem(facts.path, *facts.where(fn.node),
                                    f"orchestration {fn.name!r} takes its input as a keyword-only parameter, but "
                                    "the runtime passes it positionally (fix: remove the `*`: "
                                    f"`async def {fn.name}(ctx, input)`)"))
    return problems


def _parse(source: str, path: str) -> cst.Module | Problem:
    try:
        return cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        try:  # Python's own message and position are the familiar ones (libcst's tokenizer gives none)
            compile(source, path, "exec", dont_inherit=True)
        except SyntaxError as py_exc:
            return Problem(path, py_exc.lineno or 1, py_exc.offset or 1, f"syntax error: {py_exc.msg}")
        # Python compiles it: not a syntax error, a limit of libcst's parser (some 4000 string
        # literals in a row, say), which the message must not blame on the user's syntax.
        return Problem(path, exc.editor_line, exc.editor_column,
                       f"libcst, which the rewrite parses with, cannot parse this valid code: {exc.message} "
                       "(fix: split the construct here, e.g. a very long run of string literals)")


def expand(source: str, path: str = "<string>", module: str | None = None) -> Expansion:
    """Rewrite the forms in ``source`` (the module ``module``, at ``path``); problems are returned, not raised."""
    if OWN_PACKAGE not in source:
        return Expansion(source)  # cannot import duroxide_macros: not ours, the identity
    try:
        return _expand(source, path, module)
    except RecursionError:
        # libcst's visitors recurse once per level of nesting, and Python compiles deeper code
        # (`a + b + ...` of 400 terms, 400 `elif`s) than the default limit lets them visit.
        try:
            return _with_deep_stack(lambda: _expand(source, path, module))
        except (RecursionError, RuntimeError, MemoryError):  # still too deep, or no thread to be had
            return Expansion(source, [Problem(path, 1, 1, "the module is nested too deeply for the rewrite to "
                                                          "read it (fix: split its longest expression or "
                                                          "`elif` chain)")])


def _expand(source: str, path: str, module: str | None) -> Expansion:
    parsed = _parse(source, path)
    if isinstance(parsed, Problem):
        return Expansion(source, [parsed])
    project = Project(path, module)
    facts, wrapper = analyze(parsed, path, module, resolve=project.form_name)
    if not facts.imports_ours:
        return Expansion(source)
    rewriter = _Rewriter(facts, project)
    new_module = wrapper.visit(rewriter)
    problems = sorted({*_signature_problems(facts), *rewriter.problems, *lint(facts, project)})
    return Expansion(new_module.code, problems, rewriter.rewrites, tuple(sorted(project.dependencies)))


def _with_deep_stack(run: Callable[[], Expansion]) -> Expansion:
    """``run()`` in a thread with a large stack and recursion limit (both process-wide, so restored)."""
    import threading

    outcome: list[Expansion | BaseException] = []

    def target() -> None:
        try:
            outcome.append(run())
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)

    old_limit, old_size = sys.getrecursionlimit(), threading.stack_size()
    sys.setrecursionlimit(max(old_limit, 60_000))
    try:
        threading.stack_size(256 << 20)  # address space only: pages are used as the recursion needs them
        try:
            worker = threading.Thread(target=target, name="duroxide-expand")
            worker.start()
        finally:
            threading.stack_size(old_size)
        worker.join()
    finally:
        sys.setrecursionlimit(old_limit)
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result
