"""Linkers (the host functions a plugin may import), the Caller they see, and WASI settings.

A Linker serves one plugin at a time; a Host's :class:`LinkerPool` hands the Linker of a closed
plugin (every store made through it closed) to the next plugin of the same module, rebound to
it (issue 14; docs/performance.md says why Linkers are not shared by live plugins).
"""

from __future__ import annotations

import errno
import itertools
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from . import _wasifork
from ._backend import (
    KIND_FUNC,
    KIND_MEMORY,
    U32,
    Backend,
    CallerPtr,
    Ctx,
    FuncHandle,
    GuestAllocError,
    GuestMemoryError,
    HostEntry,
    HostRecord,
    HostSink,
    MemHandle,
    PreHandle,
    RawSlots,
    WasmFailure,
    check_span,
    failure_from_addresses,
)
from ._cffi import SPEEDUPS
from ._engine import Engine
from ._forksafe import Owned
from ._funcref import Scratch
from ._lib import address, ffi, lib
from ._module import Module
from ._select import DEFAULT

__all__ = [
    "Binding",
    "Caller",
    "ErrorSink",
    "HostCallback",
    "Linker",
    "LinkerPool",
    "wasi_config",
]

# A host callback: receives a Caller and the wasm arguments as Python numbers, returns the wasm
# results as a sequence (or None when there are none). It may raise; see Linker.define_func.
HostCallback = Callable[["Caller", list[Any]], Sequence[Any] | None]
# Receives what a host callback raised (once its trap is back out of wasm); returns the message.
ErrorSink = HostSink


class Binding(NamedTuple):
    """One host function as one plugin binds it: where it is defined and what serves it.

    ``numeric``: ``target`` is ``fn(*values) -> value`` (see Linker.define_numeric), else a
    HostCallback. ``results`` holds zero or one type for a numeric binding.
    """

    numeric: bool
    module: str
    name: str
    params: tuple[str, ...]
    results: tuple[str, ...]
    target: Callable[..., Any]
    on_error: ErrorSink


class Caller:
    """The guest as seen from inside a host callback: its memory and its allocator.

    Valid only while the callback runs. Every pointer and length is taken as unsigned 32-bit and
    checked against the memory's size at the moment of access.
    """

    __slots__ = ("_ctx", "_ptr", "_valid")
    # The backend, as a class attribute: a Caller is made for every host call, and one more
    # constructor argument would cost each of them. Other backends get a subclass (caller_class).
    _b: Backend = DEFAULT

    def __init__(self, ptr: CallerPtr) -> None:
        self._ptr = ptr
        # Looked up on first use: numeric host functions never touch memory, so never pay it.
        self._ctx: Ctx | None = None
        self._valid = True

    def _context(self) -> Ctx:
        ctx = self._ctx
        if ctx is None:
            ctx = self._ctx = self._b.caller_ctx(self._ptr)
        return ctx

    def _export(self, name: bytes, kind: int) -> FuncHandle | MemHandle | None:
        if not self._valid:
            raise RuntimeError("caller used after its host call returned")
        return self._b.caller_export(self._ptr, name, kind)

    def _memory(self) -> MemHandle:
        mem = self._export(b"memory", KIND_MEMORY)
        if mem is None:
            raise GuestMemoryError("the plugin exports no memory named 'memory'")
        return mem  # type: ignore[return-value]  # KIND_MEMORY gives a MemHandle

    def check(self, pointer: int, length: int) -> None:
        """Raise GuestMemoryError unless the whole span lies in the guest's memory (no copy).

        As for ``read``, an empty span may point anywhere.
        """
        length &= U32
        if length:
            check_span(pointer & U32, length, self._b.size(self._context(), self._memory()))

    def read(self, pointer: int, length: int) -> bytes:
        """Copy ``length`` bytes at ``pointer`` out of the guest's memory."""
        pointer &= U32
        length &= U32
        if length == 0:
            return b""
        return self._b.read(self._context(), self._memory(), pointer, length)

    def write(self, pointer: int, data: bytes) -> None:
        """Copy ``data`` into the guest's memory at ``pointer`` (bounds-checked)."""
        self._b.write(self._context(), self._memory(), pointer & U32, data)

    def place(self, data: bytes, alloc_export: bytes | None) -> int:
        """Copy ``data`` into memory the guest allocates for it; return the guest pointer.

        ``alloc_export`` is the allocator's export name, which the caller must have checked to
        be a function (i32) -> i32 (the call below trusts that type), or None when the module
        has no such export.
        """
        if not data:
            return 0
        func = None if alloc_export is None else self._export(alloc_export, KIND_FUNC)
        if func is None:
            raise GuestMemoryError(
                "the plugin exports no allocator 'plugsafe_alloc' of type (i32) -> i32 to "
                "receive a result"
            )
        b = self._b
        buf = b.buf(1)
        buf[0].i32 = len(data)
        # Re-entering the guest from inside a host call is allowed by wasmtime on the same store.
        b.call(self._context(), func, buf, 1)  # type: ignore[arg-type]  # KIND_FUNC: a FuncHandle
        pointer = int(buf[0].i32) & U32
        if pointer == 0:
            raise GuestAllocError(f"the plugin's allocator could not allocate {len(data)} bytes")
        try:
            b.write(self._context(), self._memory(), pointer, data)
        except GuestMemoryError as exc:
            raise GuestMemoryError(f"the plugin's allocator returned a bad buffer: {exc}") from None
        return pointer

    def memory_size(self) -> int:
        """The size in bytes of the guest's ``memory`` now."""
        return self._b.size(self._context(), self._memory())

    def _invalidate(self) -> None:
        self._valid = False


