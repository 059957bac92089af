"""A module imported when one of its attributes is first used, then the module itself.

Issue 14 (cold start): ``_component`` is needed at ``import plugsafe`` (every Host checks whether
a source is a component), but its runtime half, ``_runtime._component`` (wasmtime-py's
component API, the value marshalling), only once a component is loaded. ``rc =
lazy_module("plugsafe._runtime._component", globals(), "rc")`` gives a stand-in that, on the
first ``rc.X``, imports the module and puts it in place of itself in the given namespace: later
``rc.X`` are plain attribute lookups on the real module (and monkeypatching the real module
works as before).

:func:`lazy_function` does the same for one function (or class) of one of plugsafe's own modules
that only a rare path calls: ``compile_isolated = lazy_function("plugsafe._isolate",
"compile_isolated", globals())`` binds a stand-in that, on its first call, imports the module and
puts the real function in its own place (later calls are plain calls of the real function; the
code calling it is unchanged). Modules bind the real names under ``TYPE_CHECKING``, so type
checkers see them as before. Issue 14: a cold start loads neither the compiler child's module,
nor the host-config and policy-file parsers, nor the ctypes backend.

:func:`import_now` is how every first use of something plugsafe imports lazily imports it. A
thread importing a module holds that module's import lock until the import is done, and a
``fork()`` meanwhile (from another thread) gave the child that lock held by a thread the child
does not have: the child hung for good at its own first use (attack4 finding; ``import
plugsafe`` used to import everything before any thread ran). So a forked child first forgets
every module lock held by such a thread, and the half-imported modules they guarded: its own
first use imports them afresh (:func:`_forget_dead_imports`). Waiting in the parent instead
(a lock a fork waits for) deadlocked with other at-fork handlers: ``logging``'s takes its lock,
which the import being waited for may need.
"""

from __future__ import annotations

import os
import sys
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib import _bootstrap, import_module
else:
    # The import system itself (what importlib calls _bootstrap), without importing the
    # importlib package (issue 14: cold start); import_module of an absolute name is its
    # _gcd_import.
    try:
        import _frozen_importlib as _bootstrap
    except ImportError:  # pragma: no cover - an interpreter without it: importlib's own
        from importlib import _bootstrap

    def import_module(name: str) -> ModuleType:
        return _bootstrap._gcd_import(name)  # what importlib.import_module(name) calls


__all__ = ["import_now", "lazy_function", "lazy_module"]


def _forget_dead_imports() -> None:
    """(In a forked child.) Drop the import locks held by threads the child does not have, and
    the modules they were importing, so that importing them again works. Best effort on
    importlib's internals: if they are not as expected, nothing is touched."""
    try:
        locks = _bootstrap._module_locks  # type: ignore[attr-defined]
        me = threading.get_ident()
        for name, ref in list(locks.items()):
            lock = ref()
            owner = getattr(lock, "owner", None)
            if lock is None or not owner or owner == me:
                continue  # free, or held by this thread (a fork from inside an import)
            del locks[name]
            module = sys.modules.get(name)
            if module is not None and getattr(module.__spec__, "_initializing", False):
                del sys.modules[name]  # half made: the next import runs it again
    except Exception:
        pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_dead_imports)


def import_now(name: str) -> ModuleType:
    """``import_module(name)`` for a lazy first use (see above for a fork meanwhile).

    A module already imported costs a dict lookup (``__spec__._initializing`` is set only
    while a module's own code runs: then the import system waits for it).
    """
    module = sys.modules.get(name)
    if module is not None and not getattr(module.__spec__, "_initializing", False):
        return module
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


class _LazyFunction:
    def __init__(self, module: str, name: str, namespace: dict[str, Any]) -> None:
        self._target = (module, name, namespace)

    def _resolve(self) -> Any:
        module, name, namespace = self._target
        value = getattr(import_now(module), name)
        if namespace.get(name) is self:
            namespace[name] = value
        return value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._resolve()(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # copy, pickle and friends probing
            raise AttributeError(attr)
        return getattr(self._resolve(), attr)

    def __repr__(self) -> str:
        return f"<lazy {self._target[0]}.{self._target[1]}>"


def lazy_function(module: str, name: str, namespace: dict[str, Any]) -> Any:
    """A stand-in for ``module.name`` bound as ``name`` in ``namespace`` (see above)."""
    return _LazyFunction(module, name, namespace)
