"""The built-in ``log`` host function's Python side: levels, escaping, the logger name."""

from __future__ import annotations

import logging
import re

__all__ = ["LEVELS", "escape", "logger_for"]

# ABI levels 0..4 (trace, debug, info, warn, error) to Python logging levels.
LEVELS: tuple[int, ...] = (
    logging.DEBUG,
    logging.DEBUG,
    logging.INFO,
    logging.WARNING,
    logging.ERROR,
)

# C0 and C1 controls, DEL, and the Unicode line/paragraph separators: anything a log viewer might
# treat as a new line or a terminal as a command. Escaped so one message is always one line and a
# plugin cannot forge records or recolour a terminal.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_\-]")


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


# Loggers by plugin name: logging keeps every logger it made for good anyway, and getLogger
# takes logging's lock (a few us on every load of a plugin: issue 14).
_LOGGERS: dict[str, logging.Logger] = {}


def logger_for(plugin_name: str) -> logging.Logger:
    """The logger ``plugsafe.plugin.<name>``; characters a logger name should not hold become _."""
    logger = _LOGGERS.get(plugin_name)
    if logger is None:
        logger = logging.getLogger(f"plugsafe.plugin.{_UNSAFE_NAME.sub('_', plugin_name) or '_'}")
        _LOGGERS[plugin_name] = logger
    return logger