_CALLERS: dict[Backend, type[Caller]] = {DEFAULT: Caller}


def caller_class(backend: Backend) -> type[Caller]:
    """Caller, or a subclass bound to ``backend`` (made once per backend)."""
    cls = _CALLERS.get(backend)
    if cls is None:
        cls = _CALLERS[backend] = type("Caller", (Caller,), {"__slots__": (), "_b": backend})
    return cls


def wasi_config(
    *,
    args: Sequence[str],
    env: Mapping[str, str],
    stdin: bytes,
    stdout: tuple[str, Callable[[bytes], object] | NativeCapture | None],
    stderr: tuple[str, Callable[[bytes], object] | NativeCapture | None],
    preopens: Sequence[tuple[str, str, bool]],
) -> Owned:
    """A WASI configuration (an owned ``wasi_config_t``, for ``_store.Store.set_wasi``)
    granting exactly this, and nothing of the host by default.

    ``stdout``/``stderr`` are (mode, sink): "inherit" uses the host's stream, "discard" leaves
    it unset (wasmtime then drops every write, reporting it written in full), anything else
    hands every write to ``sink``, a :class:`NativeCapture` (written in C) or a Python callable
    (whose result is ignored: a write is always reported whole; one that raises fails with
    EIO). wasmtime may call a sink on a thread of its own. The sinks are held until the store
    the configuration is given to is deleted (``Store.close``), or with the configuration if it
    never is: its ``also`` (``_forksafe.Owned``) forgets them.
    """
    if (
        preopens
        or stdout[0] not in ("inherit", "discard")
        or stderr[0] not in ("inherit", "discard")
    ):
        _wasifork.use_io()  # (raises in a child forked while wasmtime's I/O threads ran)
    else:
        _wasifork.note()
    cfg = Owned(lib.wasi_config_new(), lib.wasi_config_delete)
    raw = cfg.raw
    outputs = _Outputs()
    cfg.also = outputs.release
    # A new config has no arguments and no variables: setting none costs nothing (every
    # instance of a WASI plugin gets a config of its own).
    if args:
        argv = [ffi.new("char[]", a.encode("utf-8")) for a in args]
        if not lib.wasi_config_set_argv(raw, len(argv), argv):
            raise WasmFailure("failed to configure argv")
    if env:
        names = [ffi.new("char[]", k.encode("utf-8")) for k in env]
        values = [ffi.new("char[]", v.encode("utf-8")) for v in env.values()]
        if not lib.wasi_config_set_env(raw, len(names), names, values):
            raise WasmFailure("failed to configure environment")
    if stdin:
        vec = ffi.new("wasm_byte_vec_t *")
        # wasi_config_set_stdin_bytes takes the vector's bytes over: stdin is an in-memory
        # buffer, so reading it never blocks. With none set, stdin is at its end at once, as an
        # empty buffer is (measured: fd_read gives 0 bytes either way).
        lib.wasm_byte_vec_new(vec, len(stdin), stdin)
        lib.wasi_config_set_stdin_bytes(raw, vec)
    if stdout[0] == "inherit":
        lib.wasi_config_inherit_stdout(raw)
    elif stdout[0] != "discard":
        lib.wasi_config_set_stdout_custom(raw, *outputs.add(stdout[1]), ffi.NULL)
    if stderr[0] == "inherit":
        lib.wasi_config_inherit_stderr(raw)
    elif stderr[0] != "discard":
        lib.wasi_config_set_stderr_custom(raw, *outputs.add(stderr[1]), ffi.NULL)
    for host, guest, writable in preopens:
        # Writable only when asked for, said explicitly every time.
        if not lib.wasi_config_preopen_dir(
            raw, host.encode("utf-8"), guest.encode("utf-8"), bool(writable)
        ):
            # (wasmtime opens it now: gone, or no longer readable, since the policy checked.)
            raise WasmFailure(f"cannot preopen the host directory {host!r} as {guest!r}")
    return cfg


