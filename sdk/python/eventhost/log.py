"""Logging into the host's structured logs.

Each line is tagged by the host with the handler's name and version and the
id of the event being handled::

    from eventhost import log
    log.info(f"charged {amount}")

(``print`` goes nowhere: the host discards a handler's stdout. Stderr is kept
only to explain a trap.)
"""

from wit_world.imports import logging as _logging
from ._wit import types

Level = types.Level


def trace(message: object) -> None:
    _logging.log(Level.TRACE, str(message))


def debug(message: object) -> None:
    _logging.log(Level.DEBUG, str(message))


def info(message: object) -> None:
    _logging.log(Level.INFO, str(message))


def warn(message: object) -> None:
    _logging.log(Level.WARN, str(message))


def error(message: object) -> None:
    _logging.log(Level.ERROR, str(message))


warning = warn
