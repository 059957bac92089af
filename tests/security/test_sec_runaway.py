"""Attacks on time, stack, memory and tables: loops, recursion, growth bombs, oversized starts.

Each test names its attack, asserts the precise error plugsafe raises, and then shows the host
(and, where it survives, the plugin) still works.
"""

from __future__ import annotations

import pytest

import plugsafe
from plugsafe import Policy

from sec import OK_FN, assert_healthy, attacker

MiB = 2**20


@pytest.mark.parametrize("policy", [{"timeout": 0.05}, {"fuel": 100_000}], ids=["time", "fuel"])
def test_infinite_loop_in_an_export(host: plugsafe.Host, policy: dict[str, object]) -> None:
    """Attack: an exported function that never returns."""
    p = host.load(
        attacker(
            '(func (export "spin") (param i32 i32) (result i64) (loop $l (br $l)) unreachable)'
        ).encode(),
        policy=Policy(**policy),
    )  # type: ignore[arg-type]
    expected = plugsafe.DeadlineExceeded if "timeout" in policy else plugsafe.FuelExhausted
    with pytest.raises(expected) as info:
        p.call("spin", b"")
    assert info.value.phase == "call"
    assert_healthy(host, p)


@pytest.mark.parametrize("policy", [{"timeout": 0.05}, {"fuel": 100_000}], ids=["time", "fuel"])
def test_infinite_loop_in_the_start_function(
    host: plugsafe.Host, policy: dict[str, object]
) -> None:
    """Attack: a start function that never returns, so the load itself would hang."""
    wat = f"(module (func $s (loop $l (br $l))) (start $s) {OK_FN})"
    expected = plugsafe.DeadlineExceeded if "timeout" in policy else plugsafe.FuelExhausted
    with pytest.raises(expected) as info:
        host.load(wat.encode(), policy=Policy(**policy))  # type: ignore[arg-type]
    assert info.value.phase == "load"
    assert_healthy(host)


def test_host_calls_in_a_loop_cannot_stretch_the_deadline(
    host: plugsafe.Host,
) -> None:
    """Attack: burn the deadline in wasm, then keep calling a host function to stretch it."""

    @host.function
    def tick() -> None:
        pass

    wat = f"""(module (import "plugsafe" "tick" (func $t)) {OK_FN}
      (func (export "burn") (loop $l (call $t) (br $l))))"""
    p = host.load(wat.encode(), policy=Policy(allow={"tick"}, timeout=0.1, max_host_calls=None))
    with pytest.raises(plugsafe.DeadlineExceeded):
        p.invoke("burn")
    assert_healthy(host, p)


def test_deep_recursion(host: plugsafe.Host) -> None:
    """Attack: unbounded recursion to overflow the native stack and crash the process."""
    wat = f"""(module {OK_FN}
      (func $r (export "r") (param i32) (result i32)
        (i32.add (i32.const 1) (call $r (local.get 0)))))"""
    p = host.load(wat.encode())
    with pytest.raises(plugsafe.PluginTrap) as info:
        p.invoke("r", 0)
    assert info.value.trap_code == "STACK_OVERFLOW"
    assert_healthy(host, p)


def test_memory_growth_bomb(host: plugsafe.Host) -> None:
    """Attack: grow memory page by page until the host runs out; trap when refused."""
    p = host.load(
        attacker(
            """(func (export "bomb") (param i32 i32) (result i64)
                 (loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
                 unreachable)"""
        ).encode(),
        policy=Policy(memory=4 * MiB),
    )
    with pytest.raises(plugsafe.MemoryLimitExceeded) as info:
        p.call("bomb", b"")
    assert info.value.limit == "memory" and info.value.value == 4 * MiB
    assert p.last_call is not None and p.last_call.memory_bytes <= 4 * MiB
    assert_healthy(host, p)


def test_memory_growth_bomb_in_one_huge_step(host: plugsafe.Host) -> None:
    """Attack: one memory.grow of 65535 pages (4 GiB) is refused, not allocated."""
    p = host.load(
        f'(module (memory (export "memory") 1) {OK_FN} '
        '(func (export "g") (result i32) (memory.grow (i32.const 65535))))'.encode(),
        policy=Policy(memory=4 * MiB),
    )
    assert p.invoke("g") == -1
    assert p.memory.size == 65536
    assert_healthy(host, p)


def test_table_growth_bomb(host: plugsafe.Host) -> None:
    """Attack: grow a table without bound (each element costs host memory)."""
    wat = f"""(module (table $t 1 funcref) {OK_FN}
      (func (export "bomb") (result i32)
        (loop $l (br_if $l (i32.ne (table.grow $t (ref.null func) (i32.const 1000))
                                   (i32.const -1))))
        (table.size $t)))"""
    p = host.load(wat.encode(), policy=Policy(max_table_elements=10_000))
    assert p.invoke("bomb") <= 10_000
    assert_healthy(host, p)


