"""Optional packages: one check that an extra is installed, one error that names it.

Example::

    require_extra("prometheus_client", "prometheus_client", "metrics", "duroxide_main(metrics=True)")
    # ConfigurationError: duroxide_main(metrics=True) needs the prometheus_client package, which is
    # not installed. Fix: pip install 'duroxide[metrics]'
"""

from __future__ import annotations

import importlib.util

from duroxide_runtime import ConfigurationError

__all__ = ["require_extra"]


def require_extra(module: str, package: str, extra: str, what: str) -> None:
    """Raise :class:`ConfigurationError` naming ``extra`` unless ``module`` can be imported."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:  # its parent package is missing
        found = False
    if not found:
        raise ConfigurationError(f"{what} needs the {package} package, which is not installed",
                                 fix=f"pip install 'duroxide[{extra}]'")
