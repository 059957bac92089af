"""attack13: a component's ``invoke`` arguments that raise while they are converted.

docs/errors.md ("Arguments from the app"): an ``Exception`` raised by an argument's conversion,
its class's attributes or its ``__class__`` is a ``SignatureError`` naming the argument, with
that exception as ``__cause__``; a ``PlugsafeError`` propagates as itself, a ``BaseException``
that is not an ``Exception`` too; no wasm runs and the plugin goes on. Modules kept this since
attack7; a component's ``invoke`` let the app's exception out bare (a record field's property,
a list's iterator, an unhashable flag, a raising ``__class__``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import pytest
from component_wat import WORLD

import plugsafe


class _Image:
    width = 1
    height = 1

    @property
    def data(self) -> NoReturn:
        raise RuntimeError("the app's property")


class _LyingMap(dict[str, Any]):
    def __contains__(self, key: object) -> NoReturn:
        raise KeyError("the app's mapping")


def _failing() -> Iterator[int]:
    yield 1
    raise ValueError("the app's generator")


class _NoIter:
    def __iter__(self) -> NoReturn:
        raise OSError("the app's iterable")


class _Unhashable:
    __hash__ = None  # type: ignore[assignment]


class _ClassRaises:
    @property  # type: ignore[misc]
    def __class__(self) -> NoReturn:  # type: ignore[override]
        raise RuntimeError("the app's __class__")


class _Interrupting:
    def __iter__(self) -> NoReturn:
        raise KeyboardInterrupt


# (function, a maker of the argument (pytest would ask the argument itself for an id), the
# exception it raises, the parameter's name)
CASES = [
    ("swap", _Image, RuntimeError, "img"),
    ("swap", lambda: _LyingMap(width=1, height=1, data=b""), KeyError, "img"),
    ("sum", _failing, ValueError, "xs"),
    ("sum", _NoIter, OSError, "xs"),
    ("sum", lambda: [_ClassRaises()], RuntimeError, "xs"),
    ("flip", lambda: [_Unhashable()], TypeError, "f"),
    ("opt", _ClassRaises, RuntimeError, "x"),
    ("same-shape", lambda: {"tag": "num", "value": _ClassRaises()}, RuntimeError, "v"),
    ("echo", _ClassRaises, RuntimeError, "s"),
]


@pytest.fixture(scope="module")
def world() -> Iterator[plugsafe.ComponentPlugin]:
    with plugsafe.Host() as host:
        plugin = host.load(WORLD.encode(), policy=plugsafe.Policy(fuel=1_000_000))
        assert isinstance(plugin, plugsafe.ComponentPlugin)
        yield plugin


@pytest.mark.parametrize(("function", "make", "cause", "name"), CASES)
def test_an_argument_raising_in_its_conversion_is_a_signature_error_with_its_cause(
    world: plugsafe.ComponentPlugin,
    function: str,
    make: Callable[[], Any],
    cause: type,
    name: str,
) -> None:
    with pytest.raises(plugsafe.SignatureError, match=f"argument {name!r}") as info:
        world.invoke(function, make())
    assert type(info.value.__cause__) is cause
    assert world.invoke("add", 2, 3) == 5  # no wasm ran; the plugin goes on


def test_an_interrupt_in_an_arguments_conversion_propagates_as_itself(
    world: plugsafe.ComponentPlugin,
) -> None:
    with pytest.raises(KeyboardInterrupt):
        world.invoke("sum", _Interrupting())
    assert world.invoke("add", 2, 3) == 5


def test_a_plugsafe_error_in_an_arguments_conversion_propagates_as_itself(
    world: plugsafe.ComponentPlugin,
) -> None:
    class _Calls:
        def __iter__(self) -> NoReturn:
            raise plugsafe.PluginClosedError("raised by the app's iterable")

    with pytest.raises(plugsafe.PluginClosedError):
        world.invoke("sum", _Calls())
    assert world.invoke("add", 2, 3) == 5


# A component whose start function loops when the host's now() says 1 (after a failed call,
# the next call makes a new instance, and the start function runs inside that call).
_SPIN_AT_START = r"""
(component
  (import "test:host/clock" (instance $clock (export "now" (func (result u64)))))
  (core func $now (canon lower (func $clock "now")))
  (core module $m
    (import "host" "now" (func $now (result i64)))
    (func $start (if (i64.eq (call $now) (i64.const 1)) (then (loop br 0))))
    (start $start)
    (func (export "boom") unreachable)
    (func (export "ok") (result i32) i32.const 7))
  (core instance $i (instantiate $m (with "host" (instance (export "now" (func $now))))))
  (func (export "boom") (canon lift (core func $i "boom")))
  (func (export "ok") (result u32) (canon lift (core func $i "ok")))
)"""


def test_cancelling_a_call_whose_start_function_loops_stops_the_instantiation() -> None:
    """Measured before: the cancel returned at once, but the instantiation ran on to the
    policy's timeout (3 s of 3 s), holding the plugin; modules were interruptible there since
    attack12 (CallToken.making), components now too."""
    spin = {"on": 0}
    started = threading.Event()
    with plugsafe.Host() as host:

        @host.component_function("test:host/clock#now")
        def now() -> int:
            if spin["on"]:
                started.set()
            return spin["on"]

        policy = plugsafe.Policy(allow={"test:host/clock"}, timeout=20.0, fuel=None)
        plugin = host.load_component(_SPIN_AT_START.encode(), policy=policy)
        with pytest.raises(plugsafe.PluginTrap):
            plugin.invoke("boom")
        spin["on"] = 1

        async def main() -> float:
            task = asyncio.ensure_future(plugin.invoke_async("ok"))
            assert await asyncio.to_thread(started.wait, 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            spin["on"] = 0
            begun = time.perf_counter()
            assert await plugin.invoke_async("ok") == 7
            return time.perf_counter() - begun

        waited = asyncio.run(main())
        assert waited < 10  # (20 s without the fix; within milliseconds with it)
        plugin.close()


def test_cancelling_a_call_while_its_result_is_converted_stops_the_conversion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Measured before: a 1M-element list<u32> result went on converting ~0.6 s after the
    cancel (the conversion checked only the call's deadline). Made deterministic: the first
    clock check of the conversion waits until the cancel has interrupted the instance."""
    from plugsafe._runtime import _component as rc

    step = rc.LiftBudget.step
    reached = threading.Event()
    after: list[int] = []
    holder: list[Any] = []

    def waiting_step(self: Any, n: int) -> None:
        if not reached.is_set():
            reached.set()
            deadline = time.monotonic() + 10
            while not holder[0]._inst.interrupt_stands() and time.monotonic() < deadline:
                time.sleep(0.001)
        step(self, n)
        after.append(n)  # a chunk converted past the check

    monkeypatch.setattr(rc.LiftBudget, "step", waiting_step)
    wat = (
        '(component (core module $m (memory (export "memory") 1)'
        '  (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 0)'
        '  (func (export "f") (result i32)'
        "    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 5000))"
        "    (i32.const 0)))"
        " (core instance $i (instantiate $m))"
        ' (func (export "f") (result (list u32)) (canon lift (core func $i "f")'
        '   (memory (core memory $i "memory")) (realloc (core func $i "realloc")))))'
    )
    with plugsafe.Host() as host:
        plugin = host.load_component(wat.encode(), policy=plugsafe.Policy(timeout=20.0))
        holder.append(plugin)

        async def main() -> None:
            task = asyncio.ensure_future(plugin.invoke_async("f"))
            assert await asyncio.to_thread(reached.wait, 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        assert after == []  # stopped at the first check after the cancel
        monkeypatch.undo()
        assert plugin.invoke("f") == [0] * 5000
        plugin.close()


def test_a_record_with_a_field_named_self_comes_back() -> None:
    """``self`` is a valid WIT field name; ``Record(**fields)`` took it as its own ``self``
    and every call returning one raised a bare TypeError."""
    wat = (
        '(component (core module $m (memory (export "memory") 1)'
        '  (func (export "f") (result i32)'
        "    (i32.store (i32.const 0) (i32.const 5)) (i32.store (i32.const 4) (i32.const 6))"
        "    (i32.const 0)))"
        " (core instance $i (instantiate $m))"
        ' (type $r-def (record (field "self" u32) (field "fields" u32)))'
        ' (export $r "r" (type $r-def))'
        ' (func (export "f") (result $r) (canon lift (core func $i "f")'
        '   (memory (core memory $i "memory")))))'
    )
    with plugsafe.Host() as host, host.load_component(wat.encode()) as plugin:
        got = plugin.invoke("f")
    assert (got.self, got.fields) == (5, 6)
    assert got == plugsafe.Record(self=5, fields=6)


def _doubling(levels: int, exports: int) -> bytes:
    """A component whose type ``t<levels>`` is ``tuple<t, t>`` of the one before, down to u8
    (2**levels leaves in a few bytes each), taken by ``exports`` functions."""
    defs = ["(type $t0 u8)"]
    defs += [f"(type $t{i} (tuple $t{i - 1} $t{i - 1}))" for i in range(1, levels + 1)]
    funcs = [
        f'(func (export "f{n}") (param "x" (list $t{levels})) (result u32)'
        ' (canon lift (core func $i "f") (memory (core memory $i "memory"))'
        ' (realloc (core func $i "realloc"))))'
        for n in range(exports)
    ]
    return (
        f"(component {' '.join(defs)}"
        ' (core module $m (memory (export "memory") 1)'
        '  (func (export "f") (param i32 i32) (result i32) i32.const 0)'
        '  (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 0))'
        f" (core instance $i (instantiate $m)) {' '.join(funcs)})"
    ).encode()


def test_a_signature_of_exponentially_many_parts_is_refused_not_walked() -> None:
    """2**18 leaves (within wasmtime's limit on a type's size) took a load 40 s; a function
    over 5,000 parts is now one plugsafe cannot call (the load says so)."""
    with plugsafe.Host() as host:
        begun = time.perf_counter()
        with pytest.raises(plugsafe.PluginLoadError, match="over 5,000 parts"):
            host.load_component(_doubling(18, 1))
        assert time.perf_counter() - begun < 20  # (~0.5 s; 40 s before)


def test_a_world_of_many_large_signatures_is_refused_at_load() -> None:
    # 7 functions of ~4,100 parts each: each under its own cap, over the world's 25,000.
    with plugsafe.Host() as host, pytest.raises(plugsafe.InvalidModuleError, match="in all"):
        host.load_component(_doubling(11, 7))


class _LyingName(str):
    def __hash__(self) -> int:
        raise RuntimeError("the app's __hash__")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("the app's __eq__")


@pytest.mark.parametrize("make", [lambda: 123, lambda: b"add", lambda: None, _ClassRaises])
def test_a_function_name_that_is_no_str_is_a_signature_error(
    world: plugsafe.ComponentPlugin, make: Callable[[], Any]
) -> None:
    """docs/errors.md: decided by the object's class, never by asking the object. A
    component's invoke raised a bare TypeError (or the object's own error)."""
    with pytest.raises(plugsafe.SignatureError, match="a function name is a str"):
        world.invoke(make(), 2, 3)


def test_a_str_subclass_name_is_the_plain_string_it_holds(world: plugsafe.ComponentPlugin) -> None:
    assert world.invoke(_LyingName("add"), 2, 3) == 5
    with pytest.raises(plugsafe.ExportNotFoundError):
        world.invoke(_LyingName("nothing"), 2, 3)


def test_a_component_with_too_many_exports_is_refused_before_they_are_listed() -> None:
    """wasmtime's C API finds the n-th export by walking to it: listing 20,000 exports (a
    209 KB component) took a load 8.8 s, quadratic in their number (a 1 MB one minutes)."""
    wat = (
        '(component (core module $m (func (export "f"))) (core instance $i (instantiate $m))'
        ' (func $f (canon lift (core func $i "f")))'
        + "".join(f'(export "f{i}" (func $f))' for i in range(5_001))
        + ")"
    )
    with plugsafe.Host() as host, pytest.raises(plugsafe.InvalidModuleError, match="5,000"):
        host.load_component(wat.encode())