# Custom outputs' sinks by the key wasmtime hands back to _write (its ``data`` pointer): held
# while the store (or the configuration) that may call them lives; see _Outputs.
#
# wasmtime gets no finalizer for them (NULL). It would call one when it drops the output
# stream, and it drops it on a tokio worker thread of its own, some time after the store is
# deleted; if that came while the interpreter was finalizing, taking the GIL there made
# CPython end the thread with pthread_exit, whose forced unwind through Rust's frames aborts
# the process ("panic in a function that cannot unwind": `plugsafe run` of a WASI command
# aborted at exit in 9 of 150 runs, 0 of 150 without the finalizer).
_OUTPUTS: dict[int, Callable[[bytes], object]] = {}
_OUTPUT_KEYS = itertools.count(1)


class NativeCapture:
    """A captured output kept in C by ``plugsafe._speedups`` (its ``capture_*`` functions).

    wasmtime writes a guest's output on a thread of its own; a Python sink there takes the GIL,
    and taking it while the interpreter finalizes (a daemon thread's plugin still writing at
    exit) ends that thread with a forced unwind through wasmtime's Rust frames: the process
    aborts. This capture's writes run no Python. Kept up to ``limit`` bytes; the rest dropped
    and ``truncated`` said. Freed with this object (a later write is an I/O error for the
    guest, never a use after free: the C side finds a capture by its key).
    """

    __slots__ = ("_close", "_value", "callback", "key")

    def __init__(self, speedups: Any, limit: int) -> None:
        self.key: int = speedups.capture_open(limit)
        self.callback = ffi.cast("plugsafe_output_callback_t", speedups.CAPTURE_WRITE)
        self._value = speedups.capture_value
        # Bound now: __del__ may run while the interpreter finalizes.
        self._close = speedups.capture_close

    def value(self) -> tuple[bytes, bool]:
        """What was kept so far, and whether anything was dropped."""
        return self._value(self.key)  # type: ignore[no-any-return]

    def __del__(self) -> None:
        self._close(self.key)


def native_capture(limit: int) -> NativeCapture | None:
    """A capture kept in C, or None where ``plugsafe._speedups`` is not in use (then the
    caller's Python sink serves, see OutputSink)."""
    if SPEEDUPS is None:
        return None
    return NativeCapture(SPEEDUPS, limit)


