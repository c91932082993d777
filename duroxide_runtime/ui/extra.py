"""The ``ui`` extra: the web UI needs aiohttp and Jinja2, which a plain ``pip install duroxide`` leaves out.

Example::

    require_ui("duroxide ui")
    # ConfigurationError: duroxide ui needs the aiohttp package, which is not installed.
    # Fix: pip install 'duroxide[ui]'
"""

from __future__ import annotations

import importlib.util

from ..errors import ConfigurationError

__all__ = ["require_ui", "UI_MODULES"]

#: Import name -> distribution name of what the UI needs.
UI_MODULES = {"aiohttp": "aiohttp", "jinja2": "Jinja2"}


def require_ui(what: str) -> None:
    """Raise :class:`ConfigurationError` naming the ``ui`` extra unless aiohttp and Jinja2 import.

    Example::

        require_ui("duroxide_main(ui_port=8765)")
    """
    for module, package in UI_MODULES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # its parent package is missing
            found = False
        if not found:
            raise ConfigurationError(f"{what} needs the {package} package, which is not installed",
                                     fix="pip install 'duroxide[ui]'")
