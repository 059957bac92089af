"""fuzz9: what an app passes to ``invoke``/``call`` on a plugin's behalf, when it lies or raises.

Found by ``tests/fuzz/test_fuzz_args.py`` (and its first hand-written cases). The rule: whatever
the argument, the call returns or raises a ``PlugsafeError`` (a conversion that failed is a
``SignatureError`` with the argument's own exception as ``__cause__``), or, for a
``BaseException`` that is not an ``Exception`` (``KeyboardInterrupt``, ``SystemExit``), that
very exception; no wasm runs, the instance is kept (its state survives), the plugin stays usable
and its lock is free. Every case runs on the general path (the function's first call) and on
the short path (a later one: typed views, or struct for other shapes).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

import plugsafe

WAT = b"""(module
  (global $n (mut i32) (i32.const 0))
  (func (export "bump") (result i32)
    (global.set $n (i32.add (global.get $n) (i32.const 1))) (global.get $n))
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "f32") (param f32) (result f32) (local.get 0))
  (func (export "f64") (param f64) (result f64) (local.get 0))
  (func (export "mixed") (param i64 f64) (result i64) (local.get 0))
  (func (export "four") (param i32 i32 i32 i32) (result i32) (local.get 3))
  (func (export "none")))
"""

# function -> (honest arguments, the position a hostile one takes)
SHAPES: dict[str, tuple[tuple[Any, ...], int]] = {
    "add": ((1, 2), 1),
    "f32": ((1.5,), 0),
    "f64": ((1.5,), 0),
    "mixed": ((7, 2.5), 0),
    "four": ((1, 2, 3, 4), 3),
}


class Raises:
    """A number whose every conversion raises ``exc``."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __index__(self) -> int:
        raise self.exc

    def __float__(self) -> float:
        raise self.exc

    def __int__(self) -> int:
        raise self.exc


class Shouty(Exception):
    """An exception whose text itself cannot be made."""

    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class Custom(BaseException):
    """A BaseException of the app's own (neither Exception nor KeyboardInterrupt)."""


EXCEPTIONS: list[Callable[[], Exception]] = [
    lambda: ValueError("bad value"),
    ZeroDivisionError,
    lambda: RuntimeError("nope"),
    RecursionError,
    MemoryError,
    lambda: LookupError("where"),
    Shouty,
]
BASE_EXCEPTIONS: list[Callable[[], BaseException]] = [KeyboardInterrupt, SystemExit, Custom]


def _plugin(warm: str | None) -> plugsafe.Plugin:
    host = plugsafe.Host()
    plugin = host.load(WAT)
    assert plugin.invoke("bump") == 1
    if warm is not None:
        honest = SHAPES[warm][0]
        plugin.invoke(warm, *honest)
        plugin.invoke(warm, *honest)  # now the short path's (aimed) function
    return plugin


def _with(function: str, hostile: object) -> tuple[Any, ...]:
    honest, at = SHAPES[function]
    return (*honest[:at], hostile, *honest[at + 1 :])


def _still_usable(plugin: plugsafe.Plugin, bumps: int = 2) -> None:
    assert not plugin._calls.lock.locked()
    # The instance was kept: its global counts on from where it was.
    assert plugin.invoke("bump") == bumps
    assert plugin.invoke("add", 2, 3) == 5


@pytest.mark.parametrize("warm", [False, True], ids=["first_call", "short_path"])
@pytest.mark.parametrize("function", sorted(SHAPES))
@pytest.mark.parametrize("make", EXCEPTIONS, ids=lambda m: m().__class__.__name__)
def test_an_argument_whose_conversion_raises_is_a_signature_error_caused_by_it(
    warm: bool, function: str, make: Callable[[], Exception]
) -> None:
    plugin = _plugin(function if warm else None)
    exc = make()
    with pytest.raises(plugsafe.SignatureError, match=f"argument {SHAPES[function][1]}") as info:
        plugin.invoke(function, *_with(function, Raises(exc)))
    assert info.value.__cause__ is exc
    _still_usable(plugin)


@pytest.mark.parametrize("warm", [False, True], ids=["first_call", "short_path"])
@pytest.mark.parametrize("function", sorted(SHAPES))
@pytest.mark.parametrize("make", BASE_EXCEPTIONS, ids=lambda m: m.__name__)
def test_a_base_exception_from_an_argument_propagates_as_itself_and_keeps_the_instance(
    warm: bool, function: str, make: Callable[[], BaseException]
) -> None:
    plugin = _plugin(function if warm else None)
    exc = make()
    with pytest.raises(make) as info:  # type: ignore[call-overload]
        plugin.invoke(function, *_with(function, Raises(exc)))
    assert info.value is exc
    _still_usable(plugin)


