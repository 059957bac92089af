"""The methods ``@dataclass`` generates for plugsafe's classes, compiled once, not per process.

Issue 14 (cold start): ``import plugsafe`` defines about thirty dataclasses, and the standard
library writes each one's ``__init__``, ``__repr__``, ``__eq__``, ``__hash__``, ``__setattr__``
and ``__delattr__`` as source text and compiles it, in every process: about a quarter of
plugsafe's own import time, nearly all of it in ``compile``. The text is the same in every
process (it depends only on the class definitions), so, like Python's own ``.pyc`` files, the
compiled code objects are kept beside plugsafe's bytecode and loaded with ``marshal`` next time.

How: while ``plugsafe/__init__.py`` runs, the ``dataclasses`` module's global name ``exec`` is
shadowed by :func:`_exec`, which compiles a text only the first time it sees it (with the flags
``exec`` of a string would use: none inherited) and then runs the code object exactly as
``exec(text, ...)`` would. Only texts whose globals are a plugsafe module's are cached; anything
else is passed straight through. The hook is removed once the package is imported (a dataclass
module plugsafe imports later compiles as usual).

The cache is trusted as much as ``__pycache__`` is (who can write there can write ``.pyc``
files Python runs), written only where Python would write bytecode (not with
``PYTHONDONTWRITEBYTECODE``/``-B``; ``sys.pycache_prefix`` honoured), tagged with the
interpreter's bytecode magic number, replaced atomically, and ignored when unreadable, corrupt
or from another interpreter: then the classes are compiled as before, and a missing text is
simply compiled. Keys are the exact source texts, so a changed class never uses stale code.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import importlib.util
import marshal
import os
import sys
from types import CodeType
from typing import Any

__all__ = ["finish", "start"]

# <package>/__pycache__/_dataclass_code.<tag>.bin (the place and tag Python's own bytecode uses);
# "" where this interpreter keeps no bytecode cache (no cache tag): then nothing is cached.
try:
    _PATH = importlib.util.cache_from_source(
        os.path.join(os.path.dirname(__file__), "_dataclass_code.py")
    )
    _PATH = _PATH[: -len(".pyc")] + ".bin"
except NotImplementedError:  # pragma: no cover - sys.implementation.cache_tag is None
    _PATH = ""
_MAGIC = importlib.util.MAGIC_NUMBER

# Loaded from the cache; and the texts this import used (what is written back: the cache holds
# only what the installed version needs).
_codes: dict[str, CodeType] = {}
_used: dict[str, CodeType] = {}
_state = {"new": False}


def _load() -> dict[str, CodeType]:
    try:
        with open(_PATH, "rb") as f:
            blob = f.read()
        if not blob.startswith(_MAGIC):
            return {}
        codes = marshal.loads(blob[len(_MAGIC) :])
    except (OSError, ValueError, EOFError, TypeError):
        return {}
    if not isinstance(codes, dict):
        return {}
    return {k: v for k, v in codes.items() if isinstance(k, str) and isinstance(v, CodeType)}


def _exec(source: Any, globals: Any = None, locals: Any = None, /) -> None:
    """``exec`` for the dataclasses module: the same, with plugsafe's texts compiled once."""
    if globals is None:  # exec's own default: the caller's namespaces (never the case today)
        frame = sys._getframe(1)
        globals = frame.f_globals
        if locals is None:
            locals = frame.f_locals
    if type(source) is str and str(globals.get("__name__", "")).startswith("plugsafe"):
        code = _codes.get(source)
        if code is None:
            # What exec(text) does: the file name "<string>", no flags from this module's
            # ``from __future__`` imports.
            code = _codes[source] = compile(source, "<string>", "exec", dont_inherit=True)
            _state["new"] = True
        _used[source] = code
        source = code
    builtins.exec(source, globals, locals)


def start() -> None:
    """Load the cache and shadow ``exec`` in the dataclasses module (plugsafe's import only)."""
    if not _PATH:  # pragma: no cover - no bytecode cache on this interpreter
        return
    _codes.update(_load())
    # Through the module's namespace: to mypy the module has no attribute exec (it looks the
    # builtin up, which a global of that name shadows).
    vars(dataclasses)["exec"] = _exec


def finish() -> None:
    """Remove the hook; write the cache if a text was compiled and Python writes bytecode."""
    if vars(dataclasses).get("exec") is _exec:
        del vars(dataclasses)["exec"]
    new, _state["new"] = _state["new"], False
    used = dict(_used)
    _codes.clear()
    _used.clear()
    if not new or sys.dont_write_bytecode:
        return
    tmp = f"{_PATH}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(_PATH), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(_MAGIC + marshal.dumps(used))
        os.replace(tmp, _PATH)
    except OSError:  # read-only install, full disk: compile next time, as before
        with contextlib.suppress(OSError):
            os.unlink(tmp)


start()
