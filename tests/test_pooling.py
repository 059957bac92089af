"""Host(pooling=Pooling(...)): instances from wasmtime's pooling allocator, with hard limits."""

from __future__ import annotations

import pytest

import plugsafe
from plugsafe import PoolExhausted, Pooling

from wat import ECHO

MiB = 1024 * 1024


def test_a_full_pool_is_a_typed_error_and_close_gives_the_slot_back() -> None:
    # Its own limits: no other test's Host shares this pool (pools are per set of limits).
    with plugsafe.Host(pooling=Pooling(instances=3, memory_size=64 * MiB)) as host:
        plugins = [host.load(ECHO.encode()) for _ in range(3)]
        with pytest.raises(PoolExhausted) as info:
            host.load(ECHO.encode(), name="fourth")
        err = info.value
        assert isinstance(err, plugsafe.LimitExceeded)
        assert (err.limit, err.value, err.phase) == ("pooling.instances", 3, "load")
        assert "'fourth'" in str(err) and "3 instances" in str(err)
        plugins[0].close()  # its slot is free at once, without the garbage collector
        again = host.load(ECHO.encode())
        assert again.call("echo", b"pooled") == b"pooled"
        assert all(p.call("echo", b"x") == b"x" for p in plugins[1:])


def test_fresh_instances_come_from_the_pool_and_go_back_after_each_call() -> None:
    with plugsafe.Host(pooling=Pooling(instances=2, memory_size=32 * MiB)) as host:
        fresh = plugsafe.Policy(fresh_instance=True, memory=32 * MiB)
        plugin = host.load(ECHO.encode(), policy=fresh)
        # Far more calls than slots: each call's instance is freed as the call ends.
        for i in range(50):
            assert plugin.call("echo", str(i)) == str(i).encode()
        # Two plugins that keep their instance hold both slots (a fresh-instance plugin keeps
        # none between calls, not even the one its load made): the next call's new instance
        # finds no slot, and says so at once.
        keep = plugsafe.Policy(memory=32 * MiB)
        others = [host.load(ECHO.encode(), policy=keep) for _ in range(2)]
        with pytest.raises(PoolExhausted) as info:
            plugin.call("echo", b"x")
        assert info.value.phase == "call"
        assert others[0].call("echo", b"ok") == b"ok"  # its own instance: no new slot
        others[0].close()  # gives its slot back
        assert plugin.call("echo", b"again") == b"again"


def test_a_call_that_needs_a_new_instance_after_a_trap_reports_a_full_pool() -> None:
    with plugsafe.Host(pooling=Pooling(instances=2, memory_size=16 * MiB)) as host:
        policy = plugsafe.Policy(memory=16 * MiB)
        victim = host.load(ECHO.encode(), policy=policy)
        with pytest.raises(plugsafe.PluginTrap):
            victim.invoke("trap")  # its instance is discarded and its slot freed
        hog = [host.load(ECHO.encode(), policy=policy) for _ in range(2)]
        with pytest.raises(PoolExhausted) as info:
            victim.call("echo", b"x")
        assert info.value.phase == "call"
        hog[0].close()
        assert victim.call("echo", b"x") == b"x"


def test_a_policy_larger_than_the_pool_slots_is_refused_at_load() -> None:
    with plugsafe.Host(pooling=Pooling(instances=4, memory_size=16 * MiB)) as host:
        with pytest.raises(plugsafe.PolicyError, match="memory_size") as info:
            host.load(ECHO.encode(), policy=plugsafe.Policy(memory=64 * MiB))
        assert info.value.field == "memory"
        assert (
            host.load(ECHO.encode(), policy=plugsafe.Policy(memory=16 * MiB)).call("echo", b"fits")
            == b"fits"
        )


