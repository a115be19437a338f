"""The event store: an aggregate's events on one subject, read in order and
appended on condition that nobody appended since (granted by the manifest's
``[eventstore]`` section)::

    from eventhost import events, outgoing

    subject = "accounts.events.a1"
    history = events.read(subject)
    version = history[-1].sequence if history else 0
    events.append(version, [outgoing(subject, "com.example.account.opened", {"id": "a1"})])

Appends are buffered and committed with the invocation's other effects. If
another event reached the subject after ``expected`` was read, the host runs
the handler again with fresh state. Every refusal raises Permanent, and so
does any use in a component built without an ``[eventstore]`` section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from componentize_py_types import Err

from . import Event, Permanent

# Imported now, while componentize-py builds the component: the generated
# modules cannot be imported later, inside the running component.
try:
    from wit_world.imports import event_store as _event_store
except ImportError:  # built without [eventstore]
    _event_store = None

PAGE = 256  # events read per call to the host


@dataclass
class Stored:
    """An event as the stream holds it."""

    sequence: int  # what to expect when appending after it
    event: Event


def last_sequence(subject: str) -> int:
    """The sequence of the last event on ``subject``; 0 if it has none."""
    return _call(_bindings().last_sequence, subject)


def read(subject: str, after: int = 0) -> list[Stored]:
    """Every event on ``subject`` after sequence ``after`` (0: all)."""
    store = _bindings()
    stored: list[Stored] = []
    while True:
        page = _call(store.read, subject, after, PAGE)
        for item in page:
            after = item.sequence
            stored.append(Stored(item.sequence, Event(item.event)))
        if len(page) < PAGE:
            return stored


def append(expected: int, events: Iterable[Any]) -> None:
    """Appends ``events`` (built with ``eventhost.outgoing`` for one
    subject) if the subject's last sequence is still ``expected``."""
    _call(_bindings().append, expected, list(events))


def _bindings() -> Any:
    if _event_store is None:
        raise Permanent(
            "the event store is not linked: add an [eventstore] section to "
            "handler.toml and rebuild"
        )
    return _event_store


_KINDS = {"Error_AccessDenied": "access denied", "Error_Invalid": "invalid",
          "Error_LimitExceeded": "limit exceeded"}


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Err as e:
        why = _KINDS.get(e.value.__class__.__name__, "refused")
        raise Permanent(f"event store: {why}: {e.value.value}") from None
