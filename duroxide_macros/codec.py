"""Typed payloads: encode with orjson, decode into the annotated type with pydantic.

Why pydantic: its ``TypeAdapter`` already turns JSON into dataclasses,
pydantic models, TypedDicts, Enums, datetimes, UUIDs and nested
list/dict/tuple/Optional/Union, with precise errors. Writing our own type
walker would be a second, weaker copy of it.

Example::

    codec = Codec(list[Order])
    text = codec.encode([Order(id="1", total=2.0)])   # '[{"id":"1","total":2.0}]'
    assert codec.decode(text) == [Order(id="1", total=2.0)]
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Generic, TypeVar

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from duroxide_runtime.errors import PayloadError

__all__ = ["Codec", "encode_value"]

T = TypeVar("T")


def _default(value: Any) -> Any:
    # orjson handles dataclasses, datetime, UUID and Enum itself; the rest comes here.
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def encode_value(value: Any, what: str) -> str:
    """JSON text of ``value``; a value that cannot be encoded raises :class:`PayloadError`."""
    try:
        return orjson.dumps(value, default=_default, option=orjson.OPT_PASSTHROUGH_SUBCLASS
                            if isinstance(value, enum.Enum) else 0).decode()
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise PayloadError(f"{what}: cannot encode {type(value).__name__} as JSON ({exc})",
                           fix="pass dataclasses, pydantic models, TypedDicts, enums, datetimes, UUIDs, "
                               "or lists/dicts of them") from exc


class Codec(Generic[T]):
    """Encoder/decoder for one annotated type."""

    def __init__(self, annotation: Any, what: str = "payload") -> None:
        self.annotation = annotation
        self.what = what
        self._adapter: TypeAdapter[T] = TypeAdapter(annotation)

    def encode(self, value: T) -> str:
        """JSON text of ``value`` (checked against the annotation first, so bad values fail here)."""
        if dataclasses.is_dataclass(value) or isinstance(value, (BaseModel, enum.Enum)):
            return encode_value(value, self.what)
        try:
            plain = self._adapter.dump_python(value, mode="json")
        except Exception as exc:  # noqa: BLE001 - pydantic raises several kinds here
            raise PayloadError(f"{self.what}: cannot encode {type(value).__name__} as {self._name()} ({exc})",
                               fix=f"pass a value of type {self._name()}") from exc
        return encode_value(plain, self.what)

    def decode(self, text: str) -> T:
        """The value of type ``T`` in ``text``; a mismatch raises :class:`PayloadError` naming the field."""
        try:
            return self._adapter.validate_json(text)
        except ValidationError as exc:
            raise PayloadError(f"{self.what}: cannot decode {text[:120]!r} as {self._name()}: {exc}",
                               fix="send a payload of the declared type, or change the annotation") from exc

    def _name(self) -> str:
        return getattr(self.annotation, "__name__", None) or repr(self.annotation)