class Sneaky:
    """An object whose attribute lookups raise (``hasattr`` lets only AttributeError by)."""

    def __getattribute__(self, name: str) -> Any:
        raise ValueError(f"no {name}")


class Pretender:
    """An object that says its class is float (``isinstance`` believes it)."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return float


@pytest.mark.parametrize("warm", [False, True], ids=["first_call", "short_path"])
@pytest.mark.parametrize("hostile", [Sneaky, Pretender])
@pytest.mark.parametrize("function", ["f32", "f64", "add"])
def test_a_number_parameter_given_an_object_that_lies_about_itself_is_a_signature_error(
    warm: bool, hostile: type, function: str
) -> None:
    plugin = _plugin(function if warm else None)
    with pytest.raises(plugsafe.SignatureError):
        plugin.invoke(function, *_with(function, hostile()))
    _still_usable(plugin)


@pytest.mark.parametrize("warm", [False, True], ids=["first_call", "short_path"])
def test_an_argument_that_calls_its_own_plugin_back_is_refused_and_the_plugin_survives(
    warm: bool,
) -> None:
    plugin = _plugin("add" if warm else None)

    class Again:
        def __index__(self) -> int:
            return int(plugin.invoke("bump"))

    # Refused as re-entry (the plugin is taken while its arguments are converted), as itself.
    with pytest.raises(plugsafe.PluginCallError, match="re-entrant calls are not allowed"):
        plugin.invoke("add", Again(), 1)
    _still_usable(plugin)


@pytest.mark.parametrize("warm", [False, True], ids=["first_call", "short_path"])
def test_an_argument_that_closes_its_plugin_ends_in_a_value_or_plugin_closed(
    warm: bool,
) -> None:
    plugin = _plugin("add" if warm else None)

    class Closer:
        def __index__(self) -> int:
            plugin.close()
            return 5

    with contextlib.suppress(plugsafe.PluginClosedError):
        assert plugin.invoke("add", Closer(), 1) == 6
    assert plugin.closed
    assert not plugin._calls.lock.locked()
    with pytest.raises(plugsafe.PluginClosedError):
        plugin.invoke("add", 1, 2)


# -- function names ------------------------------------------------------------------------------


class HashRaises:
    def __hash__(self) -> int:
        raise ZeroDivisionError

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class SaysStr:
    """Not a str, but ``isinstance(x, str)`` is True (its ``__class__`` says so)."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return str


class ReprRaises:
    def __repr__(self) -> str:
        raise ValueError("no repr")


@pytest.mark.parametrize("method", ["invoke", "call"])
@pytest.mark.parametrize(
    "name",
    [HashRaises, SaysStr, ReprRaises, lambda: 123, lambda: None, lambda: b"add"],
    ids=["hash_raises", "says_str", "repr_raises", "int", "none", "bytes"],
)
def test_a_function_name_that_is_not_a_str_is_a_signature_error(
    method: str, name: Callable[[], object]
) -> None:
    plugin = _plugin("add")
    args: tuple[Any, ...] = (1, 2) if method == "invoke" else (b"x",)
    with pytest.raises(plugsafe.SignatureError, match="a function name is a str, not "):
        getattr(plugin, method)(name(), *args)
    _still_usable(plugin)


# -- call()'s data ---------------------------------------------------------------------------------


def _released() -> memoryview:
    view = memoryview(b"abc")
    view.release()
    return view


class BytesRaises(bytes):
    def __bytes__(self) -> bytes:
        raise ValueError("no bytes")


class SaysBytes:
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return bytes


@pytest.mark.parametrize(
    "data",
    [
        _released,
        lambda: "lone \udc80 surrogate",
        lambda: BytesRaises(b"abc"),
        SaysBytes,
        lambda: 5,
        lambda: None,
        lambda: [1],
    ],
    ids=["released_view", "surrogate", "bytes_raises", "says_bytes", "int", "none", "list"],
)
def test_call_data_that_cannot_be_bytes_is_a_signature_error(data: Callable[[], Any]) -> None:
    plugin = _plugin("add")
    with pytest.raises(plugsafe.SignatureError, match="data"):
        plugin.call("add", data())
    # A TypeError too, as it always was for data of the wrong type.
    with pytest.raises(TypeError):
        plugin.call("add", data())
    _still_usable(plugin)


ABI_WAT = b"""(module
  (memory (export "memory") 1)
  (global $top (mut i32) (i32.const 1024))
  (func (export "plugsafe_abi_version") (result i32) (i32.const 1))
  (func (export "plugsafe_alloc") (param i32) (result i32) (local $p i32)
    (local.set $p (global.get $top))
    (global.set $top (i32.add (global.get $top) (local.get 0))) (local.get $p))
  (func (export "echo") (param i32 i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get 0)) (i64.const 32))
            (i64.extend_i32_u (local.get 1)))))
"""


