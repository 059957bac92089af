"""The fast call path: repeated calls must behave exactly like the first one.

``invoke`` and ``call`` take a short path once a function has been checked on the live
instance (see docs/performance.md). These tests call each function once to get there, then
check that arguments, errors, stats, deadlines, memory growth and host functions behave as the
general path does.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import threading
import time
import warnings
import weakref
from fractions import Fraction

import pytest

import plugsafe
from plugsafe import Policy
from plugsafe import _runtime as rt

from conftest import BAD_I32_PAIRS, LoadFn
from wat import ECHO, abi_module

NUMBERS = """(module
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "wide") (param i64 f32 f64) (result i64 f32 f64)
    local.get 0 local.get 1 local.get 2)
  (func (export "spin") (loop $l (br $l))))"""


class Index:
    """An integer-like object (as numpy's integers are): it has __index__ and nothing else."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


@pytest.mark.parametrize(("args", "message"), BAD_I32_PAIRS)
def test_repeated_invoke_checks_arguments_like_the_first(
    load: LoadFn, args: tuple[object, ...], message: str
) -> None:
    p = load(NUMBERS)
    assert p.invoke("add", 1, 2) == 3  # the function is now checked: the short path applies
    with pytest.raises(plugsafe.SignatureError, match=message):
        p.invoke("add", *args)  # type: ignore[arg-type]
    assert p.invoke("add", 2, 3) == 5  # a refused call changes nothing


def test_invoke_takes_any_integer_and_any_real_number(load: LoadFn) -> None:
    p = load(NUMBERS)
    for _ in range(2):  # first call (general path), then the short path
        assert p.invoke("add", Index(40), True) == 41
        assert p.invoke("add", 2**32 - 1, 0) == -1  # unsigned in, the same bits, signed out
        assert p.invoke("add", 2**31, 0) == -(2**31)
        assert p.invoke("wide", Index(-5), Fraction(1, 4), Fraction(1, 3)) == (
            -5,
            0.25,
            float(Fraction(1, 3)),
        )
        assert p.invoke("wide", 2**64 - 1, 7, 8) == (-1, 7.0, 8.0)
        assert p.invoke("wide", 0, Index(3), Index(4)) == (0, 3.0, 4.0)


def test_f32_argument_out_of_range_is_refused(load: LoadFn) -> None:
    p = load(NUMBERS)
    assert p.invoke("wide", 0, 1.5, 0.0) == (0, 1.5, 0.0)
    with pytest.raises(plugsafe.SignatureError, match=r"argument 1 \(f32\) is out of range"):
        p.invoke("wide", 0, 1e39, 0.0)
    inf = p.invoke("wide", 0, float("inf"), 0.0)[1]
    assert inf == float("inf")
    with pytest.raises(plugsafe.SignatureError, match="argument 2 is f64; got str"):
        p.invoke("wide", 0, 0.0, "1.0")


def test_a_burst_of_calls_keeps_the_whole_timeout_for_each(load: LoadFn) -> None:
    # Deadlines are re-armed only when the epoch ticker has moved: a call made right after
    # others in the same tick must still get the policy's whole timeout, and no more than
    # about a tick beyond it.
    p = load(NUMBERS, timeout=0.05)
    for _ in range(2000):
        p.invoke("add", 1, 1)
    t0 = time.monotonic()
    with pytest.raises(plugsafe.DeadlineExceeded):
        p.invoke("spin")
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.05
    assert elapsed < 5  # generous: only "it was stopped" is asserted, not how fast
    assert p.invoke("add", 1, 1) == 2


def test_deadline_holds_for_the_abi_path_too(load: LoadFn) -> None:
    spin = abi_module(
        """(func (export "spin") (param i32 i32) (result i64) (loop $l (br $l)) (i64.const 0))"""
    )
    p = load(spin + "", timeout=0.05)
    p2 = load(ECHO, name="e", timeout=0.05)
    for _ in range(500):
        p2.call("echo", b"x")
    with pytest.raises(plugsafe.DeadlineExceeded):
        p.call("spin", b"abc")
    with pytest.raises(plugsafe.DeadlineExceeded):
        p.call("spin", b"abc")  # on a fresh instance after the trap


GROW = abi_module(
    """
  (func (export "echo") (param $p i32) (param $n i32) (result i64)
    (call $ok (local.get $p) (local.get $n)))
  ;; Grows memory by $pages pages and writes 0xAB into the last byte of the new memory.
  (func (export "grow") (param $pages i32) (result i32)
    (local $old i32)
    (local.set $old (memory.grow (local.get $pages)))
    (if (i32.ne (local.get $old) (i32.const -1))
      (then (i32.store8 (i32.sub (i32.mul (memory.size) (i32.const 65536)) (i32.const 1))
                        (i32.const 0xAB))))
    (local.get $old))
"""
)


def test_memory_grown_by_the_guest_is_seen_by_every_access(load: LoadFn) -> None:
    p = load(GROW)
    assert p.call("echo", b"small") == b"small"
    assert p.memory.size == 65536
    with pytest.raises(plugsafe.MemoryAccessError):
        p.memory.read(65536, 1)
    assert p.invoke("grow", 3) == 1
    assert p.memory.size == 4 * 65536
    assert p.memory.read(4 * 65536 - 1, 1) == b"\xab"
    p.memory.write(3 * 65536, b"after growth")
    assert p.memory.read(3 * 65536, 12) == b"after growth"
    big = bytes(range(256)) * 1024  # 256 KiB: the allocator grows memory again
    assert p.call("echo", big) == big
    assert p.memory.size > 4 * 65536
    with pytest.raises(plugsafe.MemoryAccessError):
        p.memory.read(p.memory.size, 1)


def test_memory_never_moves_when_it_grows(load: LoadFn) -> None:
    # The window an instance keeps on its memory relies on this (Engine sets
    # memory_may_move=False); if a wasmtime upgrade changed it, this fails loudly.
    p = load(GROW, memory=64 * 2**20)
    p.invoke("grow", 0)
    inst = p._instance
    assert inst is not None and inst.memory is not None
    ctx = inst._ctx

    def base() -> int:
        window, _ = rt._B.window(ctx, inst.memory)
        if rt.BACKEND == "cffi":
            return int(rt._B.ffi.cast("uintptr_t", rt._B.ffi.from_buffer(window)))
        return ctypes.addressof(window)

    before = base()
    assert p.invoke("grow", 900) == 1  # about 56 MiB more
    assert base() == before


def test_host_call_counts_are_per_call(host: plugsafe.Host) -> None:
    @host.function
    def tick(x: int) -> int:  # numeric: the dedicated host-function entry
        return x + 1

    wat = """(module
      (import "plugsafe" "tick" (func $t (param i64) (result i64)))
      (import "plugsafe" "log" (func $log (param i32 i32 i32)))
      (memory (export "memory") 1)
      (func (export "many") (param $n i32) (result i64)
        (local $acc i64)
        (block $done (loop $l
          (br_if $done (i32.eqz (local.get $n)))
          (local.set $acc (call $t (local.get $acc)))
          (local.set $n (i32.sub (local.get $n) (i32.const 1)))
          (br $l)))
        (local.get $acc))
      (func (export "say") (call $log (i32.const 2) (i32.const 0) (i32.const 1))))"""
    p = host.load(wat.encode(), policy=Policy(allow={"tick", "log"}, max_host_calls=10))
    for n in (5, 0, 2, 10, 0, 7):
        assert p.invoke("many", n) == n
        assert p.last_call is not None and p.last_call.host_calls == n
    p.invoke("say")
    assert p.last_call is not None and p.last_call.host_calls == 1
    p.invoke("many", 0)
    assert p.last_call is not None and p.last_call.host_calls == 0
    with pytest.raises(plugsafe.HostCallLimitExceeded):
        p.invoke("many", 11)
    assert p.invoke("many", 10) == 10  # the quota starts again on the next call


def test_numeric_host_function_failures(host: plugsafe.Host) -> None:
    calls: list[int] = []

    @host.function
    def num(x: int) -> int:
        calls.append(x)
        if x == 1:
            raise KeyError("no such id")
        if x == 2:
            return "two"  # type: ignore[return-value]
        if x == 3:
            return 2**63
        if x == 4:
            return True  # a bool is not the int the annotation promises
        return x * 10

    @host.function
    def ratio(x: int, y: float) -> float:
        return x  # an int where a float is declared: taken as that float

    @host.function
    def notify(x: int) -> None:
        calls.append(-x)

    wat = """(module
      (import "plugsafe" "num" (func $num (param i64) (result i64)))
      (import "plugsafe" "ratio" (func $ratio (param i64 f64) (result f64)))
      (import "plugsafe" "notify" (func $notify (param i64)))
      (func (export "num") (param i64) (result i64) (call $num (local.get 0)))
      (func (export "ratio") (param i64 f64) (result f64) (call $ratio (local.get 0) (local.get 1)))
      (func (export "notify") (param i64) (call $notify (local.get 0))))"""
    p = host.load(wat.encode(), policy=Policy(allow={"num", "ratio", "notify"}))
    assert p.invoke("num", 5) == 50
    with pytest.raises(plugsafe.HostFunctionError, match="KeyError") as info:
        p.invoke("num", 1)
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(plugsafe.HostFunctionError, match="returned str"):
        p.invoke("num", 2)
    with pytest.raises(plugsafe.HostFunctionError, match="does not fit in i64"):
        p.invoke("num", 3)
    with pytest.raises(plugsafe.HostFunctionError, match="returned bool"):
        p.invoke("num", 4)
    assert p.invoke("num", 6) == 60  # a fresh instance after each failure
    assert p.invoke("ratio", 7, 0.5) == 7.0
    assert p.invoke("notify", 9) is None
    assert calls == [5, 1, 2, 3, 4, 6, -9]


def test_numeric_host_function_cannot_reenter_its_plugin(host: plugsafe.Host) -> None:
    holder: list[plugsafe.Plugin] = []

    @host.function
    def again(x: int) -> int:
        return int(holder[0].invoke("outer", x))

    wat = """(module
      (import "plugsafe" "again" (func $a (param i64) (result i64)))
      (func (export "outer") (param i64) (result i64) (call $a (local.get 0))))"""
    p = host.load(wat.encode(), policy=Policy(allow={"again"}))
    holder.append(p)
    for _ in range(2):
        with pytest.raises(plugsafe.HostFunctionError) as info:
            p.invoke("outer", 1)
        assert isinstance(info.value.__cause__, plugsafe.PluginCallError)
        assert "re-entrant" in str(info.value.__cause__)


def test_close_from_a_host_function_ends_after_the_call(host: plugsafe.Host) -> None:
    holder: list[plugsafe.Plugin] = []

    @host.function
    def bye(x: int) -> int:
        holder[0].close()
        return x

    wat = """(module
      (import "plugsafe" "bye" (func $b (param i64) (result i64)))
      (func (export "id") (param i64) (result i64) (local.get 0))
      (func (export "bye") (param i64) (result i64) (call $b (local.get 0))))"""
    p = host.load(wat.encode(), policy=Policy(allow={"bye"}))
    holder.append(p)
    assert p.invoke("id", 1) == 1
    assert p.invoke("bye", 4) == 4  # the call that closed it still completes
    assert p.closed
    with pytest.raises(plugsafe.PluginClosedError):
        p.invoke("id", 1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_deadlines_still_fire_in_a_forked_child(load: LoadFn) -> None:
    # Pre-forking servers load plugins and then fork workers. Only the forking thread survives
    # a fork: without a ticker of its own the child's deadlines would never pass.
    p = load(NUMBERS, timeout=0.1)
    assert p.invoke("add", 1, 1) == 2  # the parent's ticker is running
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        code = 3
        try:
            p.invoke("spin")
        except plugsafe.DeadlineExceeded:
            code = 0
        except BaseException:
            code = 2
        finally:
            os._exit(code)
    give_up = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > give_up:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child's call never timed out: it has no epoch ticker")
        time.sleep(0.02)
    assert os.waitstatus_to_exitcode(status) == 0


def test_ticker_thread_ends_with_its_host() -> None:
    host = plugsafe.Host()
    host.load(NUMBERS.encode(), policy=Policy(timeout=1.0))
    ticker = host._ticker
    assert ticker.running
    host.close()
    assert not ticker.running

    def orphan() -> rt.EpochTicker:
        h = plugsafe.Host()
        h.load(NUMBERS.encode(), policy=Policy(timeout=1.0)).close()
        return h._ticker

    left = orphan()
    gc.collect()  # the Host is gone: its ticker must stop on its own
    give_up = time.monotonic() + 5
    while left.running and time.monotonic() < give_up:
        time.sleep(0.01)
    assert not left.running


LOOP = abi_module(
    """
  ;; Counts down from n; a negative n never ends.
  (func (export "loop") (param $n i32)
    (loop $l
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $l (i32.ne (local.get $n) (i32.const 0)))))
  (func (export "aloop") (param $p i32) (param $n i32) (result i64)
    (loop $l
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $l (i32.ne (local.get $n) (i32.const 0))))
    (call $ok (i32.const 0) (i32.const 0)))
"""
)


@pytest.mark.parametrize("path", ["first call", "short path", "abi short path"])
def test_a_discarded_instance_frees_its_store_without_the_garbage_collector(
    load: LoadFn, path: str
) -> None:
    # After a trap the instance is discarded, and nothing may keep it alive through a reference
    # cycle (an exception held by a frame of its own traceback, a call path that points back
    # at its instance): its store, and the memory it maps, must go at once, not at the next
    # garbage collection.
    p = load(LOOP, timeout=0.05)
    if path == "short path":
        p.invoke("loop", 3)  # checked: the runaway call below takes the short path
    elif path == "abi short path":
        assert p.call("aloop", b"\x05") == b""
    inst = p._instance
    assert inst is not None
    store = weakref.ref(inst._store)
    del inst
    gc.collect()
    gc.disable()
    try:
        try:
            if path == "abi short path":
                p.call("aloop", b"")  # n = 0: counts down from 2^32, past the deadline
            else:
                p.invoke("loop", -1)
        except plugsafe.DeadlineExceeded:
            pass  # (pytest.raises would keep the traceback, and with it the instance)
        else:
            pytest.fail("the loop did not time out")
        assert store() is None
    finally:
        gc.enable()


def test_close_while_threads_are_calling(host: plugsafe.Host) -> None:
    # Calls on the short path and a close from another thread: every call either completes
    # with the right answer or raises PluginClosedError; nothing else, and nothing hangs.
    # Timed calls, but with a timeout far off: a call's timeout covers its wait for the
    # plugin, and the lock is not fair; a thread passed over for a second by the other three
    # (a loaded machine) would end with DeadlineExceeded, which this test counts as a failure.
    # (Eight threads on one plugin with the default 1 s did: tests/security/test_sec_host.py.)
    p = host.load(ECHO.encode(), policy=Policy(timeout=30.0))
    assert p.invoke("add", 1, 1) == 2 and p.call("echo", b"x") == b"x"
    errors: list[BaseException] = []
    counts = [0] * 4
    started = threading.Barrier(5)

    def worker(k: int) -> None:
        started.wait()
        while True:
            try:
                if k % 2:
                    assert p.invoke("add", k, 1) == k + 1
                else:
                    assert p.call("echo", b"abc") == b"abc"
                counts[k] += 1
            except plugsafe.PluginClosedError:
                return
            except BaseException as exc:  # anything else is a failure of the test
                errors.append(exc)
                return

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    started.wait()
    give_up = time.monotonic() + 10
    while not all(counts) and not errors and time.monotonic() < give_up:
        time.sleep(0.005)  # every thread is calling before the close
    p.close()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert all(counts)
