"""plugsafe: run untrusted WebAssembly plugins safely.

A host app creates a :class:`Host`, registers the host functions plugins may use, and loads
plugins under a :class:`Policy` that says which of those functions each may import and how much
fuel, time and memory it may use per call::

    import plugsafe

    host = plugsafe.Host()
    plugin = host.load("greet.wasm", policy=plugsafe.Policy(allow={"log"}), name="greet")
    print(plugin.call("greet", b"world"))

Everything plugsafe raises derives from :class:`PlugsafeError`; see ``docs/errors.md``.

PYTEST_DONT_REWRITE: plugsafe registers a pytest plugin (``plugsafe.testing``), so pytest would
rewrite the asserts of the whole package and add its helper names to this namespace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# First: plugsafe's dataclasses are made without the dataclasses module, their generated methods
# compiled once, not per process, and the cyclic garbage collector is held off until the package
# is imported (issue 14: cold start; see _dataclass_code). finish() undoes both, whatever happens.
from . import _dataclass_code

try:
    from . import _public
    from ._abi import ABI_VERSION
    from ._errors import (
        AbiError,
        AbiVersionError,
        DeadlineExceeded,
        ExportNotFoundError,
        FuelExhausted,
        GuestError,
        HostCallLimitExceeded,
        HostFunctionError,
        ImportNotAllowedError,
        ImportProblem,
        InvalidModuleError,
        LimitExceeded,
        MemoryAccessError,
        MemoryLimitExceeded,
        PluginCallError,
        PluginClosedError,
        PluginExitError,
        PluginLoadError,
        PluginTrap,
        PlugsafeError,
        PolicyError,
        PoolExhausted,
        SignatureError,
        StackLimitExceeded,
    )
    from ._host import Host
    from ._lazymodule import import_now as _import_now
    from ._plugin import Plugin, PluginMemory, current_call
    from ._policy import Policy
    from ._types import F32, F64, I32, I64, CallStats, ExportInfo, ImportInfo
    from ._version import __version__
    from ._wasi import Preopen, Wasi
except BaseException:
    _dataclass_code.finish()
    raise

if TYPE_CHECKING:  # imported when first used (see __getattr__ below)
    from ._callinfo import CallInfo
    from ._componentplugin import ComponentPlugin
    from ._pool import PluginPool
    from ._pooling import Pooling
    from ._runresult import RunResult
    from ._runtime._component import Record, Variant

__all__ = [
    "ABI_VERSION",
    "AbiError",
    "AbiVersionError",
    "CallInfo",
    "CallStats",
    "ComponentPlugin",
    "DeadlineExceeded",
    "ExportInfo",
    "ExportNotFoundError",
    "F32",
    "F64",
    "FuelExhausted",
    "GuestError",
    "Host",
    "HostCallLimitExceeded",
    "HostFunctionError",
    "I32",
    "I64",
    "ImportInfo",
    "ImportNotAllowedError",
    "ImportProblem",
    "InvalidModuleError",
    "LimitExceeded",
    "MemoryAccessError",
    "MemoryLimitExceeded",
    "Plugin",
    "PluginCallError",
    "PluginClosedError",
    "PluginExitError",
    "PluginLoadError",
    "PluginMemory",
    "PluginPool",
    "PluginTrap",
    "PlugsafeError",
    "Policy",
    "PolicyError",
    "PoolExhausted",
    "Pooling",
    "Preopen",
    "Record",
    "RunResult",
    "SignatureError",
    "StackLimitExceeded",
    "Variant",
    "Wasi",
    "__version__",
    "current_call",
]


# Public names whose modules most hosts never need, imported on first use (issue 14: cold
# start; PEP 562). ``from plugsafe import PluginPool``, ``plugsafe.PluginPool``, ``dir()`` and
# ``import *`` see them as before; type checkers see the imports above. Such a module makes its
# classes ``plugsafe.X`` itself (_public), however it is reached first.
_LAZY = {
    "CallInfo": "._callinfo",
    "ComponentPlugin": "._componentplugin",
    "PluginPool": "._pool",
    "Pooling": "._pooling",
    "Record": "._runtime._component",
    "RunResult": "._runresult",
    "Variant": "._runtime._component",
}


if not TYPE_CHECKING:  # hidden from type checkers: a misspelt name stays an error to them

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(_import_now(__name__ + module), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


# Every public class is plugsafe.X (see _public): those imported above, here.
try:
    _public.rehome(*(globals()[name] for name in __all__ if name not in _LAZY))
finally:
    _dataclass_code.finish()
del TYPE_CHECKING  # not a public name
