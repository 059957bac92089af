"""Both backends, in one process, behave alike at the runtime level.

Each case runs once per backend object, constructed directly (not chosen through
``PLUGSAFE_BACKEND``): calls, memory access with honest and hostile spans, fuel, deadlines, and
host callbacks that raise or touch the caller's memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from plugsafe import _runtime as rt
from plugsafe._runtime._backend import Backend, check_span
from plugsafe._runtime._ctypes import CtypesBackend
from plugsafe._runtime._linker import Caller

from wat import abi_module


def _cffi(compiled: bool) -> Backend:
    from plugsafe._runtime._cffi import SPEEDUPS, CffiBackend

    if not compiled:
        return CffiBackend(speedups=None)
    if SPEEDUPS is None:  # not built here, or PLUGSAFE_SPEEDUPS=0 (tests/test_speedups.py)
        raise RuntimeError("the compiled call (plugsafe._speedups) is not in use here")
    return CffiBackend(speedups=SPEEDUPS)


def _backends() -> list[Any]:
    out: list[Any] = [pytest.param(CtypesBackend(), id="ctypes")]
    # cffi's own ABI-mode call, and the compiled one (plugsafe._speedups) where it is in use.
    for compiled, name in ((False, "cffi"), (True, "cffi-compiled")):
        try:
            out.append(pytest.param(_cffi(compiled), id=name))
        except Exception as exc:  # cffi missing here: the ctypes cases still run
            out.append(pytest.param(None, id=name, marks=pytest.mark.skip(reason=str(exc))))
    return out


BACKENDS = _backends()

GUEST = abi_module(
    """
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "mix") (param i64 f64) (result f64 i64)
    (f64.add (f64.convert_i64_s (local.get 0)) (local.get 1)) (local.get 0))
  (func (export "nothing"))
  (func (export "spin") (loop $l (br $l)))
  (func (export "boom") (result i32) (call $boom))
  (func (export "peek") (param i32 i32) (result i32) (call $peek (local.get 0) (local.get 1)))
  (func (export "poke") (param i32 i32) (call $poke (local.get 0) (local.get 1)))
  (func (export "give") (param i32) (result i32) (call $give (local.get 0)))
  (func (export "twice") (param i32) (result i32) (call $twice (local.get 0)))
  (func (export "echo") (param $p i32) (param $n i32) (result i64)
    (call $ok (local.get $p) (local.get $n)))
""",
    imports="""
  (import "env" "boom" (func $boom (result i32)))
  (import "env" "peek" (func $peek (param i32 i32) (result i32)))
  (import "env" "poke" (func $poke (param i32 i32)))
  (import "env" "give" (func $give (param i32) (result i32)))
  (import "env" "twice" (func $twice (param i32) (result i32)))
