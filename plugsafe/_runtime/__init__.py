"""The one package that calls into wasmtime: what the rest of plugsafe may use of it.

Everything plugsafe does with WebAssembly goes through the classes here. Nothing here knows about
policies or plugsafe's public errors: failures come out as :class:`WasmFailure` and
:class:`GuestMemoryError`, and ``_plugin`` decides what they mean.

Why not wasmtime-py's ``Func.__call__`` and ``Linker.define_func``: they rebuild type information
on every call (tens of microseconds), and they hand a host function's exception back through a
module-global variable that threads running wasm at the same time overwrite. Here calls go through
``wasmtime_func_call_unchecked`` with types checked once, and host callbacks never raise into
wasmtime-py: they report failures to a sink the caller owns and return a trap of their own.

Two interchangeable *backends* (``_backend.Backend``) do the per-call work (calls, memory access,
fuel, deadlines, host callbacks):

- ``cffi`` (``_cffi``): cffi in ABI mode on the ``libwasmtime`` inside the wasmtime wheel (no
  compiler needed). The struct layouts it declares are checked against wasmtime-py's own ctypes
  declarations at import; if they differ the package falls back to ``ctypes`` and warns once.
- ``ctypes`` (``_ctypes``): wasmtime-py's ctypes bindings, used directly.

``_select`` picks one at import; set ``PLUGSAFE_BACKEND=ctypes`` to force the fallback. A Linker
(and every Instance made through it) may be given another backend explicitly, which is how the
parity tests run both in one process. Everything else (engines, compiling, linkers,
instantiation) uses wasmtime-py's objects, which are not on the per-call path.

Modules: ``_backend`` (the Backend protocol, handles, failures, the one bounds check),
``_cffi``/``_ctypes`` (the backends), ``_select`` (choosing one), ``_engine`` (Engine, the epoch
ticker, wat_to_wasm), ``_module`` (Module and its description, read from the binary),
``_linker`` (Linker, LinkerPool, Binding, Caller, wasi_config), ``_funcref`` (FuncRef and the
invoke closure), ``_instance`` (Instance), ``_store`` (its store, made and freed through the C
API directly), ``_ticker`` (epoch timers, the deadline guard, the
switch interval while a deadline is due), ``_component`` (components: description, values, one
store per instance), ``_hostmem`` (the components' memory creator), ``_forksafe`` (what a forked
child must never delete).
"""

from __future__ import annotations

from ._backend import (
    Backend,
    GuestAllocError,
    GuestMemoryError,
    HostCallbackFailed,
    HostRecord,
    PoolExhaustedFailure,
    WasmFailure,
    check_span,
)
from ._engine import (
    NO_DEADLINE_TICKS,
    TICK_SECONDS,
    Engine,
    EpochTicker,
    PoolLimits,
    library_fingerprint,
    shared_engine,
    wasmtime_version,
    wat_to_wasm,
)
from ._funcref import ArgumentsDoNotFit, FuncRef
from ._instance import Instance
from ._linker import Binding, Caller, ErrorSink, HostCallback, Linker, LinkerPool, wasi_config
from ._module import (
    NUMERIC_TYPES,
    Description,
    Module,
    describe_binary,
    load_description,
    parse_description,
)
from ._select import BACKEND, DEFAULT, select_backend
from ._store import DEFAULT_WASI
from ._ticker import Ticker

__all__ = [
    "ArgumentsDoNotFit",
    "BACKEND",
    "Backend",
    "Binding",
    "Caller",
    "DEFAULT_WASI",
    "Description",
    "Engine",
    "EpochTicker",
    "Ticker",
    "shared_engine",
    "ErrorSink",
    "FuncRef",
    "GuestAllocError",
    "GuestMemoryError",
    "HostCallback",
    "HostCallbackFailed",
    "HostRecord",
    "Instance",
    "Linker",
    "LinkerPool",
    "Module",
    "NO_DEADLINE_TICKS",
    "NUMERIC_TYPES",
    "PoolExhaustedFailure",
    "PoolLimits",
    "TICK_SECONDS",
    "WasmFailure",
    "check_span",
    "describe_binary",
    "library_fingerprint",
    "load_description",
    "parse_description",
    "wasi_config",
    "wasmtime_version",
    "wat_to_wasm",
]

# The selected backend and how to select one (kept under their old names for tests).
_B: Backend = DEFAULT
_select_backend = select_backend
