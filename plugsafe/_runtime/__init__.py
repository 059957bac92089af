"""The one package that calls into wasmtime: what the rest of plugsafe may use of it.

Everything plugsafe does with WebAssembly goes through the classes here. Nothing here knows about
policies or plugsafe's public errors: failures come out as :class:`WasmFailure` and
:class:`GuestMemoryError`, and ``_plugin`` decides what they mean.

Why not wasmtime-py's ``Func.__call__`` and ``Linker.define_func``: they rebuild type information
on every call (tens of microseconds), and they hand a host function's exception back through a
module-global variable that threads running wasm at the same time overwrite. Here calls go through
``wasmtime_func_call_unchecked`` with types checked once, and host callbacks never raise into
wasmtime-py: they report failures to a sink the caller owns and return a trap of their own.

The core runtime never imports wasmtime-py (issue 14: ``import wasmtime`` alone cost a cold start
~190 M instructions). ``_lib`` finds the ``libwasmtime`` inside the wasmtime wheel without running
the package's code and opens it with cffi on plugsafe's own declarations (``plugsafe._cdef``):
engines and their configuration, compiling and deserializing, linkers with WASI and host
functions, WASI configurations, function types, stores, errors and traps are all made and freed
through the C API. Each C object plugsafe owns is a ``_forksafe.Owned``: freed exactly once, by
the process that made it, and handed to wasmtime (``take``) where a C function takes it over.
wasmtime-py is imported only where it is really needed: components (``_component``: its
component API; their engines get the same settings by the same code, ``_engine._configure``),
the ctypes fallback backend (``_ctypes``), and checks against its declarations when it is
loaded anyway.

Two interchangeable *backends* (``_backend.Backend``) do the per-call work (calls, memory access,
fuel, deadlines, host callbacks):

- ``cffi`` (``_cffi``): cffi in ABI mode on ``_lib``'s library (no compiler needed). The struct
  layouts it declares are checked against ``_cdef.LAYOUTS`` for the installed wasmtime major (and
  against wasmtime-py's ctypes declarations when wasmtime-py is loaded); if they differ the
  package falls back to ``ctypes`` and warns once.
- ``ctypes`` (``_ctypes``): wasmtime-py's ctypes bindings, used directly.

``_select`` picks one at import; set ``PLUGSAFE_BACKEND=ctypes`` to force the fallback.
The cffi backend's per-call C call (``Backend.bind_call``) is compiled where the optional
extension ``plugsafe._speedups`` was built at install (``plugsafe/_speedups.c``: a C compiler
and Python's headers); else, or with ``PLUGSAFE_SPEEDUPS=0`` (read once at import), it is
cffi's ABI-mode call. ``SPEEDUPS`` says which is in use. A Linker
(and every Instance made through it) may be given another backend explicitly, which is how the
parity tests run both in one process.

Modules: ``_lib`` (the library, its path, error and trap text), ``_backend`` (the Backend
protocol, handles, failures, the one bounds check), ``_cffi``/``_ctypes`` (the backends),
``_select`` (choosing one), ``_engine`` (Engine and its settings, compiling, wat_to_wasm),
``_module`` (Module and its description, read from the binary), ``_linker`` (Linker,
LinkerPool, Binding, Caller, wasi_config), ``_funcref`` (FuncRef and the invoke closure),
``_instance`` (Instance), ``_store`` (its store), ``_ticker`` (epoch timers, the deadline guard,
the switch interval while a deadline is due), ``_component`` (components: description, values,
one store per instance), ``_hostmem`` (the components' memory creator), ``_forksafe`` (what a
forked child must never delete).
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
    PoolUnreservable,
    library_fingerprint,
    shared_engine,
    wasmtime_version,
    wat_to_wasm,
)
from ._funcref import ArgumentsDoNotFit, FuncRef
from ._instance import Instance, Interruptible
from ._linker import (
    Binding,
    Caller,
    ErrorSink,
    HostCallback,
    Linker,
    LinkerPool,
    NativeCapture,
    native_capture,
    outputs_alive,
    wasi_config,
)
from ._module import (
    NUMERIC_TYPES,
    Description,
    Module,
    describe_binary,
    load_description,
    parse_description,
)
from ._select import BACKEND, DEFAULT, SPEEDUPS, select_backend
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
    "Interruptible",
    "Linker",
    "LinkerPool",
    "Module",
    "NativeCapture",
    "NO_DEADLINE_TICKS",
    "NUMERIC_TYPES",
    "PoolExhaustedFailure",
    "PoolLimits",
    "PoolUnreservable",
    "SPEEDUPS",
    "TICK_SECONDS",
    "WasmFailure",
    "check_span",
    "describe_binary",
    "library_fingerprint",
    "load_description",
    "native_capture",
    "outputs_alive",
    "parse_description",
    "wasi_config",
    "wasmtime_version",
    "wat_to_wasm",
]

# The selected backend and how to select one (kept under their old names for tests).
_B: Backend = DEFAULT
_select_backend = select_backend
