"""Host functions: their signatures, the built-in ``log``, marshalling, and the one error sink.

A host function is registered on the Host as a :class:`BoundFunction`; each Plugin binds the ones
its module imports through a :class:`HostCalls`. Every callback runs inside the runtime's entry
(``_runtime.Linker``), which catches any BaseException (nothing may unwind into wasmtime's C
frames), stores it and traps the guest; once the trap is back out of wasm the runtime hands the
exception to :meth:`HostCalls.on_error`, and :meth:`HostCalls.typed` is the single place where
a host failure becomes this call's documented error (``CallState.error``) for the caller.
"""

from __future__ import annotations

import functools
import math
import time
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # logging is imported when a plugin first logs (_log, issue 14)
    import logging

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
    text_of,
    type_name,
)
from ._lazymodule import lazy_module
from ._log import LEVELS, escape
from ._policy import Policy
from ._types import Width

if TYPE_CHECKING:
    import inspect
    from dataclasses import dataclass
else:  # plugsafe's own, without importing dataclasses (see _dataclass_code)
    from ._dataclass_code import dataclass

    # inspect (with ast, dis, tokenize: ~8 % of a cold start) when a host function is first
    # registered or awaited, not at import (issue 14).
    inspect = lazy_module("inspect", globals(), "inspect")

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
_F32_MAX = 3.4028234663852886e38
# The range of a Python int in a wasm integer result: signed, as C's int32_t/int64_t.
_INT_RANGE = {"i32": (-(2**31), 2**31 - 1), "i64": (_I64_MIN, _I64_MAX)}

# "int"/"float": a Python int/float bound to whichever width the plugin imports (i32 or i64,
# f32 or f64), per plugin at link time; "i32", "i64", "f32", "f64": one pinned with
# Annotated[int, plugsafe.I32] and the like.
ParamKind = Literal["int", "float", "bool", "bytes", "str", "i32", "i64", "f32", "f64"]
ResultKind = Literal[
    "none", "int", "float", "bool", "bytes", "str", "bytes?", "str?", "i32", "i64", "f32", "f64"
]
_NUMBERS = frozenset({"int", "float", "i32", "i64", "f32", "f64"})

