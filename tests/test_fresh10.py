"""A call on a fresh instance (``fresh_instance=True``) through its lean path (issue 14, goal 6).

Such a call makes its instance, looks up and calls the ABI function and the guest's input
buffer without FuncRefs (``Instance.abi_once``), and releases the instance: each failure it can
meet says what it said before, and the instance's pool slot is back at once on every path, also
for a KeyboardInterrupt raised inside the call. The call's deadline covers the instantiation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest
from inbuf_wat import BUF_AT, BUF_CAP, HEAP_AT, guest, where, word

import plugsafe
from plugsafe import Policy, Pooling

MiB = 1024 * 1024
SLOTS = 2
# More calls than the pool has slots: a slot kept by any of them fails a later one.
ROUNDS = 2 * SLOTS + 1


@pytest.fixture
def pooled() -> Iterator[plugsafe.Host]:
    # Its own limits (pools are per set of limits): no other test's plugins share its slots.
    with plugsafe.Host(pooling=Pooling(instances=SLOTS, memory_size=3 * MiB)) as host:
        yield host


def fresh(**kwargs: object) -> Policy:
    return Policy(memory=3 * MiB, fresh_instance=True, **kwargs)  # type: ignore[arg-type]


def assert_slots_free(host: plugsafe.Host) -> None:
    """Every slot of the pool is free: a plugin that keeps its instance takes each of them."""
    keep = [host.load(guest().encode(), policy=Policy(memory=3 * MiB)) for _ in range(SLOTS)]
    for p in keep:
        assert p.call("echo", b"ok") == b"ok"
        p.close()


def test_fresh_calls_use_the_buffer_and_every_instance_asks_for_it_once(
    pooled: plugsafe.Host,
) -> None:
    asked: list[int] = []

    @pooled.function
    def note() -> None:
        asked.append(1)

    q = f"(call $note) (i64.const {word(BUF_AT, BUF_CAP)})"
    p = pooled.load(
        guest(q, imports='(import "plugsafe" "note" (func $note))').encode(),
        policy=fresh(allow={"note"}),
    )
    for i in range(ROUNDS):
        data = b"input %d" % i
        assert p.call("echo", data) == data
        assert where(p.call("where", data)) == BUF_AT
    assert len(asked) == 2 * ROUNDS
    assert p.call("echo", b"") == b""  # no input: no question
    assert len(asked) == 2 * ROUNDS
    # Over the buffer: through plugsafe_alloc, on every fresh instance.
    big = bytes(range(256)) * 2
    for _ in range(ROUNDS):
        assert p.call("echo", big) == big
        assert where(p.call("where", big)) == HEAP_AT
    assert_slots_free(pooled)


def test_a_v1_guest_and_a_zero_capacity_buffer_go_through_alloc(pooled: plugsafe.Host) -> None:
    for query in (None, f"(i64.const {word(BUF_AT, 0)})"):
        p = pooled.load(guest(query).encode(), policy=fresh())
        for _ in range(ROUNDS):
            assert p.call("echo", b"abc") == b"abc"
            assert where(p.call("where", b"abc")) == HEAP_AT
        p.close()
    assert_slots_free(pooled)


@pytest.mark.parametrize(
    ("query", "error", "text"),
    [
        ("unreachable", plugsafe.PluginTrap, "unreachable"),
        (f"(i64.const {word(0, 16)})", plugsafe.AbiError, "at address 0"),
        (f"(i64.const {word(65536 - 8, 16)})", plugsafe.AbiError, "returned a bad input buffer"),
        (f"(i64.const {word(BUF_AT, 0x7FFF_FFFF)})", plugsafe.AbiError, "bad input buffer"),
    ],
)
def test_a_bad_input_buffer_fails_every_fresh_call_and_frees_its_slot(
    pooled: plugsafe.Host, query: str, error: type[Exception], text: str
) -> None:
    p = pooled.load(guest(query).encode(), policy=fresh())
    for _ in range(ROUNDS):
        with pytest.raises(error, match=text):
            p.call("echo", b"abc")
    assert p.call("echo", b"") == b""  # no input: the buffer is not asked for
    assert_slots_free(pooled)


_FAILING = """
  (func (export "trap") (param i32 i32) (result i64) unreachable)
  (func (export "bad_out") (param i32 i32) (result i64) (i64.const 0x0000ffff00000100))
  (func (export "big_out") (param i32 i32) (result i64) (i64.const 0x0000010000001000))
  (func (export "guest_err") (param $p i32) (param $n i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.or (i64.const 0x80000000) (i64.extend_i32_u (local.get $n)))))
  (func (export "burn") (param i32 i32) (result i64) (loop $l (br $l)) (i64.const 0))
  (func (export "numeric") (param i32) (result i32) (local.get 0))
  (func (export "wide") (param i32 i32) (result i32) (i32.const 0))
  (global (export "g") i32 (i32.const 0))
  (func (export "grow_fail") (param i32 i32) (result i64)
    (drop (memory.grow (i32.const 1000))) (unreachable))
