"""Host functions: their signatures, the built-in ``log``, marshalling, and the one error sink.

A host function is registered on the Host as a :class:`BoundFunction`; each Plugin binds the ones
its module imports through a :class:`HostCalls`. Every callback runs inside the runtime's entry
(``_runtime.Linker``), which catches any BaseException (nothing may unwind into wasmtime's C
frames), stores it and traps the guest; once the trap is back out of wasm the runtime hands the
exception to :meth:`HostCalls.on_error`, and :meth:`HostCalls.typed` is the single place where
a host failure becomes this call's documented error (``CallState.error``) for the caller.
"""

from __future__ import annotations

import inspect
import logging
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from . import _abi
from . import _runtime as rt
from ._callpath import CallState
from ._errors import (
    AbiError,
    DeadlineExceeded,
    Diagnosis,
    HostCallLimitExceeded,
    HostFunctionError,
    PlugsafeError,
)
from ._log import LEVELS, escape
from ._policy import Policy

__all__ = [
    "BUILTIN_FUNCTIONS",
    "BoundFunction",
    "HostCalls",
    "HostSignature",
    "ParamKind",
    "ResultKind",
    "signature_from_annotations",
]

_perf_counter = time.perf_counter
_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1

ParamKind = Literal["int", "float", "bool", "bytes", "str"]
ResultKind = Literal["none", "int", "float", "bool", "bytes", "str", "bytes?", "str?"]

_WASM_PARAMS: dict[str, tuple[str, ...]] = {
    "int": ("i64",),
    "float": ("f64",),
    "bool": ("i32",),
    "bytes": ("i32", "i32"),
    "str": ("i32", "i32"),
}
_WASM_RESULTS: dict[str, tuple[str, ...]] = {
    "none": (),
    "int": ("i64",),
    "float": ("f64",),
    "bool": ("i32",),
    "bytes": ("i64",),
    "str": ("i64",),
    "bytes?": ("i64",),
    "str?": ("i64",),
}
_SCALARS: dict[Any, str] = {int: "int", float: "float", bool: "bool", bytes: "bytes", str: "str"}


@dataclass(frozen=True)
class HostSignature:
    """How a Python host function maps onto wasm: its parameter and result kinds."""

    params: tuple[ParamKind, ...]
    result: ResultKind

    @property
    def wasm_params(self) -> tuple[str, ...]:
        """The wasm parameter types, in order."""
        return tuple(t for p in self.params for t in _WASM_PARAMS[p])

    @property
    def wasm_results(self) -> tuple[str, ...]:
        """The wasm result types (zero or one)."""
        return _WASM_RESULTS[self.result]


def _result_kind(annotation: Any, where: str) -> ResultKind:
    if annotation is None or annotation is type(None):
        return "none"
    if annotation in _SCALARS:
        return typing.cast(ResultKind, _SCALARS[annotation])
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2 and args[0] in (bytes, str):
            return typing.cast(ResultKind, _SCALARS[args[0]] + "?")
    raise TypeError(
        f"{where}: return annotation {annotation!r} is not supported "
        "(use int, float, bool, bytes, str, bytes | None, str | None or None)"
    )


def signature_from_annotations(fn: Callable[..., Any], name: str) -> HostSignature:
    """Derive the wasm signature of host function ``fn`` from its type annotations."""
    where = f"host function {name!r}"
    try:
        hints = typing.get_type_hints(fn)
        sig = inspect.signature(fn)
    except (NameError, TypeError, ValueError) as exc:
        raise TypeError(f"{where}: cannot read its annotations: {exc}") from exc
    params: list[ParamKind] = []
    for p in sig.parameters.values():
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            raise TypeError(f"{where}: parameter {p.name!r} must be positional (no *args/**kw)")
        if p.name not in hints:
            raise TypeError(f"{where}: parameter {p.name!r} has no type annotation")
        ann = hints[p.name]
        if ann not in _SCALARS:
            raise TypeError(
                f"{where}: parameter {p.name!r} is annotated {ann!r}; "
                "use int, float, bool, bytes or str"
            )
        params.append(typing.cast(ParamKind, _SCALARS[ann]))
    if "return" not in hints:
        raise TypeError(
            f"{where}: it has no return annotation (write '-> None' if it returns none)"
        )
    return HostSignature(tuple(params), _result_kind(hints["return"], where))


