"""A module imported when one of its attributes is first used, then the module itself.

Issue 14 (cold start): ``_component`` is needed at ``import plugsafe`` (every Host checks whether
a source is a component), but its runtime half, ``_runtime._component`` (wasmtime-py's
component API, the value marshalling), only once a component is loaded. ``rc =
lazy_module("plugsafe._runtime._component", globals(), "rc")`` gives a stand-in that, on the
first ``rc.X``, imports the module and puts it in place of itself in the given namespace: later
``rc.X`` are plain attribute lookups on the real module (and monkeypatching the real module
works as before).

:func:`import_now` is how every first use of something plugsafe imports lazily imports it: a
thread importing a module holds that module's import lock until the import is done, and a
``fork()`` meanwhile (from another thread) gave the child the lock held by a thread it does not
have, so the child hung for good at its own first use (attack4 finding: ``import plugsafe``
had imported everything before any thread ran). So these imports hold ``_IMPORTING``, which a
fork waits for (``os.register_at_fork``): no lazy import of plugsafe's is half done in a child.
"""

from __future__ import annotations

import os
import sys
import threading
from importlib import import_module
from types import ModuleType
from typing import Any

__all__ = ["import_now", "lazy_module"]

# Held while a lazy first use imports, and by a fork from just before to just after it.
# Re-entrant: an import may make a lazy first use of its own (a signal handler too).
_IMPORTING = threading.RLock()


def _reinit_in_child() -> None:
    global _IMPORTING
    # The child's only thread is the one that forked, which held the lock: a fresh one.
    _IMPORTING = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=lambda: _IMPORTING.acquire(),
        after_in_parent=lambda: _IMPORTING.release(),
        after_in_child=_reinit_in_child,
    )


def import_now(name: str) -> ModuleType:
    """``import_module(name)`` for a lazy first use: never half done across a fork (above).

    A module already imported costs a dict lookup (``__spec__._initializing`` is set only
    while a module's own code runs: then the import system waits for it, under the lock).
    """
    module = sys.modules.get(name)
    if module is not None and not getattr(module.__spec__, "_initializing", False):
        return module
    with _IMPORTING:
        return import_module(name)


class _LazyModule:
    def __init__(self, name: str, namespace: dict[str, Any], alias: str) -> None:
        self._target = (name, namespace, alias)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # copy, pickle and friends probing
            raise AttributeError(attr)
        name, namespace, alias = self._target
        module = import_now(name)  # the import lock makes concurrent first uses safe
        if namespace.get(alias) is self:
            namespace[alias] = module
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._target[0]!r}>"


def lazy_module(name: str, namespace: dict[str, Any], alias: str) -> Any:
    """A stand-in for module ``name`` bound as ``alias`` in ``namespace`` (see above)."""
    return _LazyModule(name, namespace, alias)
