"""Every exception plugsafe raises.

The tree, which ``docs/errors.md`` explains case by case::

    PlugsafeError                      root of everything plugsafe raises
    ├── PolicyError                    a bad policy value or file (``.field``, ``.path``)
    ├── PluginLoadError                the plugin could not be loaded
    │   ├── InvalidModuleError         empty, not wasm, truncated, invalid, too large
    │   ├── ImportNotAllowedError      imports the host does not offer or the policy forbids
    │   └── AbiVersionError            the plugin declares an ABI version plugsafe does not speak
    ├── PluginCallError                a call into the plugin failed
    │   ├── PluginTrap                 the guest trapped (``.trap_code``)
    │   ├── HostFunctionError          a host function raised (``__cause__`` is the exception)
    │   ├── AbiError                   a bad pointer/length/value crossing the ABI
    │   │   └── MemoryAccessError      ``plugin.memory`` read/write out of range
    │   ├── GuestError                 the plugin reported a failure (``.message``)
    │   ├── ExportNotFoundError        no such export
    │   ├── SignatureError             wrong arguments for an export's signature
    │   └── PluginExitError            a WASI program called proc_exit (``.exit_code``)
    ├── LimitExceeded                  a policy limit stopped a call or a load (``.phase``)
    │   ├── FuelExhausted
    │   ├── DeadlineExceeded
    │   ├── MemoryLimitExceeded
    │   ├── HostCallLimitExceeded
    │   ├── PoolExhausted          every slot of the Host's pooling allocator is taken
    │   └── StackLimitExceeded      nested plugin calls would overrun the thread's stack
    └── PluginClosedError              the plugin or host was used after ``close()``

``LimitExceeded`` is raised both while loading (a start function that loops, an initial memory
over the cap) and while calling; ``.phase`` says which.

Every one of them pickles (``PlugsafeError.__reduce__``): a ``FuelExhausted`` raised in a
``ProcessPoolExecutor`` worker reaches the parent as a ``FuelExhausted``, with its message and
attributes, instead of breaking the pool.
"""

from __future__ import annotations

import copyreg
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Protocol

from ._lazymodule import import_now

if TYPE_CHECKING:
    from dataclasses import dataclass
else:  # plugsafe's own, without importing dataclasses (see _dataclass_code)
    from ._dataclass_code import dataclass

__all__ = [
    "AbiError",
    "AbiVersionError",
    "DeadlineExceeded",
    "ExportNotFoundError",
    "FuelExhausted",
    "GuestError",
    "HostCallLimitExceeded",
    "HostFunctionError",
    "ImportNotAllowedError",
    "ImportProblem",
    "InvalidModuleError",
    "LimitExceeded",
    "MemoryAccessError",
    "MemoryLimitExceeded",
    "PluginCallError",
    "PluginClosedError",
    "PluginExitError",
    "PluginLoadError",
    "PluginTrap",
    "PlugsafeError",
    "PolicyError",
    "PoolExhausted",
    "SignatureError",
    "StackLimitExceeded",
]

Phase = Literal["load", "call"]


