"""Why a ``durable(...)`` reached run time unexpanded: the real cause, told from the calling module.

``durable(...)`` only works rewritten. When it runs as itself, the calling
frame's globals (``__name__``, ``__file__``, ``__spec__.loader``) and the import
hook's state say which of these happened:

* the hook is not installed at all;
* the module was rewritten, so the call went through another name
  (``d = durable; d(...)``, ``getattr``, ``functools.partial``);
* the module is not the hook's: it does not import from ``duroxide_macros``
  (it got ``durable`` from another module), or it belongs to an installed
  distribution that is not declared as using duroxide;
* the module was imported before the hook was installed;
* the code does not come from a file (the REPL, ``python -c``, ``exec``).
"""

from __future__ import annotations

import os
import sys
import types

__all__ = ["not_expanded_cause", "was_rewritten"]

_EXPLICIT = "or call the explicit form: `await fn.call(ctx, args...)`"


def was_rewritten(frame: types.FrameType | None) -> bool:
    """Did the hook rewrite the module whose code runs in ``frame``?"""
    from . import hook

    g = frame.f_globals if frame is not None else {}
    return bool(g.get("__duroxide_expanded__")) or isinstance(getattr(g.get("__spec__"), "loader", None),
                                                              hook.DurableLoader)


def not_expanded_cause(frame: types.FrameType | None) -> tuple[str, str]:
    """(cause, fix) for a ``durable(...)`` called unexpanded from ``frame``."""
    from . import hook, ownership

    if not hook.installed():
        return ("the duroxide import hook is not installed",
                "make `import duroxide_macros.install` the first line of your program's main script "
                f"(the pytest plugin installs it for tests), {_EXPLICIT}")
    g = frame.f_globals if frame is not None else {}
    name = str(g.get("__name__", "?"))
    loader = getattr(g.get("__spec__"), "loader", None)
    if was_rewritten(frame):
        return (f"module {name!r} was rewritten, but this call was not written `durable(...)`: durable was "
                "called through another name (a variable, getattr, functools.partial...), which the hook "
                "cannot follow",
                "call it as `durable(...)` by a name imported from duroxide_macros "
                "(`from duroxide_macros import durable as d` works)")
    path = g.get("__file__")
    if not isinstance(path, str) or not path.endswith(".py"):
        return (f"the code of {name!r} does not come from a .py file the hook can read (the REPL, "
                "`python -c`, exec, a notebook, a zip)", f"move it into a module, {_EXPLICIT}")
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError:
        source = b""
    if not ownership.imports_duroxide_macros(source):
        return (f"module {name!r} is not rewritten because it does not import from duroxide_macros "
                "(it got `durable` through another module); the hook only claims modules that do",
                f"import the forms in {os.path.basename(path)} itself: `from duroxide_macros.prelude import *` "
                "(or `from duroxide_macros import durable`)")
    if name == "__main__":
        return ("the main script is rewritten only when its top level imports duroxide_macros.install",
                "make `import duroxide_macros.install` the first line of the script")
    if not ownership.may_read(name, path):
        return (f"module {name!r} belongs to an installed distribution that neither declares a `duroxide` "
                "entry point nor requires duroxide, so the hook leaves it alone",
                "declare one in its pyproject.toml ([project.entry-points.duroxide]) or add duroxide to its "
                "dependencies")
    fix = (f"move `import duroxide_macros.install` above the import of {name!r} "
           "(make it the first line of the main script)")
    if hook.imported_before_install(name):
        return f"module {name!r} was imported before the import hook was installed", fix
    return (f"module {name!r} was loaded without the import hook (by {type(loader).__name__}): it was imported "
            "before the hook was installed, or through another import system", fix)