"""


@pytest.mark.parametrize(
    ("function", "error", "text"),
    [
        ("trap", plugsafe.PluginTrap, "unreachable"),
        ("bad_out", plugsafe.AbiError, "returned a bad output pointer"),
        ("big_out", plugsafe.AbiError, "over the policy's max_output of 1024"),
        ("guest_err", plugsafe.GuestError, "payload"),
        ("burn", plugsafe.FuelExhausted, "fuel"),
        ("numeric", plugsafe.SignatureError, r"an ABI function must be \(i32, i32\) -> i64"),
        ("wide", plugsafe.SignatureError, r"has type \(i32, i32\) -> \(i32\)"),
        ("nothing", plugsafe.ExportNotFoundError, "no export 'nothing'"),
        ("g", plugsafe.ExportNotFoundError, "is a global, not a function"),
        ("memory", plugsafe.ExportNotFoundError, "is a memory, not a function"),
    ],
)
def test_each_failure_of_a_fresh_call_is_the_documented_error_and_frees_its_slot(
    pooled: plugsafe.Host, function: str, error: type[Exception], text: str
) -> None:
    p = pooled.load(guest(body=_FAILING).encode(), policy=fresh(fuel=10**6, max_output=1024))
    for _ in range(ROUNDS):
        with pytest.raises(error, match=text):
            p.call(function, b"payload")
        assert p.call("echo", b"after") == b"after"
    assert p.last_call is not None
    assert_slots_free(pooled)


def test_a_function_name_that_is_not_a_string_is_refused_as_before(pooled: plugsafe.Host) -> None:
    p = pooled.load(guest().encode(), policy=fresh())
    for _ in range(ROUNDS):
        with pytest.raises(plugsafe.PlugsafeError):
            p.call(42, b"x")  # type: ignore[arg-type]
    assert p.call("echo", b"x") == b"x"
    assert_slots_free(pooled)


def test_every_fresh_call_gets_its_full_fuel_after_the_start_function(
    pooled: plugsafe.Host,
) -> None:
    # The start function burns most of the fuel: the call that follows it gets all of it again.
    loop = """
  (global $n (mut i32) (i32.const 0))
  (func $spend (param $k i32)
    (local.set $k (local.get $k)) (block $d (loop $l
      (br_if $d (i32.eqz (local.get $k)))
      (local.set $k (i32.sub (local.get $k) (i32.const 1))) (br $l))))
  (func $start (call $spend (i32.const 6000)))
  (start $start)
  (func (export "spend") (param $p i32) (param $n i32) (result i64)
    (call $spend (i32.const 6000)) (call $ok (local.get $p) (local.get $n)))
  (func (export "spend_more") (param $p i32) (param $n i32) (result i64)
    (call $spend (i32.const 20000)) (call $ok (local.get $p) (local.get $n)))
"""
    p = pooled.load(guest(body=loop).encode(), policy=fresh(fuel=60_000))
    for _ in range(ROUNDS):
        assert p.call("spend", b"ok") == b"ok"
        stats = p.last_call
        assert stats is not None and stats.fuel_consumed is not None
        assert stats.fuel_consumed < 60_000
        with pytest.raises(plugsafe.FuelExhausted):
            p.call("spend_more", b"x")
    assert_slots_free(pooled)


def test_a_fresh_calls_deadline_covers_its_instantiation(pooled: plugsafe.Host) -> None:
    # The start function naps 0.5 s of a 0.7 s timeout, the function then spins: the call
    # stops at 0.7 s from its start (not 0.5 + 0.7 s).
    @pooled.function
    def nap() -> None:
        time.sleep(0.5)

    body = """
  (func $start (call $nap)) (start $start)
  (func (export "spin") (param i32 i32) (result i64) (loop $l (br $l)) (i64.const 0))
