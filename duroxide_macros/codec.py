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

import enum
import sys
import types
import typing
from typing import Any, Generic, TypeVar

import orjson
import typing_extensions
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
        self._adapter: TypeAdapter[T] = TypeAdapter(_portable(annotation))

    def encode(self, value: T) -> str:
        """JSON text of ``value``, checked against the annotation first so a wrong value fails here.

        The check is strict (no "1" for an int): the call site is where a wrong type
        is a bug, and nothing has been stored yet.
        """
        try:
            checked = self._adapter.validate_python(value, strict=True)
        except ValidationError as exc:
            raise PayloadError(f"{self.what}: {type(value).__name__} value {_preview(value)} is not a "
                               f"{self._name()}: {exc.errors()[0]['msg']}",
                               fix=f"pass a value of type {self._name()}") from exc
        try:
            plain = self._adapter.dump_python(checked, mode="json")
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


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _portable(annotation: Any) -> Any:
    """``typing.TypedDict`` classes as ``typing_extensions.TypedDict`` (pydantic needs that before 3.12)."""
    if sys.version_info >= (3, 12):
        return annotation
    return _convert_typeddicts(annotation, {})


def _convert_typeddicts(tp: Any, seen: dict[Any, Any]) -> Any:
    if isinstance(tp, type) and typing.is_typeddict(tp) and type(tp).__module__ == "typing":
        if tp not in seen:
            hints = typing.get_type_hints(tp)
            fields = {name: _convert_typeddicts(hint, seen) for name, hint in hints.items()}
            make: Any = typing_extensions.TypedDict  # the functional form, with a computed name
            converted: Any = make(tp.__name__, fields, total=getattr(tp, "__total__", True))
            converted.__required_keys__ = getattr(tp, "__required_keys__", frozenset())
            converted.__optional_keys__ = getattr(tp, "__optional_keys__", frozenset())
            seen[tp] = converted
        return seen[tp]
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if not args or origin is None:
        return tp
    new_args = tuple(_convert_typeddicts(a, seen) for a in args)
    if new_args == args:
        return tp
    if origin is typing.Union or origin is types.UnionType:
        return typing.Union[new_args]
    if origin is typing.Annotated:
        return typing.Annotated[new_args]
    try:
        return tp.copy_with(new_args) if hasattr(tp, "copy_with") else origin[new_args]
    except TypeError:
        return tp
