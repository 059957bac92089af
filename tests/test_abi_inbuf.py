"""The input buffer (docs/abi.md, ``plugsafe_input_buffer``): small inputs placed without
``plugsafe_alloc``, large ones through it, v1 guests unchanged.

The adversarial cases (bad buffers, traps and loops in the query, re-entry) are in
tests/security/test_sec_inbuf.py.
"""

from __future__ import annotations

import logging

import pytest
from inbuf_wat import BUF_AT, BUF_CAP, HEAP_AT, guest, where, word

import plugsafe
from plugsafe import Policy


def test_a_small_input_goes_into_the_buffer_without_an_alloc_call(host: plugsafe.Host) -> None:
    p = host.load(guest().encode())
    for i in range(5):
        data = b"hello world %d" % i
        assert p.call("echo", data) == data
        assert where(p.call("where", data)) == BUF_AT
    assert p.invoke("allocs") == 0
    # Asked once for the instance, not once per call.
    assert p.invoke("queries") == 1


def test_an_input_of_exactly_the_capacity_fits_and_one_more_byte_does_not(
    host: plugsafe.Host,
) -> None:
    p = host.load(guest().encode())
    assert where(p.call("where", b"x" * BUF_CAP)) == BUF_AT
    assert p.invoke("allocs") == 0
    assert where(p.call("where", b"x" * (BUF_CAP + 1))) == HEAP_AT
    assert p.invoke("allocs") == 1
    big = bytes(range(256)) * 4
    assert p.call("echo", big) == big
    assert p.invoke("allocs") == 2
    # Small inputs go back to the buffer after a large one.
    assert where(p.call("where", b"small")) == BUF_AT
    assert p.invoke("allocs") == 2
    assert p.invoke("queries") == 1


def test_the_load_asks_for_the_first_instances_buffer(host: plugsafe.Host) -> None:
    # The first call then is no dearer than later ones (issue 14, goal 4).
    p = host.load(guest().encode())
    assert p.invoke("queries") == 1
    assert where(p.call("where", b"abc")) == BUF_AT
    assert p.invoke("queries") == 1


def test_empty_input_asks_for_no_buffer(host: plugsafe.Host) -> None:
    # fresh_instance: the load's instance is not the calls' (it asks nothing); each call's
    # instance asks at its first input only.
    asked: list[int] = []

    @host.function
    def note() -> None:
        asked.append(1)

    q = f"(call $note) (i64.const {word(BUF_AT, BUF_CAP)})"
    p = host.load(
        guest(q, imports='(import "plugsafe" "note" (func $note))').encode(),
        policy=Policy(allow={"note"}, fresh_instance=True),
    )
    assert asked == []
    assert p.call("echo", b"") == b""
    assert where(p.call("where")) == 0  # empty input: pointer 0, as before
    assert asked == []
    p.call("echo", b"x")
    assert asked == [1]


def test_a_v1_guest_without_the_export_uses_alloc_as_before(host: plugsafe.Host) -> None:
    p = host.load(guest(None).encode())
    for _ in range(3):
        assert p.call("echo", b"v1 input") == b"v1 input"
    assert where(p.call("where", b"abc")) == HEAP_AT
    assert p.invoke("allocs") == 4
    assert p.invoke("queries") == 0


def test_capacity_zero_means_no_buffer(host: plugsafe.Host) -> None:
    p = host.load(guest(f"(i64.const {word(BUF_AT, 0)})").encode())
    assert where(p.call("where", b"abc")) == HEAP_AT
    assert p.call("echo", b"abc") == b"abc"
    assert p.invoke("allocs") == 2
    # Asked once: "no buffer" is an answer too.
    assert p.invoke("queries") == 1


def test_the_bytes_the_guest_sees_are_the_input_and_it_may_change_them(
    host: plugsafe.Host,
) -> None:
    # "upper" upper-cases its input in place and returns it (as the C SDK's example does).
    upper = """
  (func (export "upper") (param $p i32) (param $n i32) (result i64) (local $i i32) (local $c i32)
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $c (i32.load8_u (i32.add (local.get $p) (local.get $i))))
      (if (i32.and (i32.ge_u (local.get $c) (i32.const 97))
                   (i32.le_u (local.get $c) (i32.const 122)))
        (then (i32.store8 (i32.add (local.get $p) (local.get $i))
                          (i32.sub (local.get $c) (i32.const 32)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (call $ok (local.get $p) (local.get $n)))
"""
    p = host.load(guest(body=upper).encode())
    assert p.call("upper", b"hello") == b"HELLO"
    # A shorter input after a longer one: the length says where it ends, whatever is after it.
    assert p.call("upper", b"abcdefgh") == b"ABCDEFGH"
    assert p.call("upper", b"xy") == b"XY"
    assert p.memory.read(BUF_AT, 8) == b"XYCDEFGH"
    assert p.invoke("allocs") == 0


def test_every_fresh_instance_asks_for_its_own_buffer(host: plugsafe.Host) -> None:
    # The query reports to the host: with fresh_instance each call has a new instance.
    asked: list[int] = []

    @host.function
    def note() -> None:
        asked.append(1)

    q = f"(call $note) (i64.const {word(BUF_AT, BUF_CAP)})"
    p = host.load(
        guest(q, imports='(import "plugsafe" "note" (func $note))').encode(),
        policy=Policy(allow={"note"}, fresh_instance=True),
    )
    for _ in range(4):
        assert where(p.call("where", b"abc")) == BUF_AT
        assert p.invoke("allocs") == 0  # its own fresh instance: never allocated
    assert len(asked) == 4
    # The query's host call is one of the call's host calls.
    p.call("echo", b"x")
    assert p.last_call is not None and p.last_call.host_calls == 1


