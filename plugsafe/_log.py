"""The built-in ``log`` host function's Python side: levels, escaping, the logger name.

``logging`` is imported when something is first logged, not at ``import plugsafe`` (issue 14,
cold start: with what it pulls in, ``traceback``, ``string``, ``textwrap``, it was the largest
standard-library import of a fresh process that never logs). Every plugin still gets its logger
at load: a :func:`lazy_logger`, which becomes the real ``logging.getLogger(name)`` on first use.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

from ._lazymodule import import_now
from ._lazyre import lazy_re

if TYPE_CHECKING:
    import logging

__all__ = ["LEVELS", "escape", "lazy_logger", "logger_for"]

# ABI levels 0..4 (trace, debug, info, warn, error) to Python logging levels: logging.DEBUG,
# DEBUG, INFO, WARNING, ERROR (the values logging documents; tests/test_import_cost.py checks).
LEVELS: tuple[int, ...] = (10, 10, 20, 30, 40)

# C0 and C1 controls, DEL, and the Unicode line/paragraph separators: anything a log viewer might
# treat as a new line or a terminal as a command. Escaped so one message is always one line and a
# plugin cannot forge records or recolour a terminal.
_CONTROL = lazy_re("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNSAFE_NAME = lazy_re(r"[^A-Za-z0-9_\-]")


def _escape_one(match: re.Match[str]) -> str:
    ch = match.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape(text: str) -> str:
    """Escape control characters (and backslashes, so escapes cannot be forged either)."""
    return _CONTROL.sub(_escape_one, text.replace("\\", "\\\\"))


class _LazyLogger:
    """``logging.getLogger(name)``, fetched (and ``logging`` imported) on first attribute use.

    Every attribute is the real logger's, so it is a ``Logger`` to whoever uses it; the methods
    plugsafe calls are kept on the instance after the first use (later calls go straight to the
    real logger's bound methods: no extra frame, so records name their true caller).
    """

    _KEEP = frozenset({"log", "debug", "info", "warning", "error", "exception", "isEnabledFor"})

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attr: str) -> Any:
        # Only for attributes the instance does not have: everything but ``name`` at first.
        if attr.startswith("__"):  # copy, pickle and friends probing: not the logger's
            raise AttributeError(attr)
        # Imported never half done across a fork (_lazymodule.import_now).
        logging: Any = import_now("logging")
        value = getattr(logging.getLogger(self.name), attr)
        if attr in self._KEEP:
            self.__dict__[attr] = value
        return value

    def __repr__(self) -> str:
        return f"<lazy logger {self.name}>"


def lazy_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, without importing ``logging`` until it is used."""
    return cast("logging.Logger", _LazyLogger(name))


# Loggers by plugin name: logging keeps every logger it made for good anyway, and getLogger
# takes logging's lock (a few us on every load of a plugin: issue 14).
_LOGGERS: dict[str, logging.Logger] = {}


def logger_for(plugin_name: str) -> logging.Logger:
    """The logger ``plugsafe.plugin.<name>``; characters a logger name should not hold become _."""
    logger = _LOGGERS.get(plugin_name)
    if logger is None:
        # A name of letters, digits, _ and - only (most) is kept as it is without compiling the
        # pattern: re's compiler is Python code, a cold start's every load names a plugin.
        safe = plugin_name.isascii() and plugin_name.replace("_", "").replace("-", "").isalnum()
        name = plugin_name if safe else _UNSAFE_NAME.sub("_", plugin_name) or "_"
        logger = lazy_logger(f"plugsafe.plugin.{name}")
        _LOGGERS[plugin_name] = logger
    return logger