def outputs_alive() -> int:
    """How many custom outputs are held now, Python sinks and native captures (for tests)."""
    return len(_OUTPUTS) + (0 if SPEEDUPS is None else SPEEDUPS.capture_count())


class _Outputs:
    """The custom outputs one WASI configuration registered: forgotten by Python when the
    store it was given to is deleted (the store then calls them no more: a guest writes only
    during a call), or with the configuration if it never was given to one (``release`` is
    the configuration's ``Owned.also``)."""

    __slots__ = ("held", "keys")

    def __init__(self) -> None:
        self.keys: list[int] = []
        # Native captures, held (their C buffers with them) as long as the Python sinks are.
        self.held: list[NativeCapture] = []

    def add(self, sink: Callable[[bytes], object] | NativeCapture | None) -> tuple[Any, Any]:
        """Register ``sink``; the callback and ``data`` pointer to hand wasmtime for it.

        A :class:`NativeCapture` is written by C (no Python on wasmtime's thread) and held
        here; any other sink is a Python callable, called through _WRITE.
        """
        if sink is None:
            raise ValueError("a custom output needs a sink")
        if isinstance(sink, NativeCapture):
            self.held.append(sink)
            return sink.callback, ffi.cast("void *", sink.key)
        key = next(_OUTPUT_KEYS)
        _OUTPUTS[key] = sink
        self.keys.append(key)
        return _WRITE, ffi.cast("void *", key)

    def release(self, _outputs: dict[int, Callable[[bytes], object]] = _OUTPUTS) -> None:
        """Forget them (idempotent). (Bound as a default: it may run at shutdown.)"""
        keys, self.keys = self.keys, []
        self.held = []
        for key in keys:
            _outputs.pop(key, None)


def _write(data: Any, buf: Any, size: int) -> int:
    # A guest's write to a custom stdout or stderr. Nothing may raise into wasmtime: a failing
    # sink (or one forgotten already) is an I/O error for the guest (as with wasmtime-py's custom
    # outputs). The count is always all of it: wasmtime's stream panics (the process aborts,
    # measured on wasmtime 50) when told that fewer bytes (or more) were written; plugsafe's
    # sinks take everything.
    try:
        _OUTPUTS[int(ffi.cast("uintptr_t", data))](bytes(ffi.buffer(buf, size)) if size else b"")
        # Whatever the sink answered (more, less, negative, not a number): wasmtime trusts the
        # count, and only the whole write is safe to report.
        return size
    except BaseException:
        return -errno.EIO


# Made once, kept for the life of the process: wasmtime may call it from any store's WASI.
# (error=: if even the except path fails, the write fails, never a Python exception.)
_WRITE = ffi.callback("plugsafe_output_callback_t", _write, error=-errno.EIO)