def test_a_fresh_instance_finds_its_allocator_for_an_input_over_the_buffer(
    host: plugsafe.Host,
) -> None:
    # The allocator is looked up only when an input does not fit (one export lookup less per
    # fresh instance): an input over the buffer on a new instance still finds it, and a trap
    # in it is that call's PluginTrap.
    p = host.load(guest().encode(), policy=Policy(fresh_instance=True))
    big = b"z" * (BUF_CAP + 1)
    for data in (b"small", big, b"small", big):
        assert p.call("echo", data) == data
        assert where(p.call("where", data)) == (BUF_AT if data == b"small" else HEAP_AT)
    trapping = guest().replace(
        "(global.set $allocs (i32.add (global.get $allocs) (i32.const 1)))", "unreachable"
    )
    t = host.load(trapping.encode(), policy=Policy(fresh_instance=True))
    assert t.call("echo", b"fits") == b"fits"
    with pytest.raises(plugsafe.PluginTrap):
        t.call("echo", big)
    assert t.call("echo", b"fits") == b"fits"


def test_an_instance_after_a_trap_asks_again(host: plugsafe.Host) -> None:
    p = host.load(guest(body='(func (export "boom") (param i32 i32) (result i64) unreachable)')
                  .encode())  # fmt: skip
    assert p.call("echo", b"one") == b"one"
    with pytest.raises(plugsafe.PluginTrap):
        p.call("boom", b"two")
    assert p.invoke("queries") == 0  # a fresh instance, not asked yet
    assert where(p.call("where", b"three")) == BUF_AT
    assert p.invoke("queries") == 1
    assert p.invoke("allocs") == 0


def test_the_buffer_outlives_memory_growth(host: plugsafe.Host) -> None:
    grow = '(func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))'
    p = host.load(guest(body=grow).encode(), policy=Policy(memory=8 * 2**20))
    assert p.call("echo", b"before") == b"before"
    assert p.invoke("grow", 3) == 1
    assert p.call("echo", b"after") == b"after"
    assert where(p.call("where", b"abc")) == BUF_AT


def test_a_buffer_of_the_wrong_type_is_ignored_with_a_warning(
    host: plugsafe.Host, caplog: pytest.LogCaptureFixture
) -> None:
    # i32 instead of i64: never called (a function called with a type it does not have reads
    # slots that are not there), and not a load error: the export is optional.
    wrong = guest(None, body='(func (export "plugsafe_input_buffer") (result i32) i32.const 7)')
    with caplog.at_level(logging.WARNING):
        p = host.load(wrong.encode(), name="wrongtype")
    assert "plugsafe_input_buffer" in caplog.text and "() -> i32" in caplog.text
    assert p.call("echo", b"abc") == b"abc"
    assert p.invoke("allocs") == 1


def test_a_global_named_like_the_buffer_is_ignored_with_a_warning(
    host: plugsafe.Host, caplog: pytest.LogCaptureFixture
) -> None:
    body = f'(global (export "plugsafe_input_buffer") i64 (i64.const {word(BUF_AT, BUF_CAP)}))'
    with caplog.at_level(logging.WARNING):
        p = host.load(guest(None, body=body).encode(), name="globalbuf")
    assert "is a global" in caplog.text
    assert where(p.call("where", b"abc")) == HEAP_AT


def test_a_module_without_the_abi_never_asks(host: plugsafe.Host) -> None:
    # Exports the name but no plugsafe_abi_version: invoke-only, the buffer is nobody's concern.
    m = f"""(module (memory (export "memory") 1)
      (func (export "plugsafe_input_buffer") (result i64) (i64.const {word(BUF_AT, BUF_CAP)}))
      (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1))))"""
    p = host.load(m.encode())
    assert p.invoke("add", 2, 3) == 5
    with pytest.raises(plugsafe.AbiError):
        p.call("add", b"x")


def test_call_json_and_async_calls_use_the_buffer(host: plugsafe.Host) -> None:
    import asyncio

    p = host.load(guest().encode())
    assert p.call_json("echo", {"a": 1}) == {"a": 1}
    assert asyncio.run(p.call_async("echo", b"async")) == b"async"
    assert p.invoke("allocs") == 0


def test_every_instance_of_a_pool_uses_its_own_buffer(host: plugsafe.Host) -> None:
    import concurrent.futures

    with plugsafe.PluginPool(guest().encode(), size=3, host=host) as pool:

        def one(i: int) -> bytes:
            return pool.call("echo", b"input %d" % i)

        with concurrent.futures.ThreadPoolExecutor(3) as ex:
            got = list(ex.map(one, range(60)))
        assert got == [b"input %d" % i for i in range(60)]
        assert where(pool.call("where", b"abc")) == BUF_AT


def test_fuel_stats_count_the_query(host: plugsafe.Host) -> None:
    # A query that burns fuel, with fresh_instance (each call's instance asks): a call with
    # input costs the query's fuel more than one without (which never asks).
    burn = """(func $burn (local $i i32)
    (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1)))
             (br_if $l (i32.lt_u (local.get $i) (i32.const 1000)))))"""
    q = f"(call $burn) (i64.const {word(BUF_AT, BUF_CAP)})"
    p = host.load(guest(q, body=burn).encode(), policy=Policy(fuel=10**6, fresh_instance=True))
    p.call("echo", b"")
    empty = p.last_call
    p.call("echo", b"abc")
    asked = p.last_call
    assert empty is not None and asked is not None
    assert empty.fuel_consumed is not None and asked.fuel_consumed is not None
    assert asked.fuel_consumed > empty.fuel_consumed + 1000
