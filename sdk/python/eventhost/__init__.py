"""Write eventhost event handlers in Python.

A handler is a function from one CloudEvent to ``None``, built into a
WebAssembly component with componentize-py (``eventhost_build.py``). The host
owns everything around it (acking, retries, dead letters, deduplication,
limits), so the function holds only business logic::

    from eventhost import Event, Permanent, emit, handler

    @handler
    def handle(event: Event) -> None:
        order = event.json()              # bad data is a Permanent error
        if order["total"] <= 0:
            raise Permanent("nothing to charge")
        emit("payments.completed", "com.example.payment.completed",
             {"order_id": order["order_id"]}, subject=order["order_id"])

How a call ends decides what happens to the event:

- it returns: the host publishes what was emitted and commits state writes;
- ``raise Retryable(msg)``: nothing is published, the event is retried;
- ``raise Permanent(msg)``: nothing is published, the event is dead-lettered;
- any other exception: the call traps (the traceback goes to stderr, which
  the host attaches to the failure and the dead letter); traps are retried.

This package is a thin layer over the bindings componentize-py generates
from ``wit/handler.wit`` (the ``wit_world`` module), so it only imports
inside a component build. The capabilities a manifest grants are in
``eventhost.kv`` (``[keyvalue]``), ``eventhost.events`` (``[eventstore]``) and
``eventhost.http`` (``[http]``).
"""

from __future__ import annotations

import json as _json
import sys
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import wit_world
from componentize_py_types import Err
from wit_world.imports import config as _config
from wit_world.imports import emitter as _emitter

from . import log
from ._wit import types as _types

__all__ = [
    "Event", "Retryable", "Permanent", "handler", "emit", "outgoing",
    "config", "config_int", "config_float", "log", "kv", "events", "http",
]


class Retryable(Exception):
    """A transient failure: handling the same event later may succeed."""


class Permanent(Exception):
    """The event can never be handled: it goes to the dead-letter queue."""


class Event:
    """The CloudEvent being handled (``type`` is the CloudEvents type)."""

    def __init__(self, wit: _types.Event) -> None:
        self.id: str = wit.id
        self.source: str = wit.source
        self.specversion: str = wit.specversion
        self.type: str = wit.type
        self.subject: Optional[str] = wit.subject
        self.time: Optional[str] = wit.time
        self.datacontenttype: Optional[str] = wit.datacontenttype
        self.dataschema: Optional[str] = wit.dataschema
        self.extensions: dict[str, str] = dict(wit.extensions)
        self.data: Optional[bytes] = wit.data
        #: 1 the first time, 2 after one failure, ... (for logs, not logic).
        self.attempt: int = wit.attempt

    def extension(self, name: str) -> Optional[str]:
        """An extension attribute such as ``partitionkey``, or None."""
        return self.extensions.get(name)

    def text(self) -> str:
        """The data as UTF-8 text ("" when there is none)."""
        try:
            return (self.data or b"").decode("utf-8")
        except UnicodeDecodeError as e:
            raise Permanent(f"invalid event data: {e}") from None

    def json(self) -> Any:
        """The data parsed as JSON. Missing or malformed data is Permanent."""
        if self.data is None:
            raise Permanent("event has no data")
        try:
            return _json.loads(self.data)
        except ValueError as e:
            raise Permanent(f"invalid event data: {e}") from None

    def __repr__(self) -> str:
        return f"Event(id={self.id!r}, type={self.type!r}, source={self.source!r})"


def _to_json(value: Any) -> bytes:
    """Compact JSON bytes; a value JSON cannot represent is Permanent."""
    try:
        return _json.dumps(value, separators=(",", ":")).encode()
    except (TypeError, ValueError) as e:
        raise Permanent(f"cannot encode data as JSON: {e}") from None