def test_memory_growth_stops_at_the_policy_cap_inside_a_slot() -> None:
    with plugsafe.Host(pooling=Pooling(instances=2, memory_size=4 * MiB)) as host:
        plugin = host.load(ECHO.encode(), policy=plugsafe.Policy(memory=4 * MiB))
        assert plugin.call("echo", b"a" * (3 * MiB)) == b"a" * (3 * MiB)
        with pytest.raises(plugsafe.MemoryLimitExceeded):
            plugin.call("echo", b"a" * (5 * MiB))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"instances": 0, "memory_size": MiB}, "instances"),
        ({"instances": 1, "memory_size": 1000}, "memory_size"),
        ({"instances": 1, "memory_size": 8 * 1024**3}, "memory_size"),
        ({"instances": True, "memory_size": MiB}, "instances"),
        ({"instances": 1, "memory_size": MiB, "tables": 0}, "tables"),
    ],
)
def test_pooling_limits_are_checked(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(plugsafe.PolicyError) as info:
        Pooling(**kwargs)
    assert info.value.field == field


def test_pooling_takes_a_size_with_a_unit_as_policy_does() -> None:
    assert Pooling(instances=2, memory_size="16MiB") == Pooling(2, 16 * MiB)
    assert Pooling(1, "4 GiB").memory_size == 4 * 1024**3
    for bad in ("16 parsecs", "1.5KiB", "8GiB", "-1MiB", ""):
        with pytest.raises(plugsafe.PolicyError) as info:
            Pooling(instances=1, memory_size=bad)
        assert info.value.field == "memory_size"


def test_pooling_must_be_a_pooling() -> None:
    with pytest.raises(TypeError, match="Pooling"):
        plugsafe.Host(pooling={"instances": 1})  # type: ignore[arg-type]


# Leaves its marks in a slot: a byte of its data segment, bytes in the first page, at the end of
# the first wasm page, past it (beyond a keep_resident of one wasm page), in a page it grew,
# and a table element. ``peek`` answers which of them a new instance sees (0: none).
_DIRTY = """
(module
  (memory (export "memory") 2)
  (table 1 funcref)
  (data (i32.const 100) "d")
  (func $f)
  (elem declare func $f)
  (func (export "dirty")
    (i32.store8 (i32.const 100) (i32.const 0xAB))
    (i32.store8 (i32.const 2000) (i32.const 0xAB))
    (i32.store8 (i32.const 65535) (i32.const 0xAB))
    (i32.store8 (i32.const 70000) (i32.const 0xAB))
    (drop (memory.grow (i32.const 1)))
    (i32.store8 (i32.const 131077) (i32.const 0xAB))
    (table.set (i32.const 0) (ref.func $f)))
  (func (export "peek") (result i32)
    (local $seen i32)
    (local.set $seen
      (i32.or
        (i32.or
          (i32.or (i32.ne (i32.load8_u (i32.const 100)) (i32.const 100))
                  (i32.shl (i32.ne (i32.load8_u (i32.const 2000)) (i32.const 0)) (i32.const 1)))
          (i32.or (i32.shl (i32.ne (i32.load8_u (i32.const 65535)) (i32.const 0)) (i32.const 2))
                  (i32.shl (i32.ne (i32.load8_u (i32.const 70000)) (i32.const 0)) (i32.const 3))))
        (i32.or (i32.shl (i32.ne (memory.size) (i32.const 2)) (i32.const 4))
                (i32.shl (i32.eqz (ref.is_null (table.get (i32.const 0)))) (i32.const 5)))))
    ;; The page the last instance grew, grown again here: zeroes too.
    (if (i32.eq (memory.size) (i32.const 2))
      (then (drop (memory.grow (i32.const 1)))))
    (i32.or (local.get $seen)
            (i32.shl (i32.ne (i32.load8_u (i32.const 131077)) (i32.const 0)) (i32.const 6))))
)
"""


@pytest.mark.parametrize("keep", [0, 4096, 64 * 1024, "1MiB"])
def test_a_reused_slot_starts_clean_whatever_it_keeps_resident(keep: int | str) -> None:
    # One slot: every instance below is made in the slot the one before it dirtied.
    pooling = Pooling(instances=1, memory_size=4 * MiB, keep_resident=keep)
    with plugsafe.Host(pooling=pooling) as host:
        policy = plugsafe.Policy(memory=4 * MiB)
        fresh = host.load(
            _DIRTY.encode(), policy=plugsafe.Policy(fresh_instance=True, memory=4 * MiB)
        )
        for _ in range(3):
            fresh.invoke("dirty")
            assert fresh.invoke("peek") == 0
        fresh.close()
        first = host.load(_DIRTY.encode(), policy=policy)
        first.invoke("dirty")
        assert first.invoke("peek") == 0b111_1111  # it sees its own marks
        first.close()
        second = host.load(_DIRTY.encode(), policy=policy)
        assert second.invoke("peek") == 0


def test_keep_resident_is_checked_and_takes_a_unit() -> None:
    assert Pooling(1, MiB).keep_resident == 64 * 1024
    assert Pooling(1, MiB, keep_resident="4KiB").keep_resident == 4096
    assert Pooling(1, MiB, keep_resident=0).keep_resident == 0
    for bad in (-1, True, 1.5, "8GiB", "lots"):
        with pytest.raises(plugsafe.PolicyError) as info:
            Pooling(1, MiB, keep_resident=bad)  # type: ignore[arg-type]
        assert info.value.field == "keep_resident"
