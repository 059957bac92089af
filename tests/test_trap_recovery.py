"""After any trap the instance is thrown away: the next call runs on a fresh one."""

from __future__ import annotations

import pytest

import plugsafe

from conftest import LoadFn

COUNTER = """(module
  (global $n (mut i32) (i32.const 0))
  (memory (export "memory") 1)
  (func $start (i32.store (i32.const 0) (i32.const 42)))
  (start $start)
  (func (export "next") (result i32)
    (global.set $n (i32.add (global.get $n) (i32.const 1))) (global.get $n))
  (func (export "trap") unreachable)
  (func (export "spin") (loop $l (br $l)))
  (func (export "div0") (result i32) (i32.div_s (i32.const 1) (i32.const 0)))
  (func (export "oob") (result i32) (i32.load (i32.const 70000))))"""


@pytest.mark.parametrize(
    ("func", "code"),
    [
        ("trap", "UNREACHABLE"),
        ("div0", "INTEGER_DIVISION_BY_ZERO"),
        ("oob", "MEMORY_OUT_OF_BOUNDS"),
    ],
)
def test_trap_then_fresh_instance(load: LoadFn, func: str, code: str) -> None:
    p = load(COUNTER)
    assert [p.invoke("next") for _ in range(3)] == [1, 2, 3]
    p.memory.write(0, b"\x00\x00\x00\x00")
    with pytest.raises(plugsafe.PluginTrap) as info:
        p.invoke(func)
    assert info.value.trap_code == code
    assert p.invoke("next") == 1  # state is fresh
    assert p.memory.read(0, 4) == (42).to_bytes(4, "little")  # start function ran again


def test_limits_also_discard_the_instance(load: LoadFn) -> None:
    p = load(COUNTER, fuel=10_000)
    p.invoke("next")
    with pytest.raises(plugsafe.FuelExhausted):
        p.invoke("spin")
    assert p.invoke("next") == 1


def test_guest_error_keeps_the_instance(load: LoadFn) -> None:
    from wat import ECHO

    p = load(ECHO)
    p.memory.write(5000, b"kept")
    with pytest.raises(plugsafe.GuestError):
        p.call("fail", b"x")
    assert p.memory.read(5000, 4) == b"kept"
