"""Per-call limits: fuel, wall-clock timeout, memory (all memories together), tables, stack."""

from __future__ import annotations

import threading

import pytest

import plugsafe
from plugsafe import Policy

from conftest import LoadFn
from wat import ECHO

COUNT = """(module
  (func (export "count") (param $n i32) (result i32) (local $i i32)
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    local.get $i)
  (func (export "spin") (loop $l (br $l))))"""


def test_fuel_is_reset_every_call(load: LoadFn) -> None:
    p = load(COUNT, fuel=100_000)
    p.invoke("count", 1000)
    used = p.last_call.fuel_consumed  # type: ignore[union-attr]
    assert used is not None and 1000 < used < 100_000
    n = 100_000 // (used // 1000) // 2  # about half the budget
    for _ in range(5):  # would run out on the third call if fuel carried over
        assert p.invoke("count", n) == n
    with pytest.raises(plugsafe.FuelExhausted) as info:
        p.invoke("count", 10**8)
    assert info.value.limit == "fuel" and info.value.value == 100_000
    assert info.value.phase == "call"
    assert p.invoke("count", 10) == 10


def test_timeout_stops_an_infinite_loop(load: LoadFn) -> None:
    p = load(COUNT, timeout=0.1)
    with pytest.raises(plugsafe.DeadlineExceeded) as info:
        p.invoke("spin")
    assert info.value.limit == "timeout" and info.value.value == 0.1
    assert p.last_call is not None and p.last_call.duration >= 0.1
    assert p.invoke("count", 5) == 5  # the deadline is re-armed for the next call


def test_unlimited_policy_still_runs(load: LoadFn) -> None:
    p = load(COUNT, timeout=None, fuel=None)
    assert p.invoke("count", 1_000_000) == 1_000_000


def test_one_plugin_timing_out_never_interrupts_another(host: plugsafe.Host) -> None:
    fast_out = host.load(COUNT.encode(), policy=Policy(timeout=0.05), name="spinner")
    worker = host.load(COUNT.encode(), policy=Policy(timeout=30), name="worker")
    # Size the worker's job so it runs well past the spinner's deadline.
    worker.invoke("count", 10_000_000)
    per_iter = worker.last_call.duration / 10_000_000  # type: ignore[union-attr]
    n = min(int(0.4 / per_iter), 2**31 - 1)
    results: dict[str, object] = {}

    def run_worker() -> None:
        results["worker"] = worker.invoke("count", n)

    t = threading.Thread(target=run_worker)
    t.start()
    for _ in range(4):  # several deadlines fire while the worker runs
        with pytest.raises(plugsafe.DeadlineExceeded):
            fast_out.invoke("spin")
    t.join()
    assert results["worker"] == n


GROW = """(module
  (memory (export "memory") 1)
  (func (export "grow_until_refused") (result i32) (local $pages i32)
    (loop $l
      (if (i32.ne (memory.grow (i32.const 1)) (i32.const -1))
        (then (local.set $pages (i32.add (local.get $pages) (i32.const 1))) (br $l))))
    (memory.size))
  (func (export "bomb")
    (loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable)
  (func (export "grow_big") (result i32) (memory.grow (i32.const 1000))))"""


def test_memory_growth_stops_at_the_cap(load: LoadFn) -> None:
    p = load(GROW, memory=2 * 2**20)
    assert p.invoke("grow_until_refused") == 32  # 32 pages of 64 KiB = 2 MiB
    assert p.memory.size == 2 * 2**20
    assert p.invoke("grow_big") == -1


def test_a_trap_after_refused_growth_is_memory_limit_exceeded(load: LoadFn) -> None:
    p = load(GROW, memory=2 * 2**20)
    with pytest.raises(plugsafe.MemoryLimitExceeded) as info:
        p.invoke("bomb")
    assert info.value.limit == "memory" and info.value.phase == "call"
    assert p.memory.size == 65536  # fresh instance


