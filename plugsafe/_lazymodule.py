"""A module imported when one of its attributes is first used, then the module itself.

Issue 14 (cold start): ``_component`` is needed at ``import plugsafe`` (every Host checks whether
a source is a component), but its runtime half, ``_runtime._component`` (wasmtime-py's
component API, the value marshalling), only once a component is loaded. ``rc =
lazy_module("plugsafe._runtime._component", globals(), "rc")`` gives a stand-in that, on the
first ``rc.X``, imports the module and puts it in place of itself in the given namespace: later
``rc.X`` are plain attribute lookups on the real module (and monkeypatching the real module
works as before).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["lazy_module"]


class _LazyModule:
    def __init__(self, name: str, namespace: dict[str, Any], alias: str) -> None:
        self._target = (name, namespace, alias)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # copy, pickle and friends probing
            raise AttributeError(attr)
        name, namespace, alias = self._target
        module = import_module(name)  # the import lock makes concurrent first uses safe
        if namespace.get(alias) is self:
            namespace[alias] = module
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._target[0]!r}>"


def lazy_module(name: str, namespace: dict[str, Any], alias: str) -> Any:
    """A stand-in for module ``name`` bound as ``alias`` in ``namespace`` (see above)."""
    return _LazyModule(name, namespace, alias)
