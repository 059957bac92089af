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

# First: plugsafe's dataclasses compile their generated methods once, not per process (see there).
from . import _dataclass_code
from ._abi import ABI_VERSION
from ._component import ComponentPlugin, Record, Variant
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
from ._plugin import CallInfo, Plugin, PluginMemory, current_call
from ._policy import Policy
from ._pool import PluginPool
from ._pooling import Pooling
from ._types import F32, F64, I32, I64, CallStats, ExportInfo, ImportInfo
from ._version import __version__
from ._wasi import Preopen, RunResult, Wasi

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


# Every public class is documented, printed and pickled as ``plugsafe.X``, its public home, not
# the private module it happens to be defined in (``plugsafe._plugin.Plugin``). typing resolves
# a class's string annotations in the namespace of its ``__module__``, so they are resolved here
# first, in their own module (get_type_hints(plugsafe.Policy) keeps working).
def _rehome() -> None:
    import inspect
    import typing

    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type) and obj.__module__ != __name__:
            own = inspect.get_annotations(obj)
            if own:
                hints = typing.get_type_hints(obj, include_extras=True)
                obj.__annotations__ = {k: hints[k] for k in own}
            obj.__module__ = __name__


_rehome()
del _rehome
_dataclass_code.finish()
