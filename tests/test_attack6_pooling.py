"""Attack pass 6: Pooling's slots (keep_resident, the leaner fresh-instance path).

What held, kept as a regression test: a slot one plugin dirtied (memory grown and written
past keep_resident, table elements set) and left in every way a call can end (returned,
trapped, ran out of fuel or time, closed by its own host function, out-of-bounds store) shows
none of it to the next plugin of another Host made in that very slot.

What broke: ``Pooling(instances=N)`` is documented as the instances alive at once over every
plugin of every Host sharing the pool, but each engine had a pool of its own: metered plugins
(a ``fuel`` policy) and unmetered ones, or Hosts of another ``max_stack``, got N more each.
"""

from __future__ import annotations

import contextlib

import pytest

import plugsafe
from plugsafe import Policy, PoolExhausted, Pooling

MiB = 1 << 20

_DIRTY = """
(module
  (import "plugsafe" "hook" (func $hook (param i32) (result i32)))
  (memory (export "memory") 1 64)
  (table 4 funcref)
  (data (i32.const 16) "SECRET-X")
  (func $f)
  (elem declare func $f)
  (func $fill (param $from i32) (param $to i32)
    (block $d (loop $l (br_if $d (i32.ge_u (local.get $from) (local.get $to)))
      (i32.store8 (local.get $from) (i32.const 0x5A))
      (local.set $from (i32.add (local.get $from) (i32.const 1))) (br $l))))
  (func $dirty
    (drop (memory.grow (i32.const 15)))
    (call $fill (i32.const 0) (i32.const 1048576))
    (table.set (i32.const 0) (ref.func $f)) (table.set (i32.const 3) (ref.func $f)))
  (func (export "trap") (call $dirty) unreachable)
  (func (export "spin") (call $dirty) (loop $l (br $l)))
  (func (export "hostclose") (result i32) (call $dirty) (call $hook (i32.const 1)))
  (func (export "ok") (result i32) (call $dirty) (i32.const 1))
  (func (export "oob") (call $dirty) (i32.store (i32.const -1) (i32.const 1)))
)
"""

# Grows to 16 pages and counts every nonzero byte but its own data byte, plus 1,000,000 per
# table element set; 7 if its own data segment is missing.
_SCAN = """
(module
  (memory (export "memory") 2 64)
  (table 4 funcref)
  (data (i32.const 100) "y")
  (func (export "scan") (result i32) (local $i i32) (local $n i32) (local $end i32)
    (drop (memory.grow (i32.sub (i32.const 16) (memory.size))))
    (local.set $end (i32.mul (memory.size) (i32.const 65536)))
    (block $d (loop $l (br_if $d (i32.ge_u (local.get $i) (local.get $end)))
      (if (i32.and (i32.ne (local.get $i) (i32.const 100))
                   (i32.ne (i32.load8_u (local.get $i)) (i32.const 0)))
        (then (local.set $n (i32.add (local.get $n) (i32.const 1)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))
    (local.set $n (i32.add (local.get $n)
      (i32.mul (i32.const 1000000) (i32.eqz (ref.is_null (table.get (i32.const 0)))))))
    (local.set $n (i32.add (local.get $n)
      (i32.mul (i32.const 1000000) (i32.eqz (ref.is_null (table.get (i32.const 3)))))))
    (i32.add (local.get $n)
      (i32.mul (i32.const 7) (i32.ne (i32.load8_u (i32.const 100)) (i32.const 121)))))
)
"""


@pytest.mark.parametrize("keep", [0, 64 * 1024, "4MiB"])
@pytest.mark.parametrize("fresh", [False, True])
def test_no_byte_of_a_slot_reaches_the_next_plugin_however_its_call_ended(
    keep: int | str, fresh: bool
) -> None:
    pooling = Pooling(instances=1, memory_size=4 * MiB, keep_resident=keep)
    with plugsafe.Host(pooling=pooling) as first, plugsafe.Host(pooling=pooling) as second:
        holder: dict[str, plugsafe.Plugin] = {}

        @first.function
        def hook(x: int) -> int:
            holder["p"].close()
            return 5

        for export in ("trap", "spin", "hostclose", "ok", "oob", "fuel"):
            policy = Policy(
                allow={"hook"}, memory=4 * MiB, timeout=0.3, fresh_instance=fresh,
                fuel=300_000 if export == "fuel" else None,
            )  # fmt: skip
            dirty = holder["p"] = first.load(_DIRTY.encode(), policy=policy)
            with contextlib.suppress(plugsafe.PlugsafeError):
                dirty.invoke("ok" if export == "fuel" else export)
            dirty.close()
            scan = second.load(_SCAN.encode(), policy=Policy(memory=4 * MiB, fresh_instance=fresh))
            assert scan.invoke("scan") == 0, export
            assert scan.invoke("scan") == 0, export
            scan.close()


@pytest.mark.parametrize("other", ["metered", "max_stack"])
def test_the_instances_limit_holds_over_every_engine_of_the_pool(other: str) -> None:
    pooling = Pooling(instances=2, memory_size=2 * MiB, keep_resident=0)
    wat = b'(module (memory 1) (func (export "f") (result i32) (i32.const 1)))'
    plain = Policy(memory=2 * MiB)
    with (
        plugsafe.Host(pooling=pooling) as host,
        plugsafe.Host(pooling=pooling, max_stack=256 * 1024) as small,
    ):
        held = [host.load(wat, policy=plain), host.load(wat, policy=plain)]
        # The pool is full: a plugin on another engine of it (metered; another max_stack)
        # must find it full too.
        target, policy = (
            (host, Policy(memory=2 * MiB, fuel=1000)) if other == "metered" else (small, plain)
        )
        with pytest.raises(PoolExhausted) as info:
            target.load(wat, policy=policy, name="third")
        assert info.value.value == 2 and info.value.limit == "pooling.instances"
        held[0].close()  # a slot back: now it loads, and serves calls
        third = target.load(wat, policy=policy, name="third")
        assert third.invoke("f") == 1
        with pytest.raises(PoolExhausted):
            host.load(wat, policy=plain)
        third.close()
        held[1].close()
        # Everything back: both engines take instances again, up to the limit together.
        again = [host.load(wat, policy=plain), target.load(wat, policy=policy)]
        with pytest.raises(PoolExhausted):
            host.load(wat, policy=plain)
        for p in again:
            p.close()