class Linker:
    """The host functions one plugin may import, bound to that plugin's callbacks.

    ``backend`` is the one every instance made through this linker uses (the selected one
    unless a test asks for another).

    A Linker serves one plugin at a time. Once that plugin is closed and every store made
    through the Linker is closed (:meth:`retire`), a :class:`LinkerPool` may hand it to the
    next plugin of the same module, with the same host functions: :meth:`rebind` points each
    callback at the new plugin's functions, sinks and record, and the InstancePre is kept
    (issue 14: building a Linker, WASI's above all, was most of a load).
    """

    def __init__(self, engine: Engine, backend: Backend = DEFAULT) -> None:
        self.backend = backend
        self._caller = caller_class(backend)
        self._engine = engine
        # Never deleted in a forked child (see _forksafe: it could wait on a lock forever).
        self._linker = Owned(lib.wasmtime_linker_new(engine.ptr), lib.wasmtime_linker_delete)
        # What the host callbacks record, their spare traps (see HostRecord).
        self.record = HostRecord(backend.free_trap)
        # The callback objects (and the record with their spares) must outlive every store that
        # can call them.
        self._keep: list[object] = [self.record]
        self._pre: PreHandle | None = None
        self._pre_module: Module | None = None
        # Per-function scratch (argument buffer with its trap slot, struct layouts) shared by
        # every instance made from this linker: they belong to one Plugin, whose calls never
        # overlap (a later plugin gets the Linker only once every store of the first is closed).
        self.scratch: dict[str, Scratch] = {}
        # The backend's raw call, read once here: every instance binds it into each function
        # it looks up, and the property builds its typing cast on every read (~1 us).
        self.raw_call = backend.raw_call
        # What serves each defined callback, in definition order: a one-item list the C entry
        # reads on every call (rebind swaps the item), and the binding's (numeric, module, name).
        self._slots: list[list[Any]] = []
        self._shapes: list[tuple[bool, str, str]] = []
        # Every instance made through this Linker that may still be open (see retire), weakly.
        self._instances: list[weakref.ref[Any]] = []

    def define_func(
        self,
        module: str,
        name: str,
        params: Sequence[str],
        results: Sequence[str],
        callback: HostCallback,
        on_error: ErrorSink,
    ) -> None:
        """Define ``module.name`` with the given wasm types.

        If ``callback`` raises anything (BaseException included: nothing may unwind through
        wasmtime's C frames), the guest traps; once the trap is back out of wasm,
        ``on_error(exc)`` records the exception and returns the WasmFailure's message.
        """
        param_fields = tuple(params)
        result_fields = tuple(results)
        ok = self.backend.ok
        make_caller = self._caller
        record = self.record
        fid, message, trap_new = self._function(name, on_error)
        size = len(message)
        slot = self._slot(callback, False, module, name)

        def entry(_env: object, caller_ptr: CallerPtr, raw: RawSlots, _n: int) -> object:
            caller = None
            try:
                record.caller = caller_ptr
                caller = make_caller(caller_ptr)
                args = [getattr(raw[i], t) for i, t in enumerate(param_fields)]
                out = slot[0](caller, args)
                if result_fields:
                    assert out is not None
                    for i, t in enumerate(result_fields):
                        setattr(raw[i], t, out[i])
                caller._valid = False
                return ok
            except BaseException as exc:
                # Plain stores and one C call only: see HostRecord. Whatever fails from here on
                # still traps (onerror's trap, or the spare).
                if caller is not None:
                    caller._valid = False
                if record.pending is None:
                    record.pending = exc
                return trap_new(message, size)

        self._define(module, name, param_fields, result_fields, entry, fid, message)

    def define_numeric(
        self,
        module: str,
        name: str,
        params: Sequence[str],
        result: str | None,
        fn: Callable[..., object],
        on_error: ErrorSink,
    ) -> None:
        """Define ``module.name`` as ``fn(*values) -> value`` (or None with no result).

        For host functions that only take and return numbers: no Caller, no argument list, the
        result written straight into its slot. Failures go to ``on_error`` as for define_func.
        """
        fields = tuple(params)
        ok = self.backend.ok
        record = self.record
        fid, message, trap_new = self._function(name, on_error)
        size = len(message)
        slot = self._slot(fn, True, module, name)
        entry: HostEntry
        if len(fields) == 1 and result is not None:
            # The common shape (one number in, one out), with no loop at all.
            (field,) = fields

            def entry(_env: object, caller_ptr: CallerPtr, raw: RawSlots, _n: int) -> object:
                try:
                    record.caller = caller_ptr
                    value = raw[0]
                    setattr(value, result, slot[0](getattr(value, field)))
                    return ok
                except BaseException as exc:
                    if record.pending is None:
                        record.pending = exc
                    return trap_new(message, size)

        else:

            def entry(_env: object, caller_ptr: CallerPtr, raw: RawSlots, _n: int) -> object:
                try:
                    record.caller = caller_ptr
                    out = slot[0](*[getattr(raw[i], t) for i, t in enumerate(fields)])
                    if result is not None:
                        setattr(raw[0], result, out)
                    return ok
                except BaseException as exc:
                    if record.pending is None:
                        record.pending = exc
                    return trap_new(message, size)

        results = (result,) if result is not None else ()
        self._define(module, name, fields, results, entry, fid, message)

    def _function(
        self, name: str, on_error: ErrorSink
    ) -> tuple[int, bytes, Callable[[bytes, int], object]]:
        """Register host function ``name`` with the record: its index, trap message, trap maker."""
        record = self.record
        fid = len(record.names)
        record.names.append(name)
        record.sinks.append(on_error)
        message = f"plugsafe: host function {name!r} failed {record.marker(fid)}".encode()
        return fid, message, self.backend.trap_new

    def _slot(self, target: object, numeric: bool, module: str, name: str) -> list[Any]:
        slot = [target]
        self._slots.append(slot)
        self._shapes.append((numeric, module, name))
        return slot

    def define(self, binding: Binding) -> None:
        """Define one :class:`Binding` (``define_numeric`` or ``define_func``)."""
        if binding.numeric:
            result = binding.results[0] if binding.results else None
            self.define_numeric(binding.module, binding.name, binding.params, result,
                                binding.target, binding.on_error)  # fmt: skip
        else:
            self.define_func(binding.module, binding.name, binding.params, binding.results,
                             binding.target, binding.on_error)  # fmt: skip

    @property
    def reusable(self) -> bool:
        """No spare was used and Python never failed around its calls: it may serve again."""
        record = self.record
        return not record.spent and not record.leak

    def made(self, instance: object) -> None:
        """Remember ``instance`` (weakly), made through this Linker: ``retire`` closes it.
        (Instance.__init__ does the same inline.)"""
        refs = self._instances
        if len(refs) >= 8:
            # A plugin with fresh_instance makes one per call: forget the collected ones.
            refs[:] = [r for r in refs if r() is not None]
        refs.append(weakref.ref(instance))

    def retire(self) -> None:
        """Close every store made through this Linker (its plugin is closed: none may run)."""
        refs, self._instances = self._instances, []
        for ref in refs:
            inst = ref()
            if inst is not None:
                inst.release()
        self.record.caller = None
        self.record.pending = None

    def rebind(self, bindings: Sequence[Binding]) -> bool:
        """Serve another plugin: its targets and sinks replace the last plugin's, in order.

        Only for a Linker its pool took back (retired and reusable), and only with bindings of
        the same shape (the pool's key: the same module and host functions). False, changing
        nothing, if the shapes differ.
        """
        return self.retarget(
            [(b.numeric, b.module, b.name) for b in bindings],
            [b.target for b in bindings],
            [b.on_error for b in bindings],
        )

    def retarget(
        self,
        shapes: Sequence[tuple[bool, str, str]],
        targets: Sequence[Callable[..., Any]],
        sinks: Sequence[ErrorSink],
    ) -> bool:
        """:meth:`rebind` given each binding's (numeric, module, name), target and sink as
        three lists (a load rebinding WASI's shims makes no Binding objects for them)."""
        if list(shapes) != self._shapes or not self.reusable:
            return False
        if len(targets) != len(shapes) or len(sinks) != len(shapes):
            return False
        record_sinks = self.record.sinks
        for i, slot in enumerate(self._slots):
            slot[0] = targets[i]
            record_sinks[i] = sinks[i]
        self.record.caller = None
        self.record.pending = None
        return True

    def _define(
        self,
        module: str,
        name: str,
        params: tuple[str, ...],
        results: tuple[str, ...],
        entry: HostEntry,
        fid: int,
        message: bytes,
    ) -> None:
        backend = self.backend
        record = self.record
        trap_new = backend.trap_new
        size = len(message)

        def onerror(_type: object, exc: object, _tb: object) -> object:
            # cffi calls this when the entry itself failed (it could not even start, or its
            # except path failed): record if nothing was, and trap with a fresh trap.
            if record.pending is None:
                record.pending = exc  # type: ignore[assignment]  # cffi passes the exception
            return trap_new(message, size)

        spare_text = (
            f"plugsafe: host function {name!r} could not run {record.marker(fid, spare=True)}"
        ).encode()
        spare = trap_new(spare_text, len(spare_text))
        record.spares.append(spare)
        ty = self._engine.functype(params, results)
        cb = backend.define_func(
            address(self._linker.raw), module.encode(), name.encode(), address(ty.raw),
            max(len(params), len(results), 1), entry, spare, onerror,
        )  # fmt: skip
        self._keep.append((cb, ty))

    def define_wasi(self) -> None:
        """Offer wasmtime's WASI preview 1 functions (the store's WASI configuration says what
        they see).

        Later definitions may shadow individual WASI functions (plugsafe replaces poll_oneoff).
        """
        linker = self._linker.raw
        lib.wasmtime_linker_allow_shadowing(linker, True)
        error = lib.wasmtime_linker_define_wasi(linker)
        if error:
            raise failure_from_addresses(address(error), 0)

    @property
    def spent(self) -> bool:
        """A callback returned its spare trap: build a new Linker before the next instance."""
        return self.record.spent

    def caller(self) -> Caller | None:
        """A Caller for the host call running now on this Linker's callbacks, if any.

        Only for the owner thread while one of its host callbacks runs (``Plugin.memory`` during
        instantiation): outside a host call the pointer is stale.
        """
        ptr = self.record.caller
        return None if ptr is None else self._caller(CallerPtr(ptr))

    def prepare(self, module: Module) -> None:
        """Type-check imports once (an InstancePre); later instantiations skip that work."""
        if self._pre is not None and self._pre_module is module:
            return  # a pooled Linker, prepared for this very module
        out = ffi.new("wasmtime_instance_pre_t **")
        error = lib.wasmtime_linker_instantiate_pre(self._linker.raw, module._module.raw, out)
        if error:
            raise failure_from_addresses(address(error), 0)
        # Never deleted in a forked child (see _forksafe: it could wait on a lock forever).
        pre = Owned(out[0], lib.wasmtime_instance_pre_delete)
        self._pre = self.backend.pre(pre)
        self._pre_module = module