class PlugsafeError(Exception):
    """Root of every exception plugsafe raises.

    Every plugsafe error pickles and unpickles to the same type, message and attributes (so it
    can cross a process boundary: ``ProcessPoolExecutor``, ``multiprocessing``), and so do
    subclasses an app derives from these classes. The ``__cause__`` travels too when it can be
    rebuilt on the other side; :class:`HostFunctionError` also keeps the cause's class and text
    (``cause_type``, ``cause_message``) for when it cannot.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's own __reduce__ rebuilds with ``type(self)(*self.args)``, which fails for
        # every class here whose constructor takes other arguments than the message (keyword-only
        # ``limit=``, ``function=``; GuestError's three parts), and an exception that cannot be
        # unpickled breaks a whole ProcessPoolExecutor. So: rebuild without calling __init__
        # (``cls.__new__(cls, *args)``, which sets ``args`` and so the message) and restore the
        # attributes from the instance dict, whatever the class's constructor looks like.
        state = dict(self.__dict__)
        cause = self.__cause__
        if cause is not None:
            blob = _pickled(cause)
            if blob is not None:
                state[_CAUSE_KEY] = blob
        return (_NEWOBJ, (type(self), *self.args), state)

    def __setstate__(self, state: dict[str, Any] | None) -> None:
        state = dict(state or {})
        blob = state.pop(_CAUSE_KEY, None)
        self.__dict__.update(state)
        if isinstance(blob, bytes):
            cause = _unpickled(blob)
            if cause is not None:
                self.__cause__ = cause


# ``cls.__new__(cls, *args)``, which pickle's protocol 2 writes as a single NEWOBJ opcode (and
# older protocols as a call). Missing from typeshed, present in every CPython since 2.3.
_NEWOBJ: Callable[..., Any] = copyreg.__newobj__  # type: ignore[attr-defined]

# The cause is pickled separately, as bytes inside the error's state, so that a cause the other
# process cannot rebuild (its class is not importable there, its constructor needs other
# arguments) costs only the cause, never the error.
_CAUSE_KEY = "_plugsafe_cause"


def _pickled(exc: BaseException) -> bytes | None:
    """``exc`` pickled, if it pickles and unpickles here; else None."""
    # Only when an error is pickled: ~3 ms off every start-up (issue 14); never half done
    # across a fork (_lazymodule).
    pickle: Any = import_now("pickle")

    try:
        blob: bytes = pickle.dumps(exc)
        pickle.loads(blob)
    except Exception:  # any failure means: leave the cause behind
        return None
    return blob


def _unpickled(blob: bytes) -> BaseException | None:
    pickle: Any = import_now("pickle")

    try:
        value = pickle.loads(blob)
    except Exception:  # any failure means: arrive without the cause
        return None
    return value if isinstance(value, BaseException) else None


def _qualified(cls: type) -> str:
    """A class's name as a person would import it (``"KeyError"``, ``"myapp.errors.Missing"``)."""
    module = getattr(cls, "__module__", None)
    if module in (None, "builtins", "__main__"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


class PolicyError(PlugsafeError, ValueError):
    """A policy value, policy file or host config file is invalid.

    ``field`` names the offending :class:`Policy` field (``None`` if not one). ``path`` is where
    the bad value sits in a policy file, host config file or dict, as dotted keys such as
    ``"limits.fuel"`` or ``"plugins.greet.sha256"`` (``None`` for a ``Policy(...)`` call, or an
    error about a whole file, such as invalid TOML).
    """

    def __init__(self, message: str, *, field: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.path = path


class PluginLoadError(PlugsafeError):
    """The plugin could not be loaded; nothing of it is left running."""


class InvalidModuleError(PluginLoadError):
    """The bytes are not a valid WebAssembly module that plugsafe will compile.

    Raised for empty input, input that is neither wasm nor WAT, truncated or invalid modules,
    modules that use disabled WebAssembly features, and modules over ``Policy.max_module_size``.
    """


@dataclass(frozen=True)
class ImportProblem:
    """One import a plugin may not have.

    ``reason`` is ``"unknown"`` (the host offers nothing by that name), ``"not allowed"`` (the host
    has it but the policy does not allow it) or ``"wrong type"`` (allowed, but the plugin declares
    a different signature). ``detail`` says more in words.
    """

    module: str
    name: str
    reason: Literal["unknown", "not allowed", "wrong type"]
    detail: str

    def __str__(self) -> str:
        return f"{self.module}.{self.name} ({self.reason}: {self.detail})"


class ImportNotAllowedError(PluginLoadError):
    """The plugin imports things this host or policy does not give it.

    ``problems`` lists every offending import, not just the first.
    """

    def __init__(self, plugin: str, problems: Sequence[ImportProblem]) -> None:
        self.plugin = plugin
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"plugin {plugin!r} has {len(self.problems)} import(s) it may not have:\n{lines}"
        )

    @property
    def imports(self) -> tuple[str, ...]:
        """The offending imports as ``module.name`` strings."""
        return tuple(f"{p.module}.{p.name}" for p in self.problems)


class AbiVersionError(PluginLoadError):
    """The plugin declares a plugin-ABI version this plugsafe does not implement."""

    def __init__(self, plugin: str, declared: int, supported: int) -> None:
        self.declared = declared
        self.supported = supported
        super().__init__(
            f"plugin {plugin!r} declares plugsafe ABI version {declared}, "
            f"but this plugsafe implements ABI version {supported}"
        )


class PluginCallError(PlugsafeError):
    """A call into a plugin failed."""


class PluginTrap(PluginCallError):
    """The guest trapped.

    The message is one line (which plugin, which function, why). ``trap_code`` is wasmtime's
    code name (e.g. ``"UNREACHABLE"``) or None; ``backtrace`` is wasmtime's full report, wasm
    backtrace included (several lines), or None.
    """

    def __init__(
        self, message: str, *, trap_code: str | None = None, backtrace: str | None = None
    ) -> None:
        super().__init__(message)
        self.trap_code = trap_code
        self.backtrace = backtrace


# The name a class was made with (a metaclass may answer ``__name__`` its own way, or raise).
_TYPE_NAME: Callable[[type], str] = type.__dict__["__name__"].__get__


def type_name(cls: type) -> str:
    """The name of ``cls`` for a message: never asks the class (fuzz9)."""
    return _TYPE_NAME(cls)


def text_of(exc: BaseException) -> str:
    """``str(exc)`` for a message, a plain str, or ``<Class: str() raised>`` when the app's
    ``__str__`` raises (an error about the app's exception must not become that exception's
    own)."""
    try:
        text = str(exc)
    except Exception:
        return f"<{type_name(type(exc))}: str() raised>"
    return text if type(text) is str else str.__str__(text)


class HostFunctionError(PluginCallError):
    """A host function raised while the plugin called it; ``__cause__`` is that exception.

    ``function`` is the host function's name. ``cause_type`` (the exception's class, qualified
    by its module unless built in: ``"KeyError"``, ``"myapp.errors.Missing"``) and
    ``cause_message`` (its ``str()``) say what it raised even where ``__cause__`` is gone: after
    pickling into a process that cannot rebuild the app's exception, or in a
    ``ProcessPoolExecutor`` parent, where ``__cause__`` is the worker's traceback.
    """

    def __init__(self, message: str, *, function: str) -> None:
        super().__init__(message)
        self.function = function

    @property
    def cause_type(self) -> str | None:
        """The class of the exception the host function raised, or None if none is known."""
        saved = self.__dict__.get(_CAUSE_TEXT)
        if saved is not None:
            return str(saved[0])
        cause = self.__cause__
        return None if cause is None else _qualified(type(cause))

    @property
    def cause_message(self) -> str | None:
        """``str()`` of the exception the host function raised, or None if none is known."""
        saved = self.__dict__.get(_CAUSE_TEXT)
        if saved is not None:
            return str(saved[1])
        cause = self.__cause__
        return None if cause is None else text_of(cause)

    def __reduce__(self) -> tuple[Any, ...]:
        rebuild, args, state = super().__reduce__()
        if _CAUSE_TEXT not in state and self.__cause__ is not None:
            # Frozen as text now: on the other side __cause__ may not survive (see above).
            state[_CAUSE_TEXT] = (self.cause_type, self.cause_message)
        return (rebuild, args, state)


_CAUSE_TEXT = "_plugsafe_cause_text"


class AbiError(PluginCallError):
    """A value crossing the plugin ABI is invalid.

    A pointer or length from the guest outside its memory, an output over ``max_output``, an
    input over ``max_input``, invalid UTF-8 where text is required, a missing ABI export.
    """


class MemoryAccessError(AbiError, IndexError):
    """``plugin.memory.read``/``write`` was asked for bytes outside the memory."""


class GuestError(PluginCallError):
    """The plugin reported a failure; ``message`` is its text."""

    def __init__(self, plugin: str, function: str, message: str) -> None:
        self.plugin = plugin
        self.function = function
        self.message = message
        super().__init__(f"plugin {plugin!r} function {function!r} failed: {message}")


class ExportNotFoundError(PluginCallError, LookupError):
    """The plugin has no export of that name (or it is not a function)."""


class SignatureError(PluginCallError, TypeError):
    """The arguments do not fit the export's signature, or the export does not fit the ABI."""


class PluginExitError(PluginCallError):
    """A WASI plugin called ``proc_exit`` during ``call``/``invoke``; ``exit_code`` is its code.

    ``Plugin.run`` does not raise this: there an exit is the normal end, in ``RunResult``.
    """

    def __init__(self, message: str, *, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class LimitExceeded(PlugsafeError):
    """A policy limit stopped the plugin.

    ``limit`` is the policy field (``"fuel"``, ``"timeout"``, ``"memory"``, ``"max_host_calls"``),
    ``value`` its value, ``phase`` is ``"load"`` or ``"call"``.
    """

    def __init__(self, message: str, *, limit: str, value: object, phase: Phase) -> None:
        super().__init__(message)
        self.limit = limit
        self.value = value
        self.phase = phase


class FuelExhausted(LimitExceeded):
    """The plugin used all the fuel (wasm instructions) its policy gives one call."""


class DeadlineExceeded(LimitExceeded):
    """The plugin ran longer than its policy's wall-clock timeout."""


class MemoryLimitExceeded(LimitExceeded):
    """The plugin needed more linear memory than its policy allows."""


class HostCallLimitExceeded(LimitExceeded):
    """The plugin made more host-function calls in one call than its policy allows."""


class PoolExhausted(LimitExceeded):
    """Every slot of the Host's pooling allocator (``Host(pooling=Pooling(...))``) is taken.

    Raised at once, before anything of the plugin runs, by a load or by a call that needed a
    new instance (``fresh_instance``, or the first call after a trap). ``limit`` is
    ``"pooling.instances"`` (or ``"pooling.memories"``, ``"pooling.tables"``), ``value`` the
    number of slots. Closing plugins gives their slots back; the plugin itself is unchanged.
    """


class StackLimitExceeded(LimitExceeded):
    """A call was refused: it would overrun the native stack of the thread making it.

    Each plugin call may use its Host's ``max_stack`` of native stack, and a call made from a
    host function (plugin A -> host function -> plugin B -> ...) stacks on top of the calls it
    is nested in. plugsafe counts, per thread, the calls running and the stack they may use, and
    refuses a call (before any wasm runs, ``phase="call"``) that would nest deeper than
    ``value`` levels (``limit="nesting"``) or need more stack than the thread has left
    (``limit="max_stack"``, ``value`` the Host's ``max_stack``; a thread smaller than
    ``max_stack`` refuses even an outermost call). Nothing of the plugin changed: the calls
    outside it go on.
    """


class PluginClosedError(PlugsafeError):
    """The plugin (or the host that owns it) was used after ``close()``."""


# -- translating a failed wasm call ---------------------------------------------------------------
#
# Everything below is internal (not in __all__): how a failure the runtime reports becomes one of
# the errors above. A Plugin builds one Diagnosis when it loads; the call path asks it.

_PAGE = 65536


def fmt_bytes(n: int) -> str:
    """``n`` bytes for people: the largest binary unit that divides it exactly, else bytes.

    Exact on purpose: error messages compare a need with a cap, and a rounded "1.5 MiB" could
    hide the byte that made the difference.
    """
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def int_text(value: int) -> str:
    """An int for an error message: its digits when short, else its size. ``str()`` of an int
    past Python's 4,300-digit limit raises ValueError (and would be a huge message anyway);
    the app, a policy file or a dict may hand plugsafe any int (fuzz9)."""
    value = int.__index__(value)  # the int itself: a subclass's own __str__ may lie or raise
    if value.bit_length() <= 128:
        return str(value)
    sign = "a negative" if value < 0 else "an"
    return f"{sign} integer of {value.bit_length()} bits"


def short_trap(message: str) -> str:
    """wasmtime's trap text ends with the reason after a backtrace; keep the reason."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "trap"
    return lines[-1].removeprefix("wasm trap: ")


# Typing-only protocols (issue 14: a Protocol class costs about 0.4 M instructions to create,
# and nothing uses these at run time: every mention is an annotation).
if TYPE_CHECKING:

    class Failure(Protocol):
        """What the runtime reports about a failed wasm call (``_runtime.WasmFailure``)."""

        message: str
        trap_code: str | None
        exit_code: int | None

    class CallRecord(Protocol):
        """What the translation reads of a plugin's call state (``_callpath.CallState``)."""

        @property
        def phase(self) -> Phase: ...

        def take_error(self) -> BaseException | None: ...

    class Memories(Protocol):
        """The memory sizes of the instance a failure happened in (``_runtime.Instance``)."""

        def memory_size(self) -> int: ...

        def memory_total(self) -> int: ...


@dataclass(frozen=True)
class Diagnosis:
    """One plugin's limits, and the single translation from a failed wasm call to an error.

    ``memory_per`` is the cap of each of the plugin's memories (the policy's ``memory`` split
    over them).
    """

    plugin: str
    fuel: int | None
    timeout: float | None
    memory: int
    memory_per: int

    def deadline(self, function: str, phase: Phase, detail: str = "") -> DeadlineExceeded:
        """The plugin ran past its timeout in ``function`` (``detail`` says where we noticed)."""
        return DeadlineExceeded(
            f"plugin {self.plugin!r} in {function!r} ran past the policy's timeout of "
            f"{self.timeout:g} s{detail}",
            limit="timeout",
            value=self.timeout,
            phase=phase,
        )

    def _fuel(self, function: str, phase: Phase, _failure: Failure) -> LimitExceeded:
        return FuelExhausted(
            f"plugin {self.plugin!r} in {function!r} used all {self.fuel} units of fuel the "
            "policy allows per call",
            limit="fuel",
            value=self.fuel,
            phase=phase,
        )

    def _interrupt(self, function: str, phase: Phase, _failure: Failure) -> LimitExceeded:
        return self.deadline(function, phase)

    def memory_error(self, message: str, phase: Phase) -> MemoryLimitExceeded:
        """The memory limit, with ``message``."""
        return MemoryLimitExceeded(message, limit="memory", value=self.memory, phase=phase)

    def translate(
        self, failure: Failure, state: CallRecord, function: str, inst: Memories | None
    ) -> BaseException:
        """Decide what a failed wasm call means, from the call's own record first.

        ``state`` is the plugin's call state: what a host function of *this* plugin raised
        during the call (``take_error``: already the error to raise, or a nested failure to
        translate) and the phase the work ran in. wasmtime-py keeps host exceptions in a
        module-global shared by every thread, so plugsafe never relies on it; and the phase is
        the state's, never a guess of the code that noticed the limit (a host function cannot
        know whether it was called from a start function).
        """
        return self._translate(failure, state.take_error(), function, inst, state.phase)

    def _translate(
        self,
        failure: Failure,
        recorded: BaseException | None,
        function: str,
        inst: Memories | None,
        phase: Phase,
    ) -> BaseException:
        if recorded is not None:
            if isinstance(recorded, _failure_type()):
                return self._translate(recorded, None, function, inst, phase)  # type: ignore[arg-type]
            if isinstance(recorded, LimitExceeded):
                # Raised by plugsafe's own host-side checks during this work (quota, deadline,
                # placing a result): the state knows whether that was a load or a call.
                recorded.phase = phase
            return recorded
        where = f"plugin {self.plugin!r} in {function!r}"
        if failure.exit_code is not None:
            return PluginExitError(
                f"{where} called proc_exit({failure.exit_code})", exit_code=failure.exit_code
            )
        code = failure.trap_code
        limit = _LIMIT_TRAPS.get(code) if code is not None else None
        if limit is not None:
            return limit(self, function, phase, failure)
        reason = short_trap(failure.message)
        if code is None:
            # Not a trap: wasmtime's own error (instantiation, a resource limit).
            if "memory" in reason and ("limit" in reason or "minimum" in reason):
                return self.memory_error(f"{where}: {reason}", phase)
            if phase == "load":
                return PluginLoadError(f"{where}: {reason}")
        elif inst is not None and self._memory_exhausted(inst, code):
            return self.memory_error(
                f"{where} trapped ({reason}) with its memory at "
                f"{fmt_bytes(inst.memory_total())} of the policy's "
                f"{fmt_bytes(self.memory)}: a memory.grow was refused",
                phase,
            )
        # One line for people and logs; wasmtime's multi-line report stays on the exception.
        return PluginTrap(
            f"{where} trapped: {reason}", trap_code=code, backtrace=failure.message.strip()
        )

    def _memory_exhausted(self, inst: Memories, code: str) -> bool:
        """Guess whether a trap followed a refused ``memory.grow``.

        WebAssembly reports a refused growth only to the guest (``memory.grow`` returns -1), and
        wasmtime's C API cannot make it trap. Allocators then trap (``unreachable``). So: a trap
        with a memory less than a page from its cap, or an ``unreachable`` with a memory that
        could not have doubled, is reported as the memory limit. docs/errors.md explains this.
        """
        limit = self.memory_per
        size = inst.memory_size()
        if size == 0 or limit == 0:
            return False
        if size + _PAGE > limit:
            return True
        return code == "UNREACHABLE" and size * 2 > limit


# The trap codes that mean a policy limit stopped the call (any other code is a PluginTrap, or
# the memory limit by Diagnosis._memory_exhausted's guess).
_LIMIT_TRAPS: dict[str, Callable[[Diagnosis, str, Phase, Failure], LimitExceeded]] = {
    "OUT_OF_FUEL": Diagnosis._fuel,
    "INTERRUPT": Diagnosis._interrupt,
}


def _failure_type() -> type[Exception]:
    # Imported late: _runtime loads wasmtime, which the error tree must not need.
    from ._runtime import WasmFailure

    return WasmFailure


def raise_clean(err: BaseException) -> NoReturn:
    """Raise ``err`` from its own ``__cause__``, keeping no reference to it in any frame.

    A frame that holds, as a local, the exception it raises makes a reference cycle (exception,
    traceback, frame, exception): every local of the frames in between, the discarded instance
    and its store among them, would then live until the garbage collector ran. Call this with
    the exception as an expression, never bound to a local.
    """
    try:
        raise err from err.__cause__
    finally:
        del err