""",
)
PAGE = 65536


class Rig:
    """An engine, a linker with the host functions above, and an instance, on one backend."""

    def __init__(self, backend: Backend, *, fuel: int | None = None, ticks: int = 1 << 40) -> None:
        self.backend = backend
        self.errors: list[BaseException] = []
        self.engine = rt.Engine(metered=fuel is not None, max_stack=512 * 1024)
        linker = rt.Linker(self.engine, backend)
        sink = self._sink
        linker.define_func("env", "boom", [], ["i32"], self._boom, sink)
        linker.define_func("env", "peek", ["i32", "i32"], ["i32"], self._peek, sink)
        linker.define_func("env", "poke", ["i32", "i32"], [], self._poke, sink)
        linker.define_func("env", "give", ["i32"], ["i32"], self._give, sink)
        linker.define_numeric("env", "twice", ["i32"], "i32", lambda v: 2 * v, sink)
        self.module = self.engine.compile(rt.wat_to_wasm(GUEST))
        self.instance = rt.Instance(
            self.engine, linker, self.module, memory_size=4 * PAGE, memories=1,
            table_elements=100, tables=1, fuel=fuel, deadline_ticks=ticks,
        )  # fmt: skip
        self.seen: list[bytes] = []

    def _sink(self, exc: BaseException) -> str:
        self.errors.append(exc)
        return f"host failed: {type(exc).__name__}"

    def _boom(self, caller: Caller, args: list[Any]) -> list[Any]:
        raise KeyboardInterrupt("not through C")  # a BaseException: it must not unwind into C

    def _peek(self, caller: Caller, args: list[Any]) -> list[Any]:
        caller.check(args[0], args[1])
        data = caller.read(args[0], args[1])
        self.seen.append(data)
        return [sum(data)]

    def _poke(self, caller: Caller, args: list[Any]) -> None:
        caller.write(args[0], bytes([args[1] & 0xFF]) * 4)

    def _give(self, caller: Caller, args: list[Any]) -> list[Any]:
        return [caller.place(b"x" * args[0], b"plugsafe_alloc")]

    def invoke(self, name: str, *args: object) -> tuple[Any, ...]:
        ref = self.instance.func(name)
        assert ref is not None
        return self.instance.invoke(ref, args)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    yield request.param


def test_the_backends_are_what_they_say(backend: Backend) -> None:
    assert backend.name in {"cffi", "ctypes"}
    assert type(backend).__name__.lower().startswith(backend.name)


def test_numeric_calls_return_just_the_results(backend: Backend) -> None:
    rig = Rig(backend)
    assert rig.invoke("add", 2, 3) == (5,)
    assert rig.invoke("add", -1, -(2**31)) == (2**31 - 1,)  # wraps as i32
    assert rig.invoke("mix", -(2**40), 0.5) == (-(2**40) + 0.5, -(2**40))
    assert rig.invoke("nothing") == ()
    ref = rig.instance.func("add")
    assert ref is not None
    assert rig.instance.call(ref, [40, 2]) == [42]
    with pytest.raises(rt.ArgumentsDoNotFit):
        rig.instance.invoke(ref, (1,))
    with pytest.raises(rt.ArgumentsDoNotFit):
        rig.instance.invoke(ref, (2**31, 0))


def test_instance_memory_in_range(backend: Backend) -> None:
    inst = Rig(backend).instance
    size = inst.memory_size()
    assert size == PAGE == inst.memory_total()
    inst.write(100, b"abc")
    assert inst.read(100, 3) == b"abc"
    inst.write(size - 4, b"tail")
    assert inst.read(size - 4, 4) == b"tail"  # exactly at the end
    assert inst.read(size, 0) == b""
    inst.write(size, b"")


@pytest.mark.parametrize(
    ("pointer", "length"),
    [
        (-1, 1),  # an i32 -1 is address 2**32 - 1
        (0, -1),  # a length of 2**32 - 1
        (PAGE - 3, 4),  # one past the end
        (0, PAGE + 1),
        (0xFFFF_FFF0, 0x20),  # would wrap to address 16 in 32-bit arithmetic
        (-16, 32),  # the same as i32 arguments
        (2**32, 1),
        (-(2**31) - 1, 0),  # not an i32 at all
    ],
)
def test_hostile_spans_are_refused_everywhere(backend: Backend, pointer: int, length: int) -> None:
    rig = Rig(backend)
    inst = rig.instance
    ctx, mem = inst._ctx, inst.memory
    assert mem is not None
    with pytest.raises(rt.GuestMemoryError, match="runs past the end"):
        check_span(pointer, length, PAGE)
    with pytest.raises(rt.GuestMemoryError):
        backend.read(ctx, mem, pointer, length)
    with pytest.raises(rt.GuestMemoryError):
        inst.read(pointer, length)
    if length > 0:
        with pytest.raises(rt.GuestMemoryError):
            backend.write(ctx, mem, pointer, b"x" * length)
        with pytest.raises(rt.GuestMemoryError):
            inst.write(pointer, b"x" * length)
    # From the guest, through a host function's Caller: a trap, recorded by the sink.
    if -(2**31) <= pointer < 2**31 and -(2**31) <= length < 2**31 and length:
        with pytest.raises(rt.WasmFailure, match="host failed: GuestMemoryError"):
            rig.invoke("peek", pointer, length)
        assert isinstance(rig.errors[-1], rt.GuestMemoryError)
        assert "runs past the end" in str(rig.errors[-1])


def test_check_span_takes_i32_values_as_unsigned() -> None:
    assert check_span(-1, 1, 2**32) == (2**32 - 1, 2**32)
    assert check_span(0, 0, 0) == (0, 0)
    assert check_span(10, 0, 10) == (10, 10)
    with pytest.raises(rt.GuestMemoryError, match="pointer 4294967295 with length 2"):
        check_span(-1, 2, 2**32)


def test_backend_read_and_write_at_the_edges(backend: Backend) -> None:
    inst = Rig(backend).instance
    ctx, mem = inst._ctx, inst.memory
    assert mem is not None
    backend.write(ctx, mem, PAGE - 2, b"hi")
    assert backend.read(ctx, mem, PAGE - 2, 2) == b"hi"
    assert backend.read(ctx, mem, PAGE, 0) == b""
    assert backend.size(ctx, mem) == PAGE


def test_fuel(backend: Backend) -> None:
    rig = Rig(backend, fuel=10_000)
    inst = rig.instance
    assert inst.fuel_left() == 10_000
    backend.set_fuel(inst._ctx, 1234)
    assert backend.get_fuel(inst._ctx) == 1234
    rig.invoke("add", 1, 2)  # refills to 10_000, then spends a little
    assert 9_900 < inst.fuel_left() < 10_000
    with pytest.raises(rt.WasmFailure) as info:
        rig.invoke("spin")
    assert info.value.trap_code == "OUT_OF_FUEL"
    assert rig.invoke("add", 1, 2) == (3,)  # refilled: the instance keeps working
    assert Rig(backend).instance.fuel_left() == 0  # unmetered


def test_deadline_traps_with_interrupt(backend: Backend) -> None:
    rig = Rig(backend, ticks=2)
    for _ in range(3):
        rig.engine.increment_epoch()
    with pytest.raises(rt.WasmFailure) as info:
        rig.invoke("spin")  # the budget was armed before those ticks: it is already spent
    assert info.value.trap_code == "INTERRUPT"
    rig.instance.set_budget()
    assert rig.invoke("add", 1, 1) == (2,)  # re-armed


def test_a_raising_host_callback_becomes_a_trap(backend: Backend) -> None:
    rig = Rig(backend)
    for _ in range(2):  # the trap slot is cleared after a failure: the next call is clean
        with pytest.raises(rt.WasmFailure, match="host failed: KeyboardInterrupt"):
            rig.invoke("boom")
        assert isinstance(rig.errors[-1], KeyboardInterrupt)
        assert rig.invoke("add", 1, 2) == (3,)


def test_caller_reads_and_writes_guest_memory(backend: Backend) -> None:
    rig = Rig(backend)
    inst = rig.instance
    inst.write(200, bytes([1, 2, 3, 4]))
    assert rig.invoke("peek", 200, 4) == (10,)
    assert rig.invoke("peek", PAGE - 4, 4) == (0,)  # exactly at the end
    assert rig.invoke("peek", -1, 0) == (0,)  # an empty span may point anywhere
    assert rig.seen[0] == bytes([1, 2, 3, 4])
    rig.invoke("poke", 300, 7)
    assert inst.read(300, 4) == bytes([7] * 4)
    (pointer,) = rig.invoke("give", 5)
    assert inst.read(pointer & 0xFFFF_FFFF, 5) == b"xxxxx"
    assert rig.invoke("twice", 21) == (42,)
    assert rig.errors == []


def test_abi_call_round_trip(backend: Backend) -> None:
    inst = Rig(backend).instance
    alloc, echo = inst.func("plugsafe_alloc"), inst.func("echo")
    assert alloc is not None and echo is not None
    word = inst.abi_call(alloc, echo, b"hello")
    pointer, length = word >> 32, word & 0x7FFF_FFFF
    assert inst.read(pointer, length) == b"hello"
    assert inst.abi_call(alloc, echo, b"") & 0x7FFF_FFFF == 0


def test_a_trapping_start_function_fails_instantiation(backend: Backend) -> None:
    engine = rt.Engine(metered=False, max_stack=512 * 1024)
    linker = rt.Linker(engine, backend)
    module = engine.compile(rt.wat_to_wasm("(module (func $s unreachable) (start $s))"))
    with pytest.raises(rt.WasmFailure) as info:
        rt.Instance(
            engine, linker, module, memory_size=PAGE, memories=1, table_elements=10, tables=1,
            fuel=None, deadline_ticks=1 << 40,
        )  # fmt: skip
    assert info.value.trap_code == "UNREACHABLE"
