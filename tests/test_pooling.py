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
