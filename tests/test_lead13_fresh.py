"""lead13: a ``fresh_instance`` plugin never runs a call on an earlier call's instance.

A call ends by dropping its instance (``CallPath.settle``). A signal handler's exception
(SIGINT's KeyboardInterrupt, a SIGALRM timeout's) that lands in the call's end before the
drop left the instance as the plugin's current one: the next call ran on it (the short paths
take a current instance as it is), seeing what the earlier call left in memory and globals,
which ``fresh_instance`` promises never happens, and with pooling that instance kept one of
the pool's slots while the plugin sat idle. Found under a signal storm on Python 3.13
(tests/test_attack11_signals.py: a Host's pool of 4 ended with 3 slots, 1 run in 60); forced
here by raising where the handler's exception lands.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import plugsafe
from plugsafe import Policy, Pooling
from plugsafe._callpath import CallPath

MiB = 1024 * 1024

# A counter in a global and in memory: a new instance returns 1 from both, a reused one more.
COUNTER = """(module
  (memory (export "memory") 1)
  (global $g (mut i32) (i32.const 0))
  (global $top (mut i32) (i32.const 1024))
  (func (export "plugsafe_abi_version") (result i32) (i32.const 1))
  (func (export "plugsafe_alloc") (param i32) (result i32)
    (local $p i32) (local.set $p (global.get $top))
    (global.set $top (i32.add (global.get $top) (local.get 0))) (local.get $p))
  (func $bump (result i32)
    (global.set $g (i32.add (global.get $g) (i32.const 1)))
    (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 1)))
    (i32.add (i32.mul (global.get $g) (i32.const 1000)) (i32.load (i32.const 0))))
  (func (export "count") (result i32) (call $bump))
  (func (export "count_abi") (param i32 i32) (result i64)
    (i32.store (i32.const 8) (call $bump))
    (i64.or (i64.shl (i64.const 8) (i64.const 32)) (i64.const 4))))"""

FIRST = 1001  # what a call on a new instance returns: global 1, memory 1


@pytest.fixture
def interrupted_end(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The next call's end (settle) raises KeyboardInterrupt on entry, once, as a signal
    handler's exception landing there would; yields the list that counts it."""
    real = CallPath.settle
    raised: list[int] = []

    def settle(self: CallPath, *args: object, **kwargs: object) -> None:
        if not raised:
            raised.append(1)
            raise KeyboardInterrupt
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(CallPath, "settle", settle)
    yield raised


def _count(plugin: plugsafe.Plugin, how: str) -> int:
    if how == "invoke":
        return int(plugin.invoke("count"))
    return int.from_bytes(plugin.call("count_abi", b""), "little")


@pytest.mark.parametrize("how", ["invoke", "call"])
@pytest.mark.parametrize("pooled", [False, True], ids=["ondemand", "pooling"])
def test_a_call_interrupted_at_its_end_leaves_no_instance_to_the_next(
    interrupted_end: list[int], how: str, pooled: bool
) -> None:
    pooling = Pooling(instances=1, memory_size=2 * MiB) if pooled else None
    with plugsafe.Host(pooling=pooling) as host:
        plugin = host.load(COUNTER.encode(), policy=Policy(fresh_instance=True, memory=2 * MiB))
        with pytest.raises(KeyboardInterrupt):
            _count(plugin, how)
        assert interrupted_end == [1]
        # The interrupted call dropped its instance on its way out: the plugin holds none.
        assert plugin._calls.instance is None  # type: ignore[attr-defined]
        # Each call, by either path, on a new instance (before: 2002, then 3003, ...), and with
        # a pool of one the slot is there for it (the idle plugin holds none).
        for _ in range(3):
            assert _count(plugin, "invoke") == FIRST
            assert _count(plugin, "call") == FIRST
        if pooled:
            # The idle fresh plugin holds no slot: a plugin that keeps its instance takes it.
            other = host.load(COUNTER.encode(), policy=Policy(memory=2 * MiB))
            assert other.invoke("count") == FIRST
            with pytest.raises(plugsafe.PoolExhausted):
                plugin.invoke("count")  # (test premise: the pool has that one slot only)
            other.close()
            assert plugin.invoke("count") == FIRST


@pytest.mark.parametrize("how", ["invoke", "call"])
def test_an_instance_left_current_is_dropped_by_the_next_call_not_called(
    interrupted_end: list[int], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # The second layer: the exception also cuts the call's way out short (the first drop
    # there raises too), so the instance is still current when the next call comes; that
    # call drops it, by either path.
    real = CallPath.instance
    assert real.fset is not None
    cut: list[int] = []

    def set_instance(self: CallPath, inst: object) -> None:
        if inst is None and interrupted_end and not cut:  # (the drop after the cut end)
            cut.append(1)
            raise KeyboardInterrupt
        real.fset(self, inst)  # type: ignore[misc]

    monkeypatch.setattr(CallPath, "instance", property(real.fget, set_instance))
    with plugsafe.Host() as host:
        plugin = host.load(COUNTER.encode(), policy=Policy(fresh_instance=True))
        calls = plugin._calls  # type: ignore[attr-defined]
        with pytest.raises(KeyboardInterrupt):
            _count(plugin, how)
        assert interrupted_end == [1] and cut == [1]
        left = calls.instance
        assert left is not None  # (test premise: the used instance is still current)
        assert _count(plugin, how) == FIRST  # before: 2002
        assert calls.instance is None
        assert left.funcs == {}  # released, not waiting for the garbage collector