def outgoing(
    destination: str,
    type: str,
    data: Any = None,
    *,
    subject: Optional[str] = None,
    id: Optional[str] = None,
    source: Optional[str] = None,
    extensions: Union[Mapping[str, str], Iterable[tuple[str, str]], None] = None,
    datacontenttype: Optional[str] = None,
    dataschema: Optional[str] = None,
) -> _types.OutgoingEvent:
    """An event for ``destination`` (a NATS subject), as ``emit`` takes it
    and ``events.append`` stores it.

    ``data`` may be bytes (``application/octet-stream``), str
    (``text/plain; charset=utf-8``) or anything JSON can encode, such as a
    dict or list (``application/json``); ``datacontenttype`` overrides the
    guess. ``id``, ``source`` and ``time`` are filled by the host when left
    out.
    """
    if data is None:
        body, guessed = None, None
    elif isinstance(data, (bytes, bytearray, memoryview)):
        body, guessed = bytes(data), "application/octet-stream"
    elif isinstance(data, str):
        body, guessed = data.encode(), "text/plain; charset=utf-8"
    else:
        body, guessed = _to_json(data), "application/json"
    if isinstance(extensions, Mapping):
        extensions = extensions.items()
    return _types.OutgoingEvent(
        destination=destination,
        type=type,
        id=id,
        source=source,
        subject=subject,
        time=None,
        datacontenttype=datacontenttype or guessed,
        dataschema=dataschema,
        extensions=[(str(k), str(v)) for k, v in (extensions or ())],
        data=body,
    )


def emit(
    destination: str,
    type: str,
    data: Any = None,
    *,
    subject: Optional[str] = None,
    id: Optional[str] = None,
    source: Optional[str] = None,
    extensions: Union[Mapping[str, str], Iterable[tuple[str, str]], None] = None,
    datacontenttype: Optional[str] = None,
    dataschema: Optional[str] = None,
) -> None:
    """Emits an event to ``destination``; the arguments are ``outgoing``'s.

    The event is published only if the handler returns normally. A refusal
    by the host (a destination the manifest's ``publish`` does not allow, an
    invalid event, too many events) raises Permanent: a retry would repeat it.
    """
    try:
        _emitter.emit(outgoing(
            destination, type, data, subject=subject, id=id, source=source,
            extensions=extensions, datacontenttype=datacontenttype,
            dataschema=dataschema,
        ))
    except Err as e:
        why = _EMIT_REFUSALS.get(e.value.__class__, "refused")
        raise Permanent(f"emit refused: {why}: {e.value.value}") from None


_EMIT_REFUSALS = {
    _types.EmitError_DestinationNotAllowed: "destination not allowed",
    _types.EmitError_InvalidEvent: "invalid event",
    _types.EmitError_LimitExceeded: "limit exceeded",
}


def config(key: str, default: Optional[str] = None) -> Optional[str]:
    """A value from the manifest's ``[config]`` table, or ``default``."""
    value = _config.get(key)
    return default if value is None else value


def _config_as(cast: Callable[[str], Any], key: str, default: Any) -> Any:
    raw = _config.get(key)
    if raw is None:
        return default
    try:
        return cast(raw)
    except ValueError as e:
        raise Permanent(f"config `{key}` = {raw!r}: {e}") from None


def config_int(key: str, default: Optional[int] = None) -> Optional[int]:
    """A config value as an int; one that does not parse is Permanent."""
    return _config_as(int, key, default)


def config_float(key: str, default: Optional[float] = None) -> Optional[float]:
    """A config value as a float; one that does not parse is Permanent."""
    return _config_as(float, key, default)


def handler(fn: Callable[[Event], None]) -> Callable[[Event], None]:
    """Makes ``fn`` the component's ``handle`` export.

    componentize-py looks for a ``WitWorld`` class in the app module, so this
    defines one there. Retryable and Permanent become the WIT handler-error;
    any other exception is left to propagate: componentize-py then prints its
    traceback to stderr and traps, and the host attaches that stderr to the
    failure. Use it once, in ``app.py``.
    """

    class WitWorld(wit_world.WitWorld):
        def handle(self, event: _types.Event) -> None:
            try:
                fn(Event(event))
            except Retryable as e:
                raise Err(_types.HandlerError_Retryable(str(e))) from None
            except Permanent as e:
                raise Err(_types.HandlerError_Permanent(str(e))) from None

    sys.modules[fn.__module__].WitWorld = WitWorld  # type: ignore[attr-defined]
    return fn


# The capability modules, imported here so that they load (and find their
# bindings, if the manifest grants them) while componentize-py builds the
# component: the running component cannot import generated modules.
from . import events, http, kv  # noqa: E402
