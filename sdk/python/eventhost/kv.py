"""Key-value state: ``wasi:keyvalue`` buckets the manifest's ``[keyvalue]``
section grants::

    from eventhost import kv

    counts = kv.Bucket.open("counts")
    seen = counts.get_json("seen", 0)
    counts.put_json("seen", seen + 1)

Reads see this invocation's own writes. Writes are buffered by the host and
committed only if the handler returns normally, together with its emitted
events. If a key changed between this invocation's read and its commit, the
host runs the handler again with fresh state: handlers never retry a race.

Every error the host returns is deterministic (a grant, a key, a limit), so
each one raises Permanent, as in the Rust SDK; outages stop the invocation
before it sees them. The ``wasi:keyvalue`` bindings exist only in components
built with a ``[keyvalue]`` section; using a bucket without one is Permanent.
"""

from __future__ import annotations

import json
from typing import Any, Optional, Union

from componentize_py_types import Err

from . import Permanent, _to_json


# Imported now, while componentize-py builds the component: the generated
# modules cannot be imported later, inside the running component.
try:
    from wit_world.imports import atomics as _atomics
    from wit_world.imports import store as _store
except ImportError:  # built without [keyvalue]
    _atomics = _store = None


def _bindings() -> tuple[Any, Any]:
    if _store is None:
        raise Permanent(
            "key-value is not linked: add a [keyvalue] section to handler.toml "
            "and rebuild"
        )
    return _store, _atomics


class Bucket:
    """An open bucket."""

    def __init__(self, name: str, inner: Any) -> None:
        self.name = name
        self._inner = inner

    @classmethod
    def open(cls, name: str) -> "Bucket":
        """Opens a bucket the manifest grants; any other name is Permanent."""
        store, _ = _bindings()
        return cls(name, _call(name, store.open, name))

    def get(self, key: str) -> Optional[bytes]:
        """The raw value at ``key``, or None if there is none."""
        return _call(self.name, self._inner.get, key)

    def get_json(self, key: str, default: Any = None) -> Any:
        """The value at ``key`` parsed as JSON, or ``default`` if absent. A
        value that is not JSON is Permanent."""
        raw = self.get(key)
        if raw is None:
            return default
        try:
            return json.loads(raw)
        except ValueError as e:
            raise Permanent(f"{self.name}/{key}: not the expected JSON: {e}") from None

    def put(self, key: str, value: Union[bytes, str]) -> None:
        """Stores raw bytes (a str is stored as UTF-8)."""
        if isinstance(value, str):
            value = value.encode()
        _call(self.name, self._inner.set, key, bytes(value))

    def put_json(self, key: str, value: Any) -> None:
        """Stores ``value`` as JSON."""
        self.put(key, _to_json(value))

    def delete(self, key: str) -> None:
        _call(self.name, self._inner.delete, key)

    def exists(self, key: str) -> bool:
        return _call(self.name, self._inner.exists, key)

    def increment(self, key: str, delta: int = 1) -> int:
        """Adds ``delta`` (>= 0) to the decimal number at ``key`` (0 when
        absent) and returns the new value."""
        _, atomics = _bindings()
        return _call(self.name, atomics.increment, self._inner, key, delta)

    def keys(self) -> list[str]:
        """Every key in the bucket, as this invocation sees it."""
        keys: list[str] = []
        cursor = None
        while True:
            page = _call(self.name, self._inner.list_keys, cursor)
            keys.extend(page.keys)
            if page.cursor is None:
                return keys
            cursor = page.cursor

    def __repr__(self) -> str:
        return f"Bucket({self.name!r})"


def _call(bucket: str, fn: Any, *args: Any) -> Any:
    """Calls a ``wasi:keyvalue`` function, raising its error as Permanent."""
    try:
        return fn(*args)
    except Err as e:
        message = getattr(e.value, "value", None)
        if message is None:  # no-such-store or access-denied
            message = "access denied (see the manifest's [keyvalue] grants)"
        raise Permanent(f"key-value bucket {bucket!r}: {message}") from None
