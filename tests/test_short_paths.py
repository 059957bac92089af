"""The short paths aim at the function of the last call: what they remember must never outlive
the instance it belongs to, and any other call must still go where it should.

``Plugin.invoke`` keeps the last function's packer, C call and budget in the plugin's call path
(issue 14: one object per plugin instead of several); a call of another function, or a call
after the instance changed (a trap, ``fresh_instance``, ``close``), looks it up again. Calling a
function with another instance's store aborts the process, so these tests go through every way
the instance changes and check the next call's result.
"""

from __future__ import annotations

import threading
import time

import pytest

import plugsafe
from plugsafe import Policy

from conftest import LoadFn
from wat import ECHO

FUNCS = """(module
  (memory (export "memory") 1)
  (global $n (mut i32) (i32.const 0))
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "sub") (param i32 i32) (result i32) (i32.sub (local.get 0) (local.get 1)))
  (func (export "count") (result i32)
    (global.set $n (i32.add (global.get $n) (i32.const 1))) (global.get $n))
  (func (export "none"))
  (func (export "two") (param i64) (result i64 i32) local.get 0 i32.const 7)
  (func (export "boom") unreachable))"""


def test_calls_of_several_functions_in_turn_each_reach_their_own(load: LoadFn) -> None:
    p = load(FUNCS)
    for _ in range(3):  # the first round checks each function; the later ones are short
        assert p.invoke("add", 5, 3) == 8
        assert p.invoke("sub", 5, 3) == 2
        assert p.invoke("none") is None
        assert p.invoke("two", 9) == (9, 7)
        assert p.invoke("add", 1, 1) == 2


def test_a_name_equal_to_the_last_but_another_string_object_works(load: LoadFn) -> None:
    p = load(FUNCS)
    assert p.invoke("add", 1, 2) == 3
    assert p.invoke("add", 1, 2) == 3
    built = "".join(["a", "d", "d"])  # equal to "add", not the same object
    assert built == "add" and built is not "add"  # noqa: F632
    assert p.invoke(built, 2, 2) == 4

    class Name(str):
        pass

    assert p.invoke(Name("add"), 3, 3) == 6
    assert p.invoke("add", 4, 4) == 8


def test_a_trap_makes_the_next_call_use_the_new_instance(load: LoadFn) -> None:
    p = load(FUNCS)
    assert p.invoke("count") == 1
    assert p.invoke("count") == 2  # aimed, on the first instance
    old = p._instance
    with pytest.raises(plugsafe.PluginTrap):
        p.invoke("boom")
    assert p.invoke("count") == 1  # a fresh instance: its own global
    assert p._instance is not old
    assert p.invoke("count") == 2


def test_a_trap_of_the_aimed_function_itself_is_recovered_from(load: LoadFn) -> None:
    p = load(FUNCS)
    for _ in range(3):
        with pytest.raises(plugsafe.PluginTrap):
            p.invoke("boom")
    assert p.invoke("add", 2, 2) == 4


def test_fresh_instance_calls_never_reuse_an_aimed_function(load: LoadFn) -> None:
    p = load(FUNCS, fresh_instance=True)
    for _ in range(4):
        assert p.invoke("count") == 1  # every call on a brand-new instance


def test_a_closed_plugin_refuses_the_aimed_function(load: LoadFn) -> None:
    p = load(FUNCS)
    assert p.invoke("add", 1, 2) == 3
    assert p.invoke("add", 1, 2) == 3
    p.close()
    with pytest.raises(plugsafe.PluginClosedError):
        p.invoke("add", 1, 2)


def test_a_name_that_is_not_a_string_leaves_the_plugin_usable(load: LoadFn) -> None:
    p = load(FUNCS)
    assert p.invoke("add", 1, 2) == 3
    assert p.invoke("add", 1, 2) == 3
    with pytest.raises(TypeError):
        p.invoke(["add"], 1, 2)  # type: ignore[arg-type]
    # The lock was not left taken: another thread's call goes through, and so does ours.
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(p.invoke("add", 2, 2)))
    t.start()
    t.join(10)
    assert out == [4]
    assert p.invoke("add", 3, 3) == 6