@dataclass(frozen=True)
class BoundFunction:
    """A host function as a plugin sees it (built by the Host).

    An app's function is called with Python values converted per ``signature``. A ``builtin``
    is plugsafe's own: it is called as ``fn(calls, caller, *wasm_args)`` with the plugin's
    :class:`HostCalls`, the :class:`~plugsafe._runtime.Caller` and the raw wasm arguments.
    """

    name: str
    fn: Callable[..., Any]
    signature: HostSignature
    builtin: bool = False
    # The wasm (params, results); derived from ``signature`` unless a built-in fixes its own.
    wasm_override: tuple[tuple[str, ...], tuple[str, ...]] | None = None

    @property
    def wasm(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The wasm parameter and result types the import must have."""
        if self.wasm_override is not None:
            return self.wasm_override
        return self.signature.wasm_params, self.signature.wasm_results


class _AppError(Exception):
    """Wraps what an app-defined host function raised, to tell it from plugsafe's own errors."""

    def __init__(self, function: str, exc: BaseException) -> None:
        super().__init__(function)
        self.function = function
        self.exc = exc


class HostCalls:
    """One plugin's host functions: the checks every host call makes, and the error sink.

    ``state`` is the plugin's CallState (one object for its lifetime, so callbacks hold it
    directly instead of looking it up per call).
    """

    def __init__(
        self,
        *,
        name: str,
        policy: Policy,
        state: CallState,
        diagnosis: Diagnosis,
        logger: logging.Logger,
    ) -> None:
        self.name = name
        self.policy = policy
        self.state = state
        self.diagnosis = diagnosis
        self.logger = logger
        self.quota = 2**64 if policy.max_host_calls is None else policy.max_host_calls
        self.timeout = policy.timeout

    # -- the one error sink ---------------------------------------------------------------------

    def on_error(self, exc: BaseException, function: str | None = None) -> str:
        """Record why a host callback failed (the call's first failure wins); the trap text.

        The runtime calls this once the callback's trap is back out of wasm, in plain Python
        (the callback itself only stored the exception: see ``_runtime.HostRecord``).
        """
        state = self.state
        if state.error is None:
            state.error = self.typed(exc, function)
        if isinstance(exc, _AppError):
            return f"plugsafe: host function {exc.function!r} raised {type(exc.exc).__name__}"
        return f"plugsafe: {type(exc).__name__}"

    def sink(self, function: str | None) -> Callable[[BaseException], str]:
        """The error sink for host function ``function`` (None: WASI's shims)."""

        def sink(exc: BaseException) -> str:
            return self.on_error(exc, function)

        return sink

    def typed(self, exc: BaseException, function: str | None) -> BaseException:
        """The documented error for what a host callback raised: the one conversion.

        An app function's exception becomes a HostFunctionError with it as ``__cause__``
        (KeyboardInterrupt, SystemExit and the like are kept as they are, to propagate
        unchanged); plugsafe's own errors, and a nested WasmFailure (the guest's allocator
        trapped), are kept for the caller to raise. Anything else was raised by plugsafe's own
        marshalling (an unencodable result, the recursion limit reached in it, ...): it becomes a
        HostFunctionError too, so that no internal exception type ever reaches the app.
        """
        if isinstance(exc, _AppError):
            return self._app_error(exc)
        if isinstance(exc, (PlugsafeError, rt.WasmFailure)) or not isinstance(exc, Exception):
            return exc
        name = function or "(a WASI function)"
        if isinstance(exc, rt.GuestMemoryError):
            return AbiError(
                f"plugin {self.name!r} passed a bad pointer to host function {name!r}: {exc}"
            )
        err = HostFunctionError(
            f"host function {name!r} failed in plugsafe's handling of its arguments or result: "
            f"{type(exc).__name__}: {exc} (called by plugin {self.name!r} in "
            f"{self.state.function!r})",
            function=name,
        )
        err.__cause__ = exc
        return err

    def _app_error(self, raised: _AppError) -> BaseException:
        exc = raised.exc
        if not isinstance(exc, Exception):
            return exc
        err = HostFunctionError(
            f"host function {raised.function!r} raised {type(exc).__name__}: {exc} "
            f"(called by plugin {self.name!r} in {self.state.function!r})",
            function=raised.function,
        )
        err.__cause__ = exc
        return err

    # -- what every host call checks ------------------------------------------------------------

    def enter(self, function: str) -> None:
        """Count a host call against the quota and check the deadline."""
        state = self.state
        state.host_calls += 1
        if state.host_calls > self.quota:
            raise self.too_many(function)
        # wasm checks its deadline only at function entries and loop back-edges: without this,
        # a run of host calls in straight-line code could stretch the call far past it.
        timeout = self.timeout
        if timeout is not None and _perf_counter() > state.start + timeout:
            raise self.late(function)

    def late(self, function: str) -> DeadlineExceeded:
        """The deadline passed, noticed when the plugin called host function ``function``."""
        return self.diagnosis.deadline(
            self.state.function, "call", f" (noticed when it called {function!r})"
        )

    def too_many(self, function: str) -> HostCallLimitExceeded:
        """The plugin made more host calls than its policy allows; the last was ``function``."""
        quota = self.policy.max_host_calls
        return HostCallLimitExceeded(
            f"plugin {self.name!r} in {self.state.function!r} made more than {quota} host "
            f"function calls (policy max_host_calls); the last was {function!r}",
            limit="max_host_calls",
            value=quota,
            phase="call",
        )

    # -- binding ----------------------------------------------------------------------------------

    def define(self, linker: rt.Linker, bound: BoundFunction) -> None:
        """Define ``bound`` in ``linker`` as ``plugsafe.<name>`` for this plugin."""
        params, results = bound.wasm
        sig = bound.signature
        if bound.builtin:
            callback = self._builtin(bound)
        elif all(k in ("int", "float") for k in sig.params) and sig.result in (
            "int",
            "float",
            "none",
        ):
            # Numbers in, a number (or nothing) out: the common shape for counters and lookups
            # by id, called with no Caller and no conversion.
            linker.define_numeric(
                _abi.HOST_MODULE, bound.name, params, results[0] if results else None,
                self._numeric(bound), self.sink(bound.name),
            )  # fmt: skip
            return
        else:
            callback = self._marshalled(bound)
        sink = self.sink(bound.name)
        linker.define_func(_abi.HOST_MODULE, bound.name, params, results, callback, sink)

    def _builtin(self, bound: BoundFunction) -> rt.HostCallback:
        name = bound.name
        fn = bound.fn
        enter = self.enter

        def builtin(caller: rt.Caller, args: list[Any]) -> Any:
            enter(name)
            return fn(self, caller, *args)

        return builtin

    def _numeric(self, bound: BoundFunction) -> Callable[..., Any]:
        name = bound.name
        fn = bound.fn
        kind = bound.signature.result
        want: Any = int if kind == "int" else float if kind == "float" else type(None)
        # The checks of enter(), inlined: this runs on every host call.
        state = self.state
        quota = self.quota
        timeout = self.timeout

        def numeric(*args: Any) -> Any:
            n = state.host_calls = state.host_calls + 1
            if n > quota:
                raise self.too_many(name)
            if timeout is not None and _perf_counter() > state.start + timeout:
                raise self.late(name)
            try:
                result: Any = fn(*args)
            except BaseException as exc:
                raise _AppError(name, exc) from exc
            if type(result) is want and (want is not int or _I64_MIN <= result <= _I64_MAX):
                return result
            if kind == "none":
                return None
            encoded = self.encode_result(None, name, kind, result)
            assert encoded is not None
            return encoded[0]

        return numeric

    def _marshalled(self, bound: BoundFunction) -> rt.HostCallback:
        sig = bound.signature
        name = bound.name
        fn = bound.fn
        arg_cap = self.policy.max_host_arg_size
        plugin = self.name
        enter = self.enter

        def call(caller: rt.Caller, args: list[Any]) -> list[Any] | None:
            enter(name)
            py_args: list[Any] = []
            i = 0
            for kind in sig.params:
                if kind == "int":
                    py_args.append(int(args[i]))
                    i += 1
                elif kind == "float":
                    py_args.append(float(args[i]))
                    i += 1
                elif kind == "bool":
                    py_args.append(args[i] != 0)
                    i += 1
                else:
                    size = args[i + 1] & 0xFFFF_FFFF
                    if size > arg_cap:
                        raise AbiError(
                            f"plugin {plugin!r} passed a {size}-byte {kind} argument to host "
                            f"function {name!r}, over the policy's max_host_arg_size of {arg_cap}"
                        )
                    try:
                        raw = caller.read(args[i], args[i + 1])
                    except rt.GuestMemoryError as exc:
                        raise AbiError(
                            f"plugin {plugin!r} passed a bad {kind} argument to host "
                            f"function {name!r}: {exc}"
                        ) from None
                    i += 2
                    if kind == "str":
                        try:
                            py_args.append(raw.decode("utf-8"))
                        except UnicodeDecodeError as exc:
                            raise AbiError(
                                f"plugin {plugin!r} passed invalid UTF-8 to host function "
                                f"{name!r}: {exc}"
                            ) from None
                    else:
                        py_args.append(raw)
            try:
                result = fn(*py_args)
            except BaseException as exc:
                raise _AppError(name, exc) from exc
            return self.encode_result(caller, name, sig.result, result)

        return call

    def encode_result(
        self, caller: rt.Caller | None, name: str, kind: str, result: Any
    ) -> list[Any] | None:
        """The wasm results for a host function's ``result`` (``caller`` only for str/bytes)."""

        def wrong(expected: str) -> _AppError:
            return _AppError(
                name,
                TypeError(
                    f"host function {name!r} returned {type(result).__name__}; its annotation "
                    f"says {expected}"
                ),
            )

        if kind == "none":
            return None
        if kind == "int":
            if not isinstance(result, int) or isinstance(result, bool):
                raise wrong("int")
            if not _I64_MIN <= result <= _I64_MAX:
                raise _AppError(
                    name,
                    OverflowError(
                        f"host function {name!r} returned {result}, which does not fit in i64"
                    ),
                )
            return [result]
        if kind == "float":
            if not isinstance(result, (int, float)) or isinstance(result, bool):
                raise wrong("float")
            return [float(result)]
        if kind == "bool":
            if not isinstance(result, bool):
                raise wrong("bool")
            return [1 if result else 0]
        optional = kind.endswith("?")
        base = kind.rstrip("?")
        if result is None:
            if optional:
                return [_abi.NONE_WORD]
            raise wrong(base)
        if base == "str":
            if not isinstance(result, str):
                raise wrong("str")
            data = result.encode("utf-8")
        else:
            if not isinstance(result, (bytes, bytearray, memoryview)):
                raise wrong("bytes")
            data = bytes(result)
        if len(data) > 0x7FFF_FFFF:
            raise _AppError(name, OverflowError(f"host function {name!r} returned over 2 GiB"))
        assert caller is not None
        try:
            pointer = caller.place(data, _abi.ALLOC_EXPORT.encode())
        except rt.GuestAllocError:
            raise self.diagnosis.memory_error(
                f"plugin {self.name!r} could not allocate {len(data)} bytes for the result "
                f"of host function {name!r}",
                "call",
            ) from None
        except rt.GuestMemoryError as exc:
            raise AbiError(f"plugin {self.name!r}: {exc}") from None
        return [_abi.encode_result(pointer, len(data))]


# -- the built-in functions ---------------------------------------------------------------------


def log(calls: HostCalls, caller: rt.Caller, level: int, pointer: int, length: int) -> None:
    """``plugsafe.log(level, ptr, len)``: a UTF-8 message to ``plugsafe.plugin.<name>``.

    Levels 0..4 are trace, debug, info, warn, error. Messages are escaped to one line, cut to
    the policy's ``log_message_size``, and past ``log_messages`` per call only counted.
    """
    state = calls.state
    policy = calls.policy
    if not 0 <= level < len(LEVELS):
        raise AbiError(
            f"plugin {calls.name!r} called log with level {level}; levels are 0 (trace) "
            "to 4 (error)"
        )
    length &= 0xFFFF_FFFF
    keep = min(length, policy.log_message_size)
    try:
        # The whole span must be valid even though only a prefix is kept (checked as unsigned
        # 32-bit numbers, with no wrap-around: Caller.check).
        caller.check(pointer, length)
        drop = state.log_count >= policy.log_messages
        raw = b"" if drop else caller.read(pointer, keep)
    except rt.GuestMemoryError as exc:
        raise AbiError(f"plugin {calls.name!r} called log with a bad message: {exc}") from None
    if drop:
        state.log_dropped += 1
        return
    state.log_count += 1
    text = escape(raw.decode("utf-8", "replace"))
    if keep < length:
        text += f"... [cut: {length} bytes in all]"
    calls.logger.log(LEVELS[level], "%s", text, extra={"plugsafe_plugin": calls.name})


BUILTIN_FUNCTIONS: dict[str, BoundFunction] = {
    # log's level is an i32, not the i64 an ``int`` annotation would give.
    "log": BoundFunction(
        "log",
        log,
        HostSignature(("int", "bytes"), "none"),
        builtin=True,
        wasm_override=(("i32", "i32", "i32"), ()),
    ),
}