def test_second_memory_used_to_dodge_the_memory_cap(host: plugsafe.Host) -> None:
    """Attack: a second (even unexported) memory to get the cap twice."""
    wat = f"""(module (memory $a (export "memory") 1) (memory $b 1) {OK_FN}
      (func (export "grow") (result i32)
        (loop $l (br_if $l (i32.ne (memory.grow $a (i32.const 1)) (i32.const -1))))
        (loop $l (br_if $l (i32.ne (memory.grow $b (i32.const 1)) (i32.const -1))))
        (i32.add (memory.size $a) (memory.size $b))))"""
    p = host.load(wat.encode(), policy=Policy(memory=4 * MiB))
    assert p.invoke("grow") * 65536 <= 4 * MiB
    assert_healthy(host, p)


def test_many_memories_used_to_dodge_the_memory_cap(host: plugsafe.Host) -> None:
    """Attack: twenty one-page memories under a 1 MiB cap (16 pages): refused at load."""
    wat = "(module " + "(memory 1) " * 20 + ")"
    with pytest.raises(plugsafe.MemoryLimitExceeded) as info:
        host.load(wat.encode(), policy=Policy(memory=1 * MiB))
    assert info.value.phase == "load"
    assert_healthy(host)


def test_second_table_used_to_dodge_the_table_cap(host: plugsafe.Host) -> None:
    """Attack: many tables, each filled to the per-table cap; the table count is capped too."""
    grow_all = " ".join(
        f"(drop (table.grow {i} (ref.null func) (i32.const 100)))" for i in range(12)
    )
    tables = " ".join(f"(table {i} funcref)" for i in range(12))
    wat = f'(module {tables} {OK_FN} (func (export "grow") {grow_all}))'
    with pytest.raises(plugsafe.PluginLoadError, match="table"):
        host.load(wat.encode(), policy=Policy(max_table_elements=100))
    # Two tables load, and each stays within the per-table cap.
    two = f"""(module (table $a 0 funcref) (table $b 0 funcref) {OK_FN}
      (func (export "grow") (result i32)
        (i32.add (table.grow $a (ref.null func) (i32.const 101))
                 (table.grow $b (ref.null func) (i32.const 101)))))"""
    p = host.load(two.encode(), policy=Policy(max_table_elements=100))
    assert p.invoke("grow") == -2  # both refused
    assert_healthy(host, p)


def test_initial_memory_over_the_cap(host: plugsafe.Host) -> None:
    """Attack: declare a huge initial memory so instantiation alone allocates it."""
    with pytest.raises(plugsafe.MemoryLimitExceeded) as info:
        host.load(b"(module (memory 65536))", policy=Policy(memory=16 * MiB))
    assert info.value.phase == "load"
    assert_healthy(host)


def test_initial_table_over_the_cap(host: plugsafe.Host) -> None:
    """Attack: declare a table of ten million elements."""
    with pytest.raises(plugsafe.PluginLoadError, match="table"):
        host.load(b"(module (table 10000000 funcref))", policy=Policy(max_table_elements=1000))
    assert_healthy(host)


def test_data_segment_past_the_memory_cap(host: plugsafe.Host) -> None:
    """Attack: a data segment placed beyond the initial memory, hoping the host grows it."""
    wat = '(module (memory 1) (data (i32.const 16777216) "far away"))'
    with pytest.raises(plugsafe.PluginLoadError, match="out of bounds"):
        host.load(wat.encode(), policy=Policy(memory=1 * MiB))
    assert_healthy(host)


def test_data_segment_larger_than_the_memory_cap(host: plugsafe.Host) -> None:
    """Attack: a 2 MiB data segment for a memory capped at 1 MiB."""
    data = "\\00" * (2 * MiB)
    wat = f'(module (memory 1) (data (i32.const 0) "{data}"))'
    with pytest.raises(plugsafe.PluginLoadError):
        host.load(wat.encode(), policy=Policy(memory=1 * MiB, max_module_size=16 * MiB))
    assert_healthy(host)


def test_data_segment_over_max_module_size(host: plugsafe.Host) -> None:
    """Attack: a module padded with data past max_module_size (refused before compiling)."""
    data = "\\00" * (64 * 1024)
    wat = f'(module (memory 1) (data (i32.const 0) "{data}"))'
    with pytest.raises(plugsafe.InvalidModuleError, match="max_module_size"):
        host.load(wat.encode(), policy=Policy(max_module_size=32 * 1024))
    assert_healthy(host)