def test_wrong_arguments_to_the_aimed_function_are_refused_and_change_nothing(
    load: LoadFn,
) -> None:
    p = load(FUNCS)
    assert p.invoke("add", 1, 2) == 3
    assert p.invoke("add", 1, 2) == 3
    with pytest.raises(plugsafe.SignatureError, match="takes 2 argument"):
        p.invoke("add", 1)
    with pytest.raises(plugsafe.SignatureError, match="out of range"):
        p.invoke("add", 2**40, 1)
    assert p.invoke("add", 2**32 - 1, 1) == 0  # converted: unsigned in, wraps as i32
    assert p.invoke("add", 4, 5) == 9


def test_fuel_is_refilled_before_every_call_of_the_aimed_function(load: LoadFn) -> None:
    spin = """(module (func (export "burn") (param i32) (result i32) (local i32)
      (block (loop (br_if 1 (i32.eqz (local.get 0)))
        (local.set 0 (i32.sub (local.get 0) (i32.const 1))) (br 0)))
      (i32.const 1)))"""
    p = load(spin, fuel=100_000)
    for _ in range(20):  # each uses a good part of the budget: it must be refilled each time
        assert p.invoke("burn", 5_000) == 1
    with pytest.raises(plugsafe.FuelExhausted):
        p.invoke("burn", 10**6)
    assert p.invoke("burn", 5_000) == 1


def test_a_timed_call_of_the_aimed_function_still_stops_at_its_deadline(load: LoadFn) -> None:
    spin = """(module (func (export "spin") (param i32) (result i32)
      (block (loop (br_if 1 (i32.eqz (local.get 0))) (br 0))) (i32.const 1)))"""
    p = load(spin, timeout=0.2)
    assert p.invoke("spin", 0) == 1
    assert p.invoke("spin", 0) == 1  # aimed
    with pytest.raises(plugsafe.DeadlineExceeded):
        p.invoke("spin", 1)
    assert p.invoke("spin", 0) == 1


def test_calls_and_invokes_interleaved_each_reach_their_own(host: plugsafe.Host) -> None:
    p = host.load(ECHO.encode(), policy=Policy())
    for i in range(4):
        assert p.call("echo", b"hi %d" % i) == b"hi %d" % i
        assert p.invoke("add", i, 1) == i + 1
        with pytest.raises(plugsafe.GuestError):
            p.call("fail", b"no")
    with pytest.raises(plugsafe.PluginTrap):
        p.invoke("trap")  # the instance changes under both aimed functions
    assert p.call("echo", b"again") == b"again"
    assert p.invoke("add", 2, 3) == 5


def test_an_early_epoch_deadline_is_extended_not_obeyed(load: LoadFn) -> None:
    # Re-arming on the short path stamps the arming but sets the epoch deadline again only
    # once the last one is no longer far ahead: an older epoch deadline is an earlier one, and
    # the store's guard must then extend it by the wall clock. Force the worst case: the epoch
    # pushed past the deadline and the arming marked stale (what interrupt() does), with the
    # deadline set just before (so the short path does not set it again).
    spin = """(module
      (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
      (func (export "spin") (loop $l (br $l))))"""
    p = load(spin, timeout=1.0)
    for _ in range(3):
        assert p.invoke("add", 1, 2) == 3
    inst = p._instance
    assert inst is not None
    for _ in range(3):
        assert inst.interrupt()
        assert p.invoke("add", 2, 2) == 4  # the guard looked, found it early, went on
    assert p._instance is inst  # nothing failed
    start = time.perf_counter()
    with pytest.raises(plugsafe.DeadlineExceeded):
        p.invoke("spin")
    assert time.perf_counter() - start >= 1.0  # never early
