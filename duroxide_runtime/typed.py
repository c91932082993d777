"""Typed values on the string API: a ``str`` travels as is, anything else as JSON.

The typed waits, state, updates and streams of :class:`OrchestrationContext` and
:class:`Client` share one rule, the one ``Orchestration.raise_event`` always
had: a ``str`` is the payload itself; any other value is encoded as JSON
(dataclasses, pydantic models, TypedDicts, enums, datetimes, ...). Decoding
into ``str`` gives the text back unchanged; into any other type it decodes the
JSON with :class:`~duroxide_runtime.codec.Codec`.

pydantic is imported on the first typed use only, so a program that never
passes a type does not load it.

Example::

    encode_payload(Progress(done=3, total=10), "state 'progress'")   # '{"done":3,"total":10}'
    encode_payload("plain text", "event 'note'")                     # 'plain text'
    decoder(Progress, "o-1", "state 'progress'", fix="...")('{"done":3,"total":10}')  # Progress(done=3, total=10)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from .errors import PayloadDecodeError, PayloadError
from .limits import MAX_NAME_CHARS, check_identifier

if TYPE_CHECKING:
    from .codec import Codec

__all__ = ["TypedEvent", "EventOf", "encode_payload", "decoder", "decode_payload"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


@dataclass(frozen=True)
class TypedEvent(Generic[T]):
    """An external event's name bound to the type of its data, so both ends are checked statically.

    Waiting with it decodes into the type; the typed helper raising it
    (``Orchestration.raise_event``) takes only data of that type, so a type checker
    reports a wrong one at the call site.

    Example::

        APPROVAL = TypedEvent("approval", Approval)

        approval = await ctx.wait_for_event(APPROVAL)                          # an Approval
        await process_order.raise_event(client, "o-1", APPROVAL, Approval(ok=True))
    """

    name: str
    data_type: type[T]

    def __post_init__(self) -> None:
        check_identifier(self.name, "event name", MAX_NAME_CHARS)


class EventOf(Protocol[T_co]):
    """A :class:`TypedEvent` as a wait reads it: only its name and type (covariant).

    ``TypedEvent`` itself is invariant, so that a raise is checked against its exact
    type; a wait only reads the type, and taking it covariantly lets mypy infer the
    awaited type in any context (``print(await ctx.wait_for_event(APPROVAL))``).
    """

    @property
    def name(self) -> str: ...

    @property
    def data_type(self) -> type[T_co]: ...

#: One codec per annotation (building one costs milliseconds; a loop of typed waits reuses it).
_CODECS: dict[Any, Codec[Any]] = {}


def encode_payload(value: object, what: str) -> str:
    """``value`` as stored: a ``str`` as is, anything else as JSON (:class:`PayloadError` naming ``what``)."""
    if isinstance(value, str):
        return value
    from .codec import encode_value

    return encode_value(value, what)


def _codec(annotation: Any) -> Codec[Any]:
    """The codec of ``annotation`` (a :class:`ConfigurationError` if it cannot be a JSON payload)."""
    from .codec import Codec

    try:
        cached = _CODECS.get(annotation)
    except TypeError:  # an unhashable annotation: not cached
        return Codec[Any](annotation, "the payload", root="data")
    if cached is None:
        cached = _CODECS[annotation] = Codec[Any](annotation, "the payload", root="data")
    return cached


def decoder(annotation: Any, instance_id: str, source: str, *, fix: str) -> Callable[[str], Any]:
    """A function decoding a stored payload into ``annotation``; its errors are :class:`PayloadDecodeError`.

    Built (and the annotation checked) now, so that a type that cannot be a JSON
    payload is a :class:`ConfigurationError` where the wait is written.
    ``source`` names the payload in errors (``"event 'approval'"``), ``fix`` says what to do.
    """
    if annotation is str:
        return _as_text
    codec = _codec(annotation)

    def decode(text: str) -> Any:
        try:
            return codec.decode(text)
        except PayloadError as err:
            problem = err.message.removeprefix(f"{codec.what}: ")
            raise PayloadDecodeError(instance_id, source, problem, fix=fix) from None

    return decode


def decode_payload(text: str, annotation: Any, instance_id: str, source: str, *, fix: str) -> Any:
    """``text`` decoded into ``annotation`` (see :func:`decoder`)."""
    return decoder(annotation, instance_id, source, fix=fix)(text)


def _as_text(text: str) -> str:
    return text
