"""JSON bytes of the stored records (history events, queue messages): one encoder for both.

A record is a dataclass; its stored form is a JSON object with a tag naming the
variant and one key per field, an :class:`~duroxide_runtime.errors.ErrorDetails`
field as its dict. Field names are computed once per class: encoding runs on
every store write.

Example::

    encode_record("type", "TimerFired", event)   # b'{"type":"TimerFired","event_id":3,...}'
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from .errors import ErrorDetails

__all__ = ["encode_record"]


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def encode_record(tag_key: str, tag: str, record: Any) -> bytes:
    """``record``'s fields as JSON bytes, with ``tag_key: tag`` first."""
    body: dict[str, Any] = {tag_key: tag}
    for name in _field_names(type(record)):
        value = getattr(record, name)
        body[name] = value.to_dict() if isinstance(value, ErrorDetails) else value
    return orjson.dumps(body)
