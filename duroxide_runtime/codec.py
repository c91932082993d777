"""Typed payloads: encode with orjson, decode into the annotated type with pydantic.

Why pydantic: its ``TypeAdapter`` already turns JSON into dataclasses,
pydantic models, TypedDicts, Enums, datetimes, UUIDs and nested
list/dict/tuple/Optional/Union, with precise errors. Writing our own type
walker would be a second, weaker copy of it.

Errors speak duroxide, not pydantic: an annotation pydantic cannot handle is a
:class:`ConfigurationError` when the function is decorated, naming the
function and the parameter (or the return); a value that cannot be encoded
or decoded is a :class:`PayloadError` naming the field path of each culprit
(``order.items[2].price``), built from pydantic's error locations and the
parameter name. Pydantic's own text (its advice, its URLs) is never shown.

It lives in the runtime (the typed waits, state, updates and streams of
:class:`~duroxide_runtime.OrchestrationContext` and :class:`~duroxide_runtime.Client`
decode with it); ``duroxide_macros`` uses it through ``duroxide_runtime``. The
runtime imports it only when a type is given: pydantic is not loaded by programs
that use string payloads.

Example::

    codec = Codec(list[Order], "argument 'orders' of activity 'ship'", root="orders")
    text = codec.encode([Order(id="1", total=2.0)])   # '[{"id":"1","total":2.0}]'
    assert codec.decode(text) == [Order(id="1", total=2.0)]
    codec.encode([Order(id="1", total="2")])          # PayloadError: ... orders[0].total: Input should be ...
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

import orjson
import typing_extensions
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from .errors import ConfigurationError, PayloadError

__all__ = ["Codec", "encode_value"]

T = TypeVar("T")

_JSON_TYPES = ("dataclasses, pydantic models, TypedDicts, enums, datetimes, UUIDs, str/int/float/bool/None, "
               "or lists/dicts/tuples/Optionals of them")
_MAX_LISTED = 10  # problems listed in one message; the rest are counted


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


def _dumps(value: Any) -> str:
    option = orjson.OPT_PASSTHROUGH_SUBCLASS if isinstance(value, enum.Enum) else 0
    return orjson.dumps(value, default=_default, option=option).decode()


def encode_value(value: Any, what: str, root: str = "value") -> str:
    """JSON text of ``value``; a value that cannot be encoded raises :class:`PayloadError` naming its path.

    ``root`` is how the value is called in that path (``data['at']``).
    """
    try:
        text = _dumps(value)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise _unencodable(value, what, root, exc) from None
    _reject_non_finite(value, text, what, root)
    return text


class Codec(Generic[T]):
    """Encoder/decoder for one annotated type.

    ``what`` starts every error message (``argument 'order' of activity 'charge'``);
    ``root`` is the value's name in field paths (``order``); ``item_names`` name
    the elements of a tuple of arguments (so ``(1, 'id')`` reads ``b.id``);
    ``declared`` says where the annotation was written, for the decoration-time error.
    """

    def __init__(self, annotation: Any, what: str = "payload", *, root: str = "value",
                 item_names: Sequence[str] | None = None, declared: str | None = None) -> None:
        self.annotation = annotation
        self.what = what
        self.root = root
        self.item_names = list(item_names) if item_names is not None else None
        self._declared = declared or what
        try:
            self._adapter: TypeAdapter[T] = TypeAdapter(_portable(annotation))
        except Exception as exc:  # noqa: BLE001 - pydantic's schema errors have several classes
            raise _unsupported_annotation(annotation, self._declared, exc) from None

    def _ready(self) -> None:
        """Finish a schema pydantic deferred (a field's type named before it was defined), or say why not.

        Deferring keeps types that are defined later in the module working; the
        first payload is when the name must exist.
        """
        if self._adapter.pydantic_complete:
            return
        try:
            self._adapter.rebuild(raise_errors=True)
        except Exception as exc:  # noqa: BLE001 - PydanticUndefinedAnnotation, schema errors
            raise _unsupported_annotation(self.annotation, self._declared, exc) from None

    def encode(self, value: T) -> str:
        """JSON text of ``value``, checked against the annotation first so a wrong value fails here.

        The check is strict (no "1" for an int): the call site is where a wrong type
        is a bug, and nothing has been stored yet. Pydantic does not look inside
        dataclass and model instances again, so the JSON produced is checked too:
        what is stored is exactly what the receiving side can decode.
        """
        self._ready()
        try:
            checked = self._adapter.validate_python(value, strict=True)
        except ValidationError as exc:
            raise self._invalid(value, exc) from None
        try:
            plain = self._adapter.dump_python(checked, mode="json", warnings=False)
            text = _dumps(plain)
        except Exception as exc:  # noqa: BLE001 - pydantic and orjson raise several kinds here
            raise _unencodable(value, self.what, self.root, exc, self._name()) from None
        _reject_non_finite(value, text, self.what, self.root)
        try:
            self._adapter.validate_json(text, strict=True)
        except ValidationError as exc:
            raise self._invalid(value, exc) from None
        return text

    def decode(self, text: str) -> T:
        """The value of type ``T`` in ``text``; a mismatch raises :class:`PayloadError` naming each field."""
        self._ready()
        try:
            return self._adapter.validate_json(text)
        except ValidationError as exc:
            problems = "; ".join(self._problems(exc, None))
            raise PayloadError(f"{self.what}: cannot decode {text[:120]!r} as {self._name()}: {problems}",
                               fix="send a payload of the declared type, or change the annotation") from None

    def _invalid(self, value: Any, exc: ValidationError) -> PayloadError:
        problems = self._problems(exc, value)
        culprit = problems[0].split(": ", 1)[0]  # the deepest path
        return PayloadError(f"{self.what}: {'; '.join(problems)}",
                            fix=f"pass a value of type {self._name()} (fix {culprit})")

    def _problems(self, exc: ValidationError, value: Any) -> list[str]:
        """``path: what is wrong`` for each error, the most specific (deepest) first."""
        errors = sorted(exc.errors(include_url=False), key=lambda e: -len(e["loc"]))
        out: list[str] = []
        for err in errors:
            path, leaf = self._path(err["loc"], value, missing=err["type"] == "missing")
            text = f"{path}: {err['msg']}"
            if err["type"] != "missing" and err["type"] != "json_invalid":
                # The caller's own value where we could follow it (a NaN float, not the JSON null it became).
                got = err["input"] if leaf is _UNKNOWN else leaf
                text += f", got {type(got).__name__} {_preview(got)}"
            if text not in out:
                out.append(text)
        if len(out) > _MAX_LISTED:
            out = out[:_MAX_LISTED] + [f"and {len(out) - _MAX_LISTED} more"]
        return out

    def _path(self, loc: tuple[int | str, ...], value: Any, *, missing: bool) -> tuple[str, Any]:
        root = self.root
        if self.item_names is not None and loc and isinstance(loc[0], int) and loc[0] < len(self.item_names):
            # A tuple of arguments: its first step is a parameter, which names the path.
            if isinstance(value, (list, tuple)) and loc[0] < len(value):
                value = value[loc[0]]
            root, loc = self.item_names[loc[0]], loc[1:]
        return _render_path(root, loc, value, missing=missing)

    def _name(self) -> str:
        return _type_name(self.annotation)


# -- field paths ------------------------------------------------------------------------------

_UNKNOWN = object()


def _render_path(root: str, loc: Sequence[int | str], value: Any, *, missing: bool) -> tuple[str, Any]:
    """``root`` plus ``loc`` as Python would spell it (``order.items[2].price``, ``meta['note']``), and the
    value found there (``_UNKNOWN`` when it could not be followed).

    The value (when known) decides between attribute and key, and shows which
    segments are pydantic's union-member tags (``'int'``, ``'Item'``), which are
    dropped; without it, strings read as attributes and numbers as indexes.
    """
    parts = [root]
    current = value if value is not None else _UNKNOWN
    for i, seg in enumerate(loc):
        last = i == len(loc) - 1
        if seg == "[key]":
            parts.append(" (its key)")
            current = _UNKNOWN
            continue
        if current is _UNKNOWN:
            parts.append(f"[{seg}]" if isinstance(seg, int) else f".{seg}")
            continue
        if isinstance(current, Mapping):
            key = _find_key(current, seg)
            if key is not _UNKNOWN:
                parts.append(f"[{key!r}]")
                current = current[key]
            elif last and missing:
                parts.append(f"[{seg!r}]")
                current = _UNKNOWN
            continue  # otherwise: a union member's tag
        if isinstance(seg, int) and isinstance(current, (list, tuple, set, frozenset)):
            items = list(current)
            parts.append(f"[{seg}]")
            current = items[seg] if 0 <= seg < len(items) else _UNKNOWN
            continue
        if isinstance(seg, str) and _has_field(current, seg):
            parts.append(f".{seg}")
            current = getattr(current, seg, _UNKNOWN)
            continue
        if last and missing:
            parts.append(f".{seg}")
            current = _UNKNOWN
        # else: a union member's tag, not a step into the value
    return "".join(parts), current


def _find_key(mapping: Mapping[Any, Any], seg: int | str) -> Any:
    if seg in mapping:
        return seg
    for key in mapping:  # JSON turned the key into a string: 1 -> "1", UUID -> its text
        if isinstance(key, enum.Enum) and str(key.value) == str(seg):
            return key
        try:
            if str(key) == str(seg):
                return key
        except Exception:  # noqa: BLE001 - a key whose __str__ raises is not the one
            continue
    return _UNKNOWN


def _has_field(value: Any, name: str) -> bool:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return name in {f.name for f in dataclasses.fields(value)}
    if isinstance(value, BaseModel):
        return name in type(value).model_fields
    try:
        return hasattr(value, name)
    except Exception:  # noqa: BLE001 - a property may raise
        return False


def _children(value: Any) -> list[tuple[str, Any]]:
    """The parts of ``value`` a JSON encoding walks into, each with its path step."""
    if isinstance(value, BaseModel):
        return [(f".{name}", getattr(value, name, None)) for name in type(value).model_fields]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(f".{f.name}", getattr(value, f.name, None)) for f in dataclasses.fields(value)]
    if isinstance(value, Mapping):
        return [(f"[{key!r}]", item) for key, item in value.items()]
    if isinstance(value, (list, tuple)):
        return [(f"[{i}]", item) for i, item in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        return [(f"[{i}]", item) for i, item in enumerate(value)]
    return []


def _find_unencodable(value: Any, depth: int = 0) -> tuple[str, Any, str] | None:
    """``(path below value, culprit, reason)`` of the first part that JSON cannot take, or None."""
    children = _children(value)
    if children and depth < 100:
        for step, child in children:
            found = _find_unencodable(child, depth + 1)
            if found is not None:
                return step + found[0], found[1], found[2]
        return None
    try:
        orjson.dumps(to_jsonable_python(value))
    except Exception as exc:  # noqa: BLE001 - whatever makes this leaf unencodable
        return "", value, str(exc)
    return None


def _find_non_finite(value: Any, depth: int = 0) -> tuple[str, float] | None:
    """``(path below value, number)`` of the first NaN or infinite float inside ``value``, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else ("", value)
    if depth < 100:
        for step, child in _children(value):
            found = _find_non_finite(child, depth + 1)
            if found is not None:
                return step + found[0], found[1]
    return None


def _reject_non_finite(value: Any, text: str, what: str, root: str) -> None:
    """Refuse NaN and infinities: JSON has no such numbers and orjson would store them as null."""
    if "null" not in text:  # a non-finite float is encoded as null; no null, nothing to look for
        return
    found = _find_non_finite(value)
    if found is not None:
        path, number = found
        raise PayloadError(f"{what}: {root}{path} is {number!r}, which JSON cannot represent "
                           "(it would be stored as null)",
                           fix=f"pass a finite number in {root}{path} (check with math.isfinite), "
                               "or None where the type allows it")


def _unencodable(value: Any, what: str, root: str, exc: Exception, expected: str | None = None) -> PayloadError:
    found = _find_unencodable(value)
    if found is None:
        where = f"cannot encode {type(value).__name__}" + (f" as {expected}" if expected else "")
        return PayloadError(f"{what}: {where} ({exc})", fix=f"pass {_JSON_TYPES}")
    path, culprit, reason = found
    return PayloadError(f"{what}: {root}{path} holds {type(culprit).__name__} {_preview(culprit)}, "
                        f"which cannot be encoded as JSON ({reason})",
                        fix=f"put a JSON-friendly value in {root}{path}: {_JSON_TYPES}")


# -- annotations pydantic cannot handle ------------------------------------------------------------

_UNKNOWN_TYPE = re.compile(r"Unable to generate pydantic-core schema for (.+?)\. ")
_NOT_DEFINED = re.compile(r"`([^`]+)` is not fully defined")


def _unsupported_annotation(annotation: Any, declared: str, exc: Exception) -> ConfigurationError:
    text = str(exc)
    m = _UNKNOWN_TYPE.search(text)
    if m is not None:
        culprit = re.sub(r"^<class '(.+)'>$", r"\1", m.group(1))
        inside = "" if m.group(1) == repr(annotation) else f" (in {_type_name(annotation)})"
        return ConfigurationError(
            f"{declared}: type {culprit}{inside} cannot be a JSON payload",
            fix=f"annotate it with a type that maps to JSON ({_JSON_TYPES}), and pass the data a "
                f"{culprit.rsplit('.', 1)[-1]} is made from (an id, a path, a dataclass), not the object itself")
    missing = getattr(exc, "name", None) if isinstance(exc, NameError) else None
    if missing is None:
        m = _NOT_DEFINED.search(text)
        missing = m.group(1) if m is not None else None
    if missing is not None:
        return ConfigurationError(f"{declared}: type {missing} (in {_type_name(annotation)}) is not defined",
                                  fix=f"define or import {missing} in the module that uses it")
    return ConfigurationError(f"{declared}: its annotation {_type_name(annotation)} cannot be a JSON payload "
                              f"({type(exc).__name__})", fix=f"annotate it with {_JSON_TYPES}")


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__qualname__
    return repr(annotation).replace("typing.", "")


def _preview(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a raising __repr__ must not hide the real error
        text = f"<{type(value).__name__} object>"
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
