"""Issue 12 (class 4, pools): a PluginPool's wait for a free instance never hangs.

- A call's own policy ``timeout`` covers its wait for a free instance (DeadlineExceeded saying
  so), and the call after the wait runs on what is left of it.
- A wait that could never end is refused at once with PluginCallError naming the pools, with
  no timeout anywhere: same-pool re-entry with every instance held along the thread's own
  chain, two pools (or a pool and a plugin) whose host functions call each other from two
  threads, and a pool all of whose holders wait for what the waiting thread holds.
- A wait that can end is never refused: one holder still running is enough.

Every test runs its threads as daemons and joins them with a hard bound: a regression fails
the test instead of hanging the suite. Wall-clock margins are generous (shared 2-core machine).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from poolrig import BOUND, Rig, refused_as_deadlock, rig_lifetime, wait_until, waiting

import plugsafe


@pytest.fixture
def rig() -> Iterator[Rig]:
    yield from rig_lifetime()


# -- 1. the call's own timeout covers its wait for a free instance ----------------------------


def test_pool_timeout_covers_the_wait_for_a_free_instance(rig: Rig) -> None:
    pool = rig.pool("busy", 1, timeout=0.5)
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        inside.set()
        release.wait(BOUND)

    rig.actions[1] = hold
    rig.start("holder", pool.invoke, "go", 1)
    assert inside.wait(BOUND)
    try:
        t0 = time.perf_counter()
        with pytest.raises(plugsafe.DeadlineExceeded) as info:
            pool.invoke("five")  # a top-level call: no enclosing deadline, only its own
        waited = time.perf_counter() - t0
        with pytest.raises(plugsafe.DeadlineExceeded):
            pool.call("echo", b"x")
        with pytest.raises(plugsafe.DeadlineExceeded):
            pool.call_json("echo", 1)
    finally:
        release.set()
    rig.join()
    assert 0.45 <= waited < 5.0, waited
    err = info.value
    assert err.phase == "call" and err.limit == "timeout" and err.value == 0.5
    assert "waiting for a free instance of pool 'busy'" in str(err), err
    assert "all of it spent" in str(err), err
    # The instance came back: the pool works again.
    assert pool.invoke("five") == 5


def test_pool_call_after_a_wait_runs_on_what_is_left_of_its_timeout(rig: Rig) -> None:
    # The holder gives the instance back 1.5 s into a 2.0 s timeout; the waiter then spins.
    # Its deadline is 2.0 s from its own start (not 2.0 s more after the wait: ~3.5 s).
    pool = rig.pool("late", 1, timeout=2.0)
    inside = threading.Event()

    def hold() -> None:
        inside.set()
        time.sleep(1.5)

    rig.actions[1] = hold
    rig.start("holder", pool.invoke, "go", 1)
    assert inside.wait(BOUND)
    t0 = time.perf_counter()
    with pytest.raises(plugsafe.DeadlineExceeded):
        pool.invoke("spin")
    took = time.perf_counter() - t0
    rig.join()
    assert rig.results["holder"] == 0
    assert took < 3.1, f"the wait was not counted in the call's timeout: {took:.2f} s"


def test_pool_wait_without_timeout_still_gets_the_instance(rig: Rig) -> None:
    pool = rig.pool("free-later", 1)
    inside = threading.Event()

    def hold() -> None:
        inside.set()
        time.sleep(0.3)

    rig.actions[1] = hold
    rig.start("holder", pool.invoke, "go", 1)
    assert inside.wait(BOUND)
    rig.start("waiter", pool.invoke, "five")
    rig.join()
    assert rig.results == {"holder": 0, "waiter": 5}


@pytest.mark.parametrize("kind", ["call_async", "invoke_async"])
def test_pool_async_call_timeout_covers_its_wait(rig: Rig, kind: str) -> None:
    import asyncio

    pool = rig.pool("aio", 1, timeout=0.5)
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        inside.set()
        release.wait(BOUND)

    rig.actions[1] = hold
    rig.start("holder", pool.invoke, "go", 1)
    assert inside.wait(BOUND)

    async def waiter() -> object:
        if kind == "call_async":
            return await pool.call_async("echo", b"x")
        return await pool.invoke_async("five")

    try:
        with pytest.raises(plugsafe.DeadlineExceeded, match="free instance of pool 'aio'"):
            asyncio.run(asyncio.wait_for(waiter(), BOUND))
    finally:
        release.set()
    rig.join()


# -- 2. waits that can never end are refused at once; waits that can end are not -------------


def test_same_pool_reentry_with_its_only_instance_is_refused_at_once(rig: Rig) -> None:
    pool = rig.pool("solo", 1)  # no timeout anywhere: only the check can end this
    rig.actions[1] = lambda: pool.invoke("five")
    rig.start("caller", pool.invoke, "go", 1)
    rig.join()
    cause = refused_as_deadlock(rig.results["caller"])
    assert "pool 'solo'" in str(cause)
    assert waiting() == 0
    assert pool.invoke("five") == 5


def test_same_pool_reentry_takes_a_second_instance_and_is_refused_past_the_last(
    rig: Rig,
) -> None:
    pool = rig.pool("pair", 2)
    # go(2) -> hook -> go(1) on the second instance -> hook -> five on a third: none left, all
    # held by this thread's own chain.
    rig.actions[2] = lambda: pool.invoke("go", 1)
    rig.actions[1] = lambda: pool.invoke("five")
    rig.actions[3] = lambda: pool.invoke("go", 4)
    rig.actions[4] = lambda: 7
    rig.start("deep", pool.invoke, "go", 2)
    rig.join()
    # One after the other: at once, each would hold one instance and want the other's.
    rig.start("ok", pool.invoke, "go", 3)
    rig.join()
    # The innermost wait is refused; each level's host function passes the failure up.
    exc = rig.results["deep"]
    assert isinstance(exc, plugsafe.HostFunctionError), repr(exc)
    inner: BaseException | None = exc
    while isinstance(inner, plugsafe.HostFunctionError):
        inner = inner.__cause__
    assert isinstance(inner, plugsafe.PluginCallError) and "would deadlock" in str(inner)
    # Re-entry with an instance to spare succeeds (the second instance, held along the chain).
    assert rig.results["ok"] == 7


@pytest.mark.parametrize("shape", ["pool-pool", "pool-plugin", "plugin-pool"])
def test_two_pools_calling_each_other_from_two_threads_do_not_deadlock(
    rig: Rig, shape: str
) -> None:
    # A's host function calls B while B's calls A, from two threads at once, no timeouts: the
    # second to wait closes the cycle and is refused; the first then goes on.
    kinds = shape.split("-")
    a = rig.pool("A", 1) if kinds[0] == "pool" else rig.plugin("A")
    b = rig.pool("B", 1) if kinds[1] == "pool" else rig.plugin("B")
    barrier = threading.Barrier(2, timeout=BOUND)

    def cross(target: Any) -> Callable[[], object]:
        def act() -> object:
            barrier.wait()  # both threads are inside their own call now
            return target.invoke("five")

        return act

    rig.actions[1] = cross(b)
    rig.actions[2] = cross(a)
    rig.start("a", a.invoke, "go", 1)
    rig.start("b", b.invoke, "go", 2)
    rig.join()
    outs = [rig.results["a"], rig.results["b"]]
    assert sorted(type(o).__name__ for o in outs) == ["HostFunctionError", "int"], outs
    refused = next(o for o in outs if isinstance(o, BaseException))
    cause = refused_as_deadlock(refused)
    assert "'A'" in str(cause) and "'B'" in str(cause), cause
    assert 5 in outs or 0 in outs
    assert waiting() == 0


def test_a_pool_whose_every_holder_waits_for_this_thread_is_refused(rig: Rig) -> None:
    # Pool P (2 instances) held by T1 and T2, each waiting for plugin X; T3 holds X and wants
    # an instance of P: no thread of the three can go on. T3 is refused, X goes free, and T1
    # and T2 then finish.
    p = rig.pool("P", 2)
    x = rig.plugin("X")
    barrier = threading.Barrier(3, timeout=BOUND)

    def p_side() -> object:
        barrier.wait()
        return x.invoke("five")

    def x_side() -> object:
        barrier.wait()
        wait_until(lambda: waiting() == 2, "T1 and T2 waiting for X")
        return p.invoke("five")

    rig.actions[1] = p_side
    rig.actions[3] = x_side
    rig.start("t1", p.invoke, "go", 1)
    rig.start("t2", p.invoke, "go", 1)
    rig.start("t3", x.invoke, "go", 3)
    rig.join()
    cause = refused_as_deadlock(rig.results["t3"])
    assert "pool 'P'" in str(cause) and "'X'" in str(cause), cause
    assert rig.results["t1"] == 5 and rig.results["t2"] == 5


def test_a_pool_with_one_holder_still_running_is_waited_for_not_refused(rig: Rig) -> None:
    # As above, but T2 is not waiting: it gives its instance back after a moment. T3's wait can
    # end, so it must not be refused: it gets T2's instance, and then T1 gets X.
    p = rig.pool("P", 2)
    x = rig.plugin("X")
    barrier = threading.Barrier(3, timeout=BOUND)

    def stuck() -> object:
        barrier.wait()
        return x.invoke("five")

    def running() -> object:
        barrier.wait()
        time.sleep(0.4)
        return 0

    def x_side() -> object:
        barrier.wait()
        wait_until(lambda: waiting() == 1, "T1 waiting for X")
        return p.invoke("five")

    rig.actions[1] = stuck
    rig.actions[2] = running
    rig.actions[3] = x_side
    rig.start("t1", p.invoke, "go", 1)
    rig.start("t2", p.invoke, "go", 2)
    rig.start("t3", x.invoke, "go", 3)
    rig.join()
    assert rig.results == {"t1": 5, "t2": 0, "t3": 5}


def test_a_pool_wait_nested_in_a_call_ends_by_that_calls_deadline(rig: Rig) -> None:
    # The pool's own policy has no timeout; the enclosing plugin's 0.5 s bounds the wait.
    pool = rig.pool("inner", 1)
    outer = rig.plugin("outer", timeout=0.5)
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        inside.set()
        release.wait(BOUND)

    rig.actions[1] = hold
    rig.actions[2] = lambda: pool.invoke("five")
    rig.start("holder", pool.invoke, "go", 1)
    assert inside.wait(BOUND)
    try:
        with pytest.raises(plugsafe.DeadlineExceeded, match="free instance of pool 'inner'"):
            outer.invoke("go", 2)
    finally:
        release.set()
    rig.join()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_call_chains_through_pools_and_plugins_never_deadlock(rig: Rig, seed: int) -> None:
    # Four threads, no timeouts anywhere, each making chains of nested calls (host function ->
    # next pool or plugin -> ...) through two pools and two plugins in a random order: only
    # the wait-for check can keep this from deadlocking. Every chain ends, with its result or
    # a typed error (a refused wait, a refused re-entry into a plugin the thread is inside).
    import random

    targets: list[Any] = [rig.pool("P1", 2), rig.pool("P2", 1), rig.plugin("X"), rig.plugin("Y")]
    local = threading.local()

    def step() -> object:
        plan: list[int] = local.plan
        i: int = local.i
        if i >= len(plan):
            time.sleep(0.001)  # hold everything along the chain for a moment
            return 1
        local.i = i + 1
        try:
            return targets[plan[i]].invoke("go", 1)
        finally:
            local.i = i

    rig.actions[1] = step

    def worker(k: int) -> list[str]:
        rnd = random.Random(seed * 100 + k)
        outcomes = []
        for _ in range(25):
            plan = [rnd.randrange(len(targets)) for _ in range(rnd.randint(1, 4))]
            local.plan, local.i = plan, 1
            try:
                targets[plan[0]].invoke("go", 1)
                outcomes.append("ok")
            except plugsafe.PlugsafeError as exc:
                inner: BaseException = exc
                while isinstance(inner, plugsafe.HostFunctionError) and inner.__cause__:
                    inner = inner.__cause__
                assert isinstance(inner, plugsafe.PluginCallError), repr(inner)
                outcomes.append("refused")
        return outcomes

    for k in range(4):
        rig.start(f"w{k}", worker, k)
    rig.join()
    for key, out in rig.results.items():
        assert isinstance(out, list) and len(out) == 25, (key, out)
    assert waiting() == 0
    for t in targets[:2]:
        assert not t._units.held