def test_input_that_cannot_fit_is_memory_limit_exceeded(load: LoadFn) -> None:
    p = load(ECHO, memory=1 * 2**20)
    with pytest.raises(plugsafe.MemoryLimitExceeded, match="could not allocate"):
        p.call("echo", b"x" * (2 * 2**20))
    assert p.call("echo", b"ok") == b"ok"


TWO_MEMORIES = """(module
  (memory $a (export "a") 1)
  (memory $b (export "b") 1)
  (func (export "grow_both") (result i32) (local $pages i32)
    (loop $l
      (if (i32.ne (memory.grow $a (i32.const 1)) (i32.const -1))
        (then (local.set $pages (i32.add (local.get $pages) (i32.const 1))) (br $l))))
    (loop $l
      (if (i32.ne (memory.grow $b (i32.const 1)) (i32.const -1))
        (then (local.set $pages (i32.add (local.get $pages) (i32.const 1))) (br $l))))
    (i32.add (memory.size $a) (memory.size $b))))"""


def test_second_memory_is_no_way_around_the_cap(load: LoadFn) -> None:
    p = load(TWO_MEMORIES, memory=4 * 2**20)
    total_pages = p.invoke("grow_both")
    assert total_pages * 65536 <= 4 * 2**20
    assert total_pages == 64  # each memory got half of the cap
    assert p.last_call is not None and p.last_call.memory_bytes == 4 * 2**20


def test_hidden_second_memory_is_counted_too(load: LoadFn) -> None:
    # The second memory is not exported: the cap still splits over both.
    wat = TWO_MEMORIES.replace('(memory $b (export "b") 1)', "(memory $b 1)")
    p = load(wat, memory=4 * 2**20)
    assert p.invoke("grow_both") == 64


TABLE = """(module
  (table $t 1 funcref)
  (func (export "grow") (param i32) (result i32) (table.grow $t (ref.null func) (local.get 0))))"""


def test_table_growth_is_capped(load: LoadFn) -> None:
    p = load(TABLE, max_table_elements=100)
    assert p.invoke("grow", 99) == 1
    assert p.invoke("grow", 1) == -1


RECURSE = """(module
  (func $r (export "recurse") (param i32) (result i32)
    (if (result i32) (i32.eqz (local.get 0)) (then (i32.const 0))
      (else (i32.add (i32.const 1) (call $r (i32.sub (local.get 0) (i32.const 1))))))))"""


def test_deep_recursion_is_a_stack_overflow_trap(load: LoadFn) -> None:
    p = load(RECURSE)
    assert p.invoke("recurse", 100) == 100
    with pytest.raises(plugsafe.PluginTrap) as info:
        p.invoke("recurse", 100_000_000)
    assert info.value.trap_code == "STACK_OVERFLOW"
    assert p.invoke("recurse", 10) == 10


def test_max_stack_is_a_host_setting() -> None:
    with plugsafe.Host(max_stack=64 * 1024) as small, plugsafe.Host(max_stack=2 * 2**20) as big:
        depth = 5_000
        assert big.load(RECURSE.encode()).invoke("recurse", depth) == depth
        with pytest.raises(plugsafe.PluginTrap) as info:
            small.load(RECURSE.encode()).invoke("recurse", depth)
        assert info.value.trap_code == "STACK_OVERFLOW"
    for bad in (10, 2 * 2**20 + 1, 64 * 2**20):  # above 2 MiB wasmtime would abort the process
        with pytest.raises(ValueError, match="max_stack"):
            plugsafe.Host(max_stack=bad)


def test_max_input_and_max_output(load: LoadFn) -> None:
    p = load(ECHO, max_input=10, max_output=5)
    with pytest.raises(plugsafe.AbiError, match="max_input"):
        p.call("echo", b"x" * 11)
    with pytest.raises(plugsafe.AbiError, match="max_output"):
        p.call("echo", b"x" * 6)
    with pytest.raises(plugsafe.AbiError, match="max_output"):
        p.call("fail", b"x" * 6)  # error messages are capped too
    assert p.call("echo", b"x" * 5) == b"x" * 5