@pytest.mark.parametrize(
    "data, expected",
    [
        (memoryview(array.array("d", [1.0, 2.0, 3.0]))[::2], array.array("d", [1.0, 3.0])),
        (memoryview(b"abcdef").cast("c")[1:5], b"bcde"),
        (memoryview(array.array("i", [1, 2])).cast("B").cast("i"), array.array("i", [1, 2])),
        (bytearray(b"xy"), b"xy"),
    ],
    ids=["strided_doubles", "char_format", "recast", "bytearray"],
)
def test_call_data_of_any_buffer_format_is_its_bytes(data: Any, expected: Any) -> None:
    plugin = plugsafe.Host().load(ABI_WAT)
    assert plugin.call("echo", data) == bytes(expected)
    assert plugin.call("echo", data) == bytes(expected)  # the short path too


_BIG = {"huge": 10**5000, "-huge": -(10**5000), "2^64": 2**64, "-2^63-1": -(2**63) - 1}


@pytest.mark.parametrize("warm", [False, True], ids=["first_call", "short_path"])
@pytest.mark.parametrize(
    ("function", "big"),
    [
        pytest.param(function, big, id=f"{function}-{name}")
        for function in ("add", "f64", "mixed", "four")
        for name, big in _BIG.items()
        # (A float parameter takes an int under 2**1024, rounded: no error to expect.)
        if function != "f64" or abs(big) >= 2**1024
    ],
)
def test_an_integer_too_large_for_its_parameter_is_a_signature_error(
    warm: bool, function: str, big: int
) -> None:
    # str() of an int past 4300 digits raises ValueError: the message must not need it.
    plugin = _plugin(function if warm else None)
    with pytest.raises(plugsafe.SignatureError, match=r"out of range|did not convert"):
        plugin.invoke(function, *_with(function, big))
    _still_usable(plugin)


@pytest.mark.parametrize("warm", [False, True], ids=["first_call", "short_path"])
@pytest.mark.parametrize("function", ["add", "four"])
def test_an_argument_that_closes_the_host_ends_in_a_value_and_closes_the_plugin(
    warm: bool, function: str
) -> None:
    host = plugsafe.Host()
    plugin = host.load(WAT)
    honest = SHAPES[function][0]
    if warm:
        plugin.invoke(function, *honest)
        plugin.invoke(function, *honest)

    class Closer:
        def __index__(self) -> int:
            host.close()
            return 4

    # The call in flight finishes on its instance (released as it ends), then nothing runs.
    assert plugin.invoke(function, *_with(function, Closer())) in (4 + 1, 4)
    assert plugin.closed and not plugin._calls.lock.locked()
    with pytest.raises(plugsafe.PluginClosedError):
        plugin.invoke(function, *honest)


@pytest.mark.parametrize("make", [lambda: ValueError("v"), KeyboardInterrupt])
def test_pools_and_async_calls_treat_a_raising_argument_as_invoke_does(
    make: Callable[[], BaseException],
) -> None:
    exc = make()
    expected: Any = plugsafe.SignatureError if isinstance(exc, Exception) else type(exc)
    plugin = _plugin("add")

    async def go() -> object:
        return await plugin.invoke_async("add", 1, Raises(exc))

    with pytest.raises(expected):
        asyncio.run(go())
    _still_usable(plugin)
    with plugsafe.PluginPool(WAT, size=1) as pool:
        assert pool.invoke("bump") == 1
        for _ in range(2):
            with pytest.raises(expected):
                pool.invoke("add", Raises(exc), 1)
        assert pool.invoke("bump") == 2


@pytest.mark.parametrize(
    "offset, length",
    [(10**5000, 1), (-(10**5000), 1), (0, 10**5000), (0, -(10**5000)), (2**64, 1)],
    ids=["huge_offset", "-huge_offset", "huge_length", "-huge_length", "2^64"],
)
def test_plugin_memory_refuses_any_out_of_range_int_as_memory_access_error(
    offset: int, length: int
) -> None:
    # Past 4300 digits str() of an int raises ValueError: the message must not need it.
    plugin = plugsafe.Host().load(ABI_WAT)
    with pytest.raises(plugsafe.MemoryAccessError):
        plugin.memory.read(offset, length)
    if length == 1:
        with pytest.raises(plugsafe.MemoryAccessError):
            plugin.memory.write(offset, b"x")
    assert plugin.call("echo", b"ok") == b"ok"
