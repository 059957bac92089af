"""The built-in ``log`` host function's Python side: levels, escaping, the logger name.

``logging`` is imported when something is first logged, not at ``import plugsafe`` (issue 14,
cold start: with what it pulls in, ``traceback``, ``string``, ``textwrap``, it was the largest
standard-library import of a fresh process that never logs). Every plugin still gets its logger
at load: a :func:`lazy_logger`, which becomes the real logger on first use: logging's own if the
app made it, else one outside logging's registry, which never frees a logger
(:func:`_plugin_logger`).
"""

from __future__ import annotations

import contextlib
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
    """A logger (see ``_plugin_logger``), made (and ``logging`` imported) on first attribute use.

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
        real = self.__dict__.get("_real")
        if real is None:
            real = self.__dict__["_real"] = _plugin_logger(self.name)
        value = getattr(real, attr)
        if attr in self._KEEP:
            self.__dict__[attr] = value
        return value

    def __repr__(self) -> str:
        return f"<lazy logger {self.name}>"


def lazy_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, without importing ``logging`` until it is used.

    A name under ``plugsafe.plugin.`` is a plugin's: see :func:`_plugin_logger`.
    """
    return cast("logging.Logger", _LazyLogger(name))


_PLUGIN_PREFIX = "plugsafe.plugin."
_UNREGISTERED: list[type[logging.Logger]] = []


def _plugin_logger(name: str) -> logging.Logger:
    """The logger ``name``: logging's own if the app has made it (``logging.getLogger``), else
    one logging does not register.

    logging keeps every logger ``getLogger`` made for the life of the process: a host naming a
    plugin per tenant or per upload grew its logger registry by one per name that ever logged
    (tidy9). A plugin's logger that the app has not asked for is therefore made outside the
    registry, as a child of ``plugsafe.plugin`` (records carry the same name, and propagate
    to the same handlers, as through ``getLogger``), and freed with the last plugin using it.
    It asks the registry on every record whether the app has made the real one since (to set
    its level or give it handlers), and then defers to it; its level is never cached (logging
    clears only its registered loggers' caches when levels change).
    """
    # Imported never half done across a fork (_lazymodule.import_now).
    logmod: Any = import_now("logging")
    real = logmod.root.manager.loggerDict.get(name)
    if isinstance(real, logmod.Logger) or not name.startswith(_PLUGIN_PREFIX):
        return cast("logging.Logger", logmod.getLogger(name))
    if not _UNREGISTERED:

        class UnregisteredLogger(logmod.Logger):  # type: ignore[misc]
            """A plugin's logger outside logging's registry (see ``_plugin_logger``)."""

            def _registered(self) -> Any:
                real = self.manager.loggerDict.get(self.name)
                return real if isinstance(real, logmod.Logger) else None

            def isEnabledFor(self, level: int) -> bool:
                real = self._registered()
                if real is not None:
                    return bool(real.isEnabledFor(level))
                if self.manager.disable >= level:
                    return False
                return bool(level >= self.getEffectiveLevel())

            def handle(self, record: Any) -> None:
                real = self._registered()
                if real is not None:
                    real.handle(record)
                else:
                    super().handle(record)

        _UNREGISTERED.append(UnregisteredLogger)
    logger = _UNREGISTERED[0](name)
    logger.parent = logmod.getLogger(_PLUGIN_PREFIX[:-1])
    return logger


# Loggers by plugin name (issue 14: a load should not make one afresh), the most recent
# _LOGGERS_KEPT names only: a host naming a plugin per tenant or upload must not grow it for
# ever (tidy9). Dropping one costs only the next load of that name a new stand-in.
_LOGGERS: dict[str, logging.Logger] = {}
_LOGGERS_KEPT = 1024


def logger_for(plugin_name: str) -> logging.Logger:
    """The logger ``plugsafe.plugin.<name>``; characters a logger name should not hold become _."""
    logger = _LOGGERS.get(plugin_name)
    if logger is None:
        # A name of letters, digits, _ and - only (most) is kept as it is without compiling the
        # pattern: re's compiler is Python code, a cold start's every load names a plugin.
        safe = plugin_name.isascii() and plugin_name.replace("_", "").replace("-", "").isalnum()
        name = plugin_name if safe else _UNSAFE_NAME.sub("_", plugin_name) or "_"
        logger = lazy_logger(f"{_PLUGIN_PREFIX}{name}")
        if len(_LOGGERS) >= _LOGGERS_KEPT:
            # The oldest first (dicts keep insertion order). Another thread may change the
            # dict meanwhile: then this one is left, and the next name drops one.
            with contextlib.suppress(KeyError, RuntimeError, StopIteration):
                del _LOGGERS[next(iter(_LOGGERS))]
        _LOGGERS[plugin_name] = logger
    return logger
