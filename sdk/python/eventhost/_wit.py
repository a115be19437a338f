"""The generated ``eventhost:handler/types`` bindings.

componentize-py names an interface's module after the interface
(``wit_world.imports.types``) unless two imported packages both have one of
that name, as when ``wasi:http/types`` is linked too
(``eventhost_handler_types`` then).
"""

try:
    from wit_world.imports import eventhost_handler_types as types
except ImportError:
    from wit_world.imports import types  # type: ignore[no-redef]

__all__ = ["types"]
