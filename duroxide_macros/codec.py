"""Typed payloads for the decorators: the runtime's :class:`~duroxide_runtime.Codec`.

The codec lives in the runtime (``duroxide_runtime/codec.py``), whose typed waits,
state, updates and streams decode with it too; this module keeps the macro
layer's import path.

Example::

    codec = Codec(list[Order], "argument 'orders' of activity 'ship'", root="orders")
    assert codec.decode(codec.encode([Order(id="1", total=2.0)])) == [Order(id="1", total=2.0)]
"""

from __future__ import annotations

from duroxide_runtime import Codec, encode_value

__all__ = ["Codec", "encode_value"]