class LinkerPool:
    """Linkers of closed plugins, by what they define, for the next plugin that needs the same.

    One per Host (its host functions are the Host's). A key names the engine, the module and
    every function defined (the pool never asks what a key means: the Plugin builds it). At
    most ``per_key`` Linkers wait per key and ``keys`` keys are kept (the oldest is dropped).
    Lock-free on purpose (each step is one dict or list operation, atomic under the GIL): a
    lock held by another thread at a fork would be held forever in the child.
    """

    def __init__(self, per_key: int = 4, keys: int = 64) -> None:
        self._free: dict[object, list[Linker]] = {}
        self._per_key = per_key
        self._keys = keys

    def take(self, key: object) -> Linker | None:
        """A retired Linker for ``key``, now the caller's alone; None if none waits."""
        free = self._free.get(key)
        if not free:
            return None
        try:
            return free.pop()
        except IndexError:  # another thread took the last one
            return None

    def give(self, key: object, linker: Linker) -> None:
        """Take back ``linker``, whose plugin is closed: its stores are closed here first."""
        if not linker.reusable:
            return
        linker.retire()
        free = self._free.get(key)
        if free is None:
            while len(self._free) >= self._keys:
                try:
                    del self._free[next(iter(self._free))]
                except (KeyError, StopIteration, RuntimeError):
                    break
            free = self._free.setdefault(key, [])
        if len(free) < self._per_key and linker not in free:  # (Linkers compare by identity)
            free.append(linker)

    def clear(self) -> None:
        """Forget every waiting Linker."""
        self._free.clear()

    def __len__(self) -> int:
        return sum(len(v) for v in list(self._free.values()))