"""
    p = pooled.load(
        guest(body=body, imports='(import "plugsafe" "nap" (func $nap))').encode(),
        policy=fresh(allow={"nap"}, timeout=0.7),
    )
    tooks = []
    for _ in range(2):
        begun = time.perf_counter()
        with pytest.raises(plugsafe.DeadlineExceeded):
            p.call("spin", b"x")
        tooks.append(time.perf_counter() - begun)
    # Never early, on every round; on time in the better one (uncovered it takes 1.2 s every
    # time; a loaded machine may make one covered round late).
    assert min(tooks) > 0.6 and min(tooks) < 1.1, tooks
    assert_slots_free(pooled)


@pytest.mark.parametrize("where_", ["query", "function", "start"])
def test_a_keyboard_interrupt_inside_a_fresh_call_propagates_and_frees_the_slot(
    pooled: plugsafe.Host, where_: str
) -> None:
    armed = [False]

    @pooled.function
    def poke() -> None:
        if armed[0]:
            raise KeyboardInterrupt

    imports = '(import "plugsafe" "poke" (func $poke))'
    query = f"(i64.const {word(BUF_AT, BUF_CAP)})"
    body = """(func (export "poked") (param $p i32) (param $n i32) (result i64)
      (call $ok (local.get $p) (local.get $n)))"""
    if where_ == "query":
        query = f"(call $poke) {query}"
    elif where_ == "function":
        body = body.replace("(call $ok", "(call $poke) (call $ok")
    else:
        body += " (func $start (call $poke)) (start $start)"
    p = pooled.load(guest(query, body=body, imports=imports).encode(), policy=fresh(allow={"poke"}))
    armed[0] = True
    for _ in range(ROUNDS):
        with pytest.raises(KeyboardInterrupt):
            p.call("poked", b"abc")
    armed[0] = False
    assert p.call("poked", b"abc") == b"abc"
    assert_slots_free(pooled)


def test_an_instance_made_between_fresh_calls_serves_one_call_and_goes(
    pooled: plugsafe.Host,
) -> None:
    # Reading the memory between calls makes an instance (with_instance): the next call runs
    # on it (the general path, not the lean one's lookups), and it goes with that call.
    p = pooled.load(guest().encode(), policy=fresh())
    for _ in range(ROUNDS):
        assert p.memory.read(BUF_AT, 4) == b"\0\0\0\0"
        assert p.call("echo", b"abcd") == b"abcd"
        assert where(p.call("where", b"abcd")) == BUF_AT
    assert_slots_free(pooled)


def test_closing_from_a_host_function_during_a_fresh_call_frees_the_slot(
    pooled: plugsafe.Host,
) -> None:
    holder: list[plugsafe.Plugin] = []

    @pooled.function
    def stop() -> None:
        holder[0].close()

    body = """
  (func (export "stop") (param $p i32) (param $n i32) (result i64)
    (call $stop) (call $ok (local.get $p) (local.get $n)))
"""
    p = pooled.load(
        guest(body=body, imports='(import "plugsafe" "stop" (func $stop))').encode(),
        policy=fresh(allow={"stop"}),
    )
    holder.append(p)
    # The call ends as it would have (close waits for it), then the plugin is closed.
    assert p.call("stop", b"bye") == b"bye"
    with pytest.raises(plugsafe.PluginClosedError):
        p.call("echo", b"x")
    assert_slots_free(pooled)


@pytest.mark.parametrize("ahead_of_now", [-math.inf, -1.0, 0.0, 0.004, 0.05, 0.5, 30.0])
def test_a_new_instances_deadline_in_one_step_is_the_tickers_two(ahead_of_now: float) -> None:
    # Ticker.deadline_within (what a new instance for a call sets) is deadline(ticks(left)),
    # whether the ticker ticks already or its first tick is still to come.
    import wasmtime

    from plugsafe._runtime import _ticker

    cfg = wasmtime.Config()
    cfg.epoch_interruption = True
    tk = _ticker.Ticker(wasmtime.Engine(cfg), native=False)  # never armed: nothing ticks
    now = time.perf_counter()
    tk.start = now + ahead_of_now
    for left in (-1.0, 0.0, 0.001, 0.01, 0.025, 0.049, 0.05, 0.3, 1.0, 7.5, 30.0, 3600.0):
        expected = tk.deadline(now, tk.ticks(max(left, 0.0)))
        assert tk.deadline_within(now, left) == expected, (left, ahead_of_now)