_WASM_PARAMS: dict[str, tuple[str, ...]] = {
    "int": ("i64",),
    "float": ("f64",),
    "bool": ("i32",),
    "bytes": ("i32", "i32"),
    "str": ("i32", "i32"),
    "i32": ("i32",),
    "i64": ("i64",),
    "f32": ("f32",),
    "f64": ("f64",),
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
    "i32": ("i32",),
    "i64": ("i64",),
    "f32": ("f32",),
    "f64": ("f64",),
}
# The wasm types each kind may bind to (one wasm value per kind; bytes/str are two i32).
_BINDS: dict[str, frozenset[str]] = {
    "int": frozenset({"i32", "i64"}),
    "float": frozenset({"f32", "f64"}),
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

    def accepts(self, params: tuple[str, ...], results: tuple[str, ...]) -> bool:
        """Whether a plugin may import this function with wasm type ``params -> results``.

        A plain ``int`` binds to ``i32`` or ``i64`` and ``float`` to ``f32`` or ``f64``, each
        parameter on its own; every other kind has its one wasm type.
        """
        want = self.wasm_params
        if len(params) != len(want) or len(results) != len(self.wasm_results):
            return False
        i = 0
        for kind in self.params:
            allowed = _BINDS.get(kind)
            n = len(_WASM_PARAMS[kind])
            if allowed is not None:
                if params[i] not in allowed:
                    return False
            elif params[i : i + n] != want[i : i + n]:
                return False
            i += n
        allowed = _BINDS.get(self.result)
        if allowed is not None:
            return results[0] in allowed
        return results == self.wasm_results

    def describe(self) -> str:
        """The wasm type, ``int`` and ``float`` shown with both widths: ``(i32|i64) -> ()``."""

        def one(kind: str, types: tuple[str, ...]) -> list[str]:
            allowed = _BINDS.get(kind)
            return ["|".join(sorted(allowed))] if allowed is not None else list(types)

        params = [t for k in self.params for t in one(k, _WASM_PARAMS[k])]
        results = one(self.result, self.wasm_results)
        return f"({', '.join(params)}) -> ({', '.join(results)})"


def _pinned(annotation: Any, where: str, what: str) -> str | None:
    """The pinned kind of ``Annotated[int, plugsafe.I32]`` and the like; None if not Annotated.

    Any other metadata is refused: Annotated is never silently ignored.
    """
    if typing.get_origin(annotation) is not typing.Annotated:
        return None
    base, *meta = typing.get_args(annotation)
    if len(meta) == 1 and isinstance(meta[0], Width) and base is meta[0].python:
        return meta[0].wasm
    raise TypeError(
        f"{where}: {what} is annotated {annotation!r}; the only Annotated forms are "
        "Annotated[int, plugsafe.I32], Annotated[int, plugsafe.I64], "
        "Annotated[float, plugsafe.F32] and Annotated[float, plugsafe.F64]"
    )


def _result_kind(annotation: Any, where: str) -> ResultKind:
    pinned = _pinned(annotation, where, "the result")
    if pinned is not None:
        return typing.cast(ResultKind, pinned)
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


def annotated_target(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The function whose annotations describe ``fn``.

    A ``functools.partial`` is described by the function it wraps (its bound arguments are
    left out by ``inspect.signature``), a callable object by its class's ``__call__``; a
    function or bound method by itself.
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isbuiltin(fn):
        return fn
    call = getattr(type(fn), "__call__", None)  # noqa: B004  # the class's, not the object's
    return fn if call is None else call


def _refuse_async(fn: Callable[..., Any], target: Callable[..., Any], where: str) -> None:
    if (
        inspect.iscoroutinefunction(fn)
        or inspect.iscoroutinefunction(target)
        or inspect.isasyncgenfunction(target)
    ):
        raise TypeError(
            f"{where} is async (a coroutine function); host functions are called while the "
            "plugin's wasm waits on the calling thread, so they must be plain functions. Make "
            "it a def; to wait for async work of your event loop from it, use "
            "asyncio.run_coroutine_threadsafe(coro, loop).result(timeout) (docs/host-functions.md)"
        )


def signature_from_annotations(fn: Callable[..., Any], name: str) -> HostSignature:
    """Derive the wasm signature of host function ``fn`` from its type annotations.

    ``fn`` may be a function, a bound method, a ``functools.partial`` (its remaining
    parameters are the wasm ones) or a callable object (its ``__call__``'s annotations).
    """
    where = f"host function {name!r}"
    if inspect.isclass(fn):
        raise TypeError(f"{where}: a class is not a host function; register a function")
    target = annotated_target(fn)
    _refuse_async(fn, target, where)
    try:
        hints = typing.get_type_hints(target, include_extras=True)
        sig = inspect.signature(fn)
    except (NameError, TypeError, ValueError) as exc:
        raise TypeError(f"{where}: cannot read its annotations: {exc}") from exc
    params: list[ParamKind] = []
    for p in sig.parameters.values():
        if p.kind == p.KEYWORD_ONLY and p.default is not p.empty:
            # Not passed by wasm: a keyword-only parameter with a default (one a partial
            # bound by keyword, say) keeps its value.
            continue
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            raise TypeError(
                f"{where}: parameter {p.name!r} must be positional (no *args/**kw; a "
                "functools.partial should bind leading parameters positionally)"
            )
        if p.name not in hints:
            raise TypeError(f"{where}: parameter {p.name!r} has no type annotation")
        ann = hints[p.name]
        pinned = _pinned(ann, where, f"parameter {p.name!r}")
        if pinned is not None:
            params.append(typing.cast(ParamKind, pinned))
            continue
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
        """The wasm parameter and result types, ``int``/``float`` at their widest (i64/f64)."""
        if self.wasm_override is not None:
            return self.wasm_override
        return self.signature.wasm_params, self.signature.wasm_results

    def accepts(self, have: tuple[tuple[str, ...], tuple[str, ...]]) -> bool:
        """Whether a plugin may import it with wasm type ``have`` (params, results)."""
        if self.wasm_override is not None:
            return have == self.wasm_override
        return self.signature.accepts(*have)

    def describe(self) -> str:
        """Its wasm type for messages (``int`` as ``i32|i64``, ``float`` as ``f32|f64``)."""
        if self.wasm_override is not None:
            params, results = self.wasm_override
            return f"({', '.join(params)}) -> ({', '.join(results)})"
        return self.signature.describe()


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
        self.quota = state.quota
        self.timeout = policy.timeout
        # The export Caller.place may call to receive a bytes result: plugsafe_alloc once its
        # type was checked to be (i32) -> i32 (Plugin._check_exports), else None and such a
        # result is an AbiError. Never call an export whose type was not checked.
        self.allocator: bytes | None = None

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
            return f"plugsafe: host function {exc.function!r} raised {type_name(type(exc.exc))}"
        return f"plugsafe: {type_name(type(exc))}"

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
            f"{type_name(type(exc))}: {text_of(exc)} (called by plugin {self.name!r} in "
            f"{self.state.function!r})",
            function=name,
        )
        err.__cause__ = exc
        return err

    def _app_error(self, raised: _AppError) -> BaseException:
        exc = raised.exc
        if not isinstance(exc, Exception):
            return exc
        timeout = self.timeout
        if (
            isinstance(exc, DeadlineExceeded)
            and timeout is not None
            and _perf_counter() >= self.state.start + timeout
        ):
            # A wait in the host function (for a plugin busy in another thread) ended at this
            # call's deadline, saying so: the call ran out of time, which is its error.
            return exc
        err = HostFunctionError(
            f"host function {raised.function!r} raised {type_name(type(exc))}: {text_of(exc)} "
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
        if state.host_calls > state.limit:
            self.over(function)
        # wasm checks its deadline only at function entries and loop back-edges: without this,
        # a run of host calls in straight-line code could stretch the call far past it.
        timeout = self.timeout
        if timeout is not None and _perf_counter() > state.start + timeout:
            raise self.late(function)

    def over(self, function: str) -> None:
        """The call's host calls passed ``state.limit``: its first host call, if a short path
        began the call (the bookkeeping it left to this one: ``CallState.first_host_call``),
        else one over the quota (HostCallLimitExceeded)."""
        state = self.state
        if state.limit < 0:
            state.first_host_call()
            if state.host_calls <= state.quota:
                return
        raise self.too_many(function)

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

    def define(
        self,
        linker: rt.Linker,
        bound: BoundFunction,
        wasm: tuple[tuple[str, ...], tuple[str, ...]] | None = None,
    ) -> None:
        """Define ``bound`` in ``linker`` as ``plugsafe.<name>`` for this plugin."""
        linker.define(self.binding(bound, wasm))

    def binding(
        self,
        bound: BoundFunction,
        wasm: tuple[tuple[str, ...], tuple[str, ...]] | None = None,
    ) -> rt.Binding:
        """``bound`` as this plugin serves ``plugsafe.<name>``: a Linker defines or rebinds it.

        ``wasm`` is the type the plugin imports it with (checked by ``bound.accepts`` at the
        import check): a plain ``int``/``float`` binds to the width the plugin chose, for this
        plugin only. None: the widest (a function the module does not import).
        """
        params, results = bound.wasm if wasm is None else wasm
        params, results = tuple(params), tuple(results)
        sig = bound.signature
        rtype = results[0] if results else None
        sink = self.sink(bound.name)
        if bound.builtin:
            callback = self._builtin(bound)
        elif all(k in _NUMBERS for k in sig.params) and (
            sig.result in _NUMBERS or sig.result == "none"
        ):
            # Numbers in, a number (or nothing) out: the common shape for counters and lookups
            # by id, called with no Caller and no conversion.
            numeric = self._numeric(bound, rtype)
            return rt.Binding(True, _abi.HOST_MODULE, bound.name, params, results, numeric, sink)
        else:
            callback = self._marshalled(bound, rtype)
        return rt.Binding(False, _abi.HOST_MODULE, bound.name, params, results, callback, sink)

    def _builtin(self, bound: BoundFunction) -> rt.HostCallback:
        name = bound.name
        fn = bound.fn
        enter = self.enter

        def builtin(caller: rt.Caller, args: list[Any]) -> Any:
            enter(name)
            return fn(self, caller, *args)

        return builtin

    def _numeric(self, bound: BoundFunction, rtype: str | None) -> Callable[..., Any]:
        name = bound.name
        fn = bound.fn
        kind = bound.signature.result
        # The result's type and range for its width in this plugin. An f32 result always goes
        # through encode_result (its range check): no result's type is ``_Never``.
        want: Any = (
            type(None) if rtype is None else int if rtype in _INT_RANGE
            else _Never if rtype == "f32" else float
        )  # fmt: skip
        lo, hi = _INT_RANGE.get(rtype or "", (0, 0))
        # The checks of enter(), inlined: this runs on every host call.
        state = self.state
        over = self.over
        timeout = self.timeout

        def numeric(*args: Any) -> Any:
            n = state.host_calls = state.host_calls + 1
            if n > state.limit:
                over(name)
            if timeout is not None and _perf_counter() > state.start + timeout:
                raise self.late(name)
            try:
                result: Any = fn(*args)
            except BaseException as exc:
                raise _AppError(name, exc) from exc
            if type(result) is want and (want is not int or lo <= result <= hi):
                return result
            if kind == "none":
                _check_none(name, result)
                return None
            encoded = self.encode_result(None, name, kind, result, rtype)
            assert encoded is not None
            return encoded[0]

        return numeric

    def _marshalled(self, bound: BoundFunction, rtype: str | None) -> rt.HostCallback:
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
                if kind in _INTS:
                    py_args.append(int(args[i]))
                    i += 1
                elif kind in _FLOATS:
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
            return self.encode_result(caller, name, sig.result, result, rtype)

        return call

    def encode_result(
        self,
        caller: rt.Caller | None,
        name: str,
        kind: str,
        result: Any,
        rtype: str | None = None,
    ) -> list[Any] | None:
        """The wasm results for a host function's ``result`` (``caller`` only for str/bytes).

        ``rtype`` is the wasm result type it is bound to in this plugin (a number's width).
        """

        def wrong(expected: str) -> _AppError:
            return _AppError(
                name,
                TypeError(
                    f"host function {name!r} returned {type_name(type(result))}; its annotation "
                    f"says {expected}"
                ),
            )

        if kind == "none":
            _check_none(name, result)
            return None
        if kind in _INTS:
            if not isinstance(result, int) or isinstance(result, bool):
                raise wrong("int")
            if type(result) is not int:
                result = _own_int(name, result)
            width = rtype if rtype in _INT_RANGE else _WASM_RESULTS[kind][0]
            lo, hi = _INT_RANGE[width]
            if not lo <= result <= hi:
                raise _AppError(
                    name,
                    OverflowError(
                        f"host function {name!r} returned {result}, which does not fit in "
                        f"{width} ({lo} to {hi}), the type this plugin imports it with"
                    ),
                )
            return [result]
        if kind in _FLOATS:
            if not isinstance(result, (int, float)) or isinstance(result, bool):
                raise wrong("float")
            try:
                value = (
                    result
                    if type(result) is float
                    else _own_float(name, result)
                    if isinstance(result, float)
                    else float(result if type(result) is int else _own_int(name, result))
                )
            except OverflowError:
                value = math.inf  # an int too large for a float: refused just below
            width = rtype if rtype in ("f32", "f64") else _WASM_RESULTS[kind][0]
            if (math.isinf(value) and not isinstance(result, float)) or (
                width == "f32" and math.isfinite(value) and abs(value) > _F32_MAX
            ):
                raise _AppError(
                    name,
                    OverflowError(
                        f"host function {name!r} returned {result!r}, which does not fit in "
                        f"{width}, the type this plugin imports it with"
                    ),
                )
            return [value]
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
        # Plain bytes of the buffer's own length: a subclass's encode, __bytes__ or __len__
        # never sizes the copy into the guest (attack7; _abi.plain_bytes).
        if base == "str":
            if not isinstance(result, str):
                raise wrong("str")
            data = str.encode(result, "utf-8")  # (as fast as result.encode: measured)
        else:
            if not isinstance(result, (bytes, bytearray, memoryview)):
                raise wrong("bytes")
            data = result if type(result) is bytes else _abi.plain_bytes(result)
        if len(data) > 0x7FFF_FFFF:
            raise _AppError(name, OverflowError(f"host function {name!r} returned over 2 GiB"))
        assert caller is not None
        try:
            pointer = caller.place(data, self.allocator)
        except rt.GuestAllocError:
            raise self.diagnosis.memory_error(
                f"plugin {self.name!r} could not allocate {len(data)} bytes for the result "
                f"of host function {name!r}",
                "call",
            ) from None
        except rt.GuestMemoryError as exc:
            raise AbiError(f"plugin {self.name!r}: {exc}") from None
        return [_abi.encode_result(pointer, len(data))]


class _Never:
    """A type no result has (see HostCalls._numeric)."""


def _own_int(name: str, result: int) -> int:
    """The value of int ``result`` itself, as an exact int.

    A subclass's ``__int__`` (or its comparisons) could make the value range-checked differ
    from the one stored in the guest's result slot: the guest would read a number the host
    function never returned. One whose conversion disagrees with its value is refused.
    """
    value = int.__int__(result)
    if type(result) is not int and int(result) != value:
        raise _AppError(
            name,
            TypeError(
                f"host function {name!r} returned a {type(result).__name__} whose int() "
                "differs from its value"
            ),
        )
    return value


def _own_float(name: str, result: float) -> float:
    """The value of float ``result`` itself (as ``_own_int``: never only its ``__float__``)."""
    value = float.__float__(result)
    if type(result) is not float:
        converted = float(result)
        if converted != value and not (math.isnan(converted) and math.isnan(value)):
            raise _AppError(
                name,
                TypeError(
                    f"host function {name!r} returned a {type(result).__name__} whose "
                    "float() differs from its value"
                ),
            )
    return value


_INTS = frozenset({"int", "i32", "i64"})
_FLOATS = frozenset({"float", "f32", "f64"})


def _check_none(name: str, result: Any) -> None:
    """A ``-> None`` host function must return None: a coroutine (an async function in a
    sync wrapper) would otherwise be dropped unawaited, its work silently never done."""
    if result is not None and inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()  # no "never awaited" warning: the error says it instead
        raise _AppError(
            name,
            TypeError(
                f"host function {name!r} returned an awaitable ({type(result).__name__}); host "
                "functions must be synchronous (docs/host-functions.md)"
            ),
        )


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
