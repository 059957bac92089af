"""Issue 12: a PluginPool attacked as an attacker would: hostile guests through a pool, close()
from inside a host function and from another thread during calls, cancelled async calls,
instances poisoned by a trap, size 1 with ``fresh_instance``, failures while an instance is
given back. After each attack the pool has every instance back (none leaked, none held), its
calls end typed, and it still works.

Threads are daemons joined with a hard bound (``Rig.join``): a hang fails, never stalls.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from poolrig import BOUND, Rig, refused_as_deadlock, rig_lifetime, wait_until, waiting

import plugsafe

from wat import abi_module

TESTS = Path(__file__).resolve().parent.parent


@pytest.fixture
def rig() -> Iterator[Rig]:
    yield from rig_lifetime()


# ``bump`` counts in a global; ``poison`` sets it to 100 and traps; ``burn`` loops until fuel or
# time runs out; ``grow`` asks for more memory than any policy here allows; ``go(k)`` calls
# host function ``hook(k)``; ``echo`` is the ABI echo.
HOSTILE = abi_module(
    """
  (global $count (mut i32) (i32.const 0))
  (func (export "bump") (result i32)
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (global.get $count))
  (func (export "poison")
    (global.set $count (i32.const 100))
    unreachable)
  (func (export "burn") (loop $l (br $l)))
  (func (export "grow") (result i32) (memory.grow (i32.const 1000)))
  (func (export "go") (param i64) (result i64) (call $hook (local.get 0)))
  (func (export "echo") (param $p i32) (param $n i32) (result i64)
    (call $ok (local.get $p) (local.get $n)))
""",
    imports='(import "plugsafe" "hook" (func $hook (param i64) (result i64)))',
)


def hostile_pool(
    r: Rig, size: int, *, timeout: float | None = 1.0, fuel: int | None = None, **kw: Any
) -> plugsafe.PluginPool:
    policy = plugsafe.Policy(allow={"hook"}, timeout=timeout, fuel=fuel, memory="2MiB", **kw)
    pool = plugsafe.PluginPool(HOSTILE.encode(), policy, size=size, host=r.host, name="hostile")
    r.closing.append(pool)
    return pool


def test_hostile_guests_through_a_pool_end_typed_and_leave_every_instance_usable(
    rig: Rig,
) -> None:
    pool = hostile_pool(rig, 2, timeout=0.3, fuel=5_000_000)
    rig.actions[1] = lambda: 1
    attacks = [
        ("poison", plugsafe.PluginTrap),
        ("burn", plugsafe.LimitExceeded),  # fuel or the deadline, whichever comes first
        ("grow", None),  # memory.grow answers -1 at the cap: no error, no growth
    ]

    # Three attackers, two instances: a call may wait for one, and its 0.3 s timeout covers
    # that wait and the instantiation of a replacement for a discarded one. A "burn" runs its
    # 5M fuel in 13 ms on an idle machine but was measured at 0.2 s on a loaded one, so behind
    # two of them a call can run out of time before it gets an instance (seen once in 3 runs
    # with two busy processes beside the test). That end is typed too, and documented (the
    # DeadlineExceeded says where its time went): it is allowed, and only it, for a call that
    # never ran; every call that ran must end as its attack does.
    def waited(exc: plugsafe.DeadlineExceeded) -> str:
        assert "waiting for" in str(exc), exc
        return "waited"

    def attack(i: int) -> list[str]:
        seen = []
        for name, err in attacks * 2:
            try:
                if err is None:
                    assert pool.invoke(name) == -1
                    seen.append("ok")
                    continue
                with pytest.raises(err):
                    pool.invoke(name)
                seen.append(err.__name__)
            except plugsafe.DeadlineExceeded as exc:  # not the attack's own end: see above
                seen.append(waited(exc))
        try:
            assert pool.call("echo", f"after {i}") == f"after {i}".encode()
        except plugsafe.DeadlineExceeded as exc:
            seen.append(waited(exc))
        return seen

    for i in range(3):
        rig.start(f"attacker{i}", attack, i)
    rig.join()
    for key, out in rig.results.items():
        assert isinstance(out, list), (key, out)
    ran = [kind for out in rig.results.values() for kind in out]  # type: ignore[attr-defined]
    assert {"PluginTrap", "LimitExceeded", "ok"} <= set(ran), ran  # the attacks did run
    assert pool.invoke("bump") == 1  # each trap/limit discarded its instance: fresh state


def test_an_instance_poisoned_by_a_trap_is_not_handed_to_the_next_call(rig: Rig) -> None:
    pool = hostile_pool(rig, 1)
    assert pool.invoke("bump") == 1
    with pytest.raises(plugsafe.PluginTrap):
        pool.invoke("poison")  # global set to 100, then trap
    # The same slot, a new instance: the trapped one's state never reaches this call.
    assert pool.invoke("bump") == 1
    assert pool.invoke("bump") == 2


def test_fresh_instance_pool_of_one_serves_refuses_reentry_and_times_its_wait(
    rig: Rig,
) -> None:
    pool = hostile_pool(rig, 1, timeout=0.5, fresh_instance=True)
    assert [pool.invoke("bump") for _ in range(3)] == [1, 1, 1]
    # Re-entry from its own host function: the only instance is this thread's.
    rig.actions[1] = lambda: pool.invoke("bump")
    with pytest.raises(plugsafe.HostFunctionError) as info:
        pool.invoke("go", 1)
    refused_as_deadlock(info.value)
    # Waiting for it while another thread holds it: the 0.5 s timeout ends the wait.
    inside, release = threading.Event(), threading.Event()

    def hold() -> int:
        inside.set()
        release.wait(BOUND)
        return 0

    rig.actions[2] = hold
    rig.start("holder", pool.invoke, "go", 2)
    assert inside.wait(BOUND)
    try:
        with pytest.raises(plugsafe.DeadlineExceeded, match="free instance"):
            pool.invoke("bump")
    finally:
        release.set()
    rig.join()
    assert pool.invoke("bump") == 1
    assert not pool._units.held


def test_close_from_inside_a_host_function_finishes_the_call_and_closes_the_pool(
    rig: Rig,
) -> None:
    pool = hostile_pool(rig, 2)
    rig.actions[1] = lambda: (pool.close(), 9)[1]
    assert pool.invoke("go", 1) == 9
    assert pool.closed
    with pytest.raises(plugsafe.PluginClosedError):
        pool.invoke("bump")
    assert all(p.closed for p in pool._plugins)


def test_close_from_another_thread_wakes_waiters_and_waits_for_running_calls(
    rig: Rig,
) -> None:
    pool = hostile_pool(rig, 1, timeout=None)
    inside, release = threading.Event(), threading.Event()

    def hold() -> int:
        inside.set()
        release.wait(BOUND)
        return 3

    rig.actions[1] = hold
    rig.start("holder", pool.invoke, "go", 1)
    assert inside.wait(BOUND)
    rig.start("waiter", pool.invoke, "bump")  # no timeout: waits for the instance
    wait_until(lambda: waiting() == 1, "the waiter waiting")
    closer = threading.Thread(target=pool.close, daemon=True)
    closer.start()
    # The waiter is woken by close() at once, typed, while the holder's call still runs.
    wait_until(lambda: "waiter" in rig.results, "the waiter woken by close()")
    assert isinstance(rig.results["waiter"], plugsafe.PluginClosedError), rig.results
    assert closer.is_alive()  # close() waits for the running call ...
    release.set()
    closer.join(BOUND)
    assert not closer.is_alive()
    rig.join()
    assert rig.results["holder"] == 3  # ... which finished normally
    assert all(p.closed for p in pool._plugins)


def test_close_from_a_host_function_does_not_wait_for_a_call_that_waits_for_this_thread(
    rig: Rig,
) -> None:
    # Thread B's pool call waits (no timeout) for plugin X, which thread A is inside; X's host
    # function closes the pool. Waiting there for B's call would deadlock (B waits for A): the
    # instance B holds is closed when B gives it back instead.
    pool = hostile_pool(rig, 2, timeout=None)
    x = rig.plugin("X")
    a_inside = threading.Event()

    def b_side() -> int:
        assert a_inside.wait(BOUND)
        return int(x.invoke("five"))

    def a_side() -> int:
        a_inside.set()
        wait_until(lambda: waiting() == 1, "B waiting for X")
        pool.close()
        return 4

    rig.actions[1] = b_side
    rig.actions[2] = a_side
    rig.start("b", pool.invoke, "go", 1)
    rig.start("a", x.invoke, "go", 2)
    rig.join()
    assert rig.results == {"b": 5, "a": 4}
    assert all(p.closed for p in pool._plugins)


@pytest.mark.parametrize("where", ["running", "waiting"])
def test_cancelled_async_calls_give_their_instance_back(rig: Rig, where: str) -> None:
    pool = hostile_pool(rig, 1, timeout=5.0)
    inside, release = threading.Event(), threading.Event()

    def hold() -> int:
        inside.set()
        release.wait(BOUND)
        return 0

    rig.actions[1] = hold

    async def scenario() -> None:
        if where == "waiting":
            rig.start("holder", pool.invoke, "go", 1)
            assert inside.wait(BOUND)
        task = asyncio.ensure_future(pool.invoke_async("burn"))
        await asyncio.sleep(0.3)  # running, or waiting for the held instance
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()

    t0 = time.monotonic()
    asyncio.run(scenario())
    rig.join()
    # Interrupted at once (not at its 5 s timeout), or never started: the instance is back.
    wait_until(lambda: not pool._units.held, "the cancelled call's instance given back")
    assert time.monotonic() - t0 < 4.5
    assert pool.invoke("bump") >= 1


class Escape(BaseException):
    """Not an Exception: goes through every ``except Exception``."""


def test_a_base_exception_from_a_host_function_gives_the_instance_back(rig: Rig) -> None:
    pool = hostile_pool(rig, 1)

    def escape() -> int:
        raise Escape

    rig.actions[1] = escape
    with pytest.raises((Escape, plugsafe.PlugsafeError)):
        pool.invoke("go", 1)
    assert not pool._units.held
    assert pool.invoke("bump") == 1  # the instance was given back (and is a fresh one)


def test_an_on_call_callback_that_fails_does_not_leak_the_instance() -> None:
    def boom(_stats: object) -> None:
        raise RuntimeError("metrics backend down")

    pool = plugsafe.PluginPool(
        HOSTILE.replace('(import "plugsafe" "hook" (func $hook (param i64) (result i64)))', "")
        .replace('(func (export "go") (param i64) (result i64) (call $hook (local.get 0)))', "")
        .encode(),
        size=1,
        on_call=boom,
    )
    try:
        for _ in range(3):
            assert pool.call("echo", b"x") == b"x"
        assert not pool._units.held
    finally:
        pool.close()


@pytest.mark.parametrize("method", ["call_async", "call_json_async", "invoke_async"])
def test_async_calls_on_a_closed_pool_raise_plugin_closed_error(rig: Rig, method: str) -> None:
    # Found: the pool's executor, shut down by close(), raised an untyped RuntimeError.
    pool = hostile_pool(rig, 1)
    pool.close()
    args: tuple[Any, ...] = {
        "call_async": ("echo", b"x"),
        "call_json_async": ("echo", 1),
        "invoke_async": ("bump",),
    }[method]
    with pytest.raises(plugsafe.PluginClosedError):
        asyncio.run(getattr(pool, method)(*args))


def test_a_cancelled_async_call_stops_waiting_for_a_free_instance(rig: Rig) -> None:
    # No timeout anywhere: before, the pool's worker thread waited until an instance came back
    # (here: never, while the holder holds it), for a call nobody awaited any more.
    pool = hostile_pool(rig, 1, timeout=None)
    inside, release = threading.Event(), threading.Event()

    def hold() -> int:
        inside.set()
        release.wait(BOUND)
        return 0

    rig.actions[1] = hold
    rig.start("holder", pool.invoke, "go", 1)
    assert inside.wait(BOUND)

    async def scenario() -> None:
        task = asyncio.ensure_future(pool.invoke_async("bump"))
        end = time.monotonic() + BOUND / 2
        while waiting() != 1:  # the loop must run for the call to start
            assert time.monotonic() < end, "the async call never waited for the instance"
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(scenario())
        # The worker thread gave up its wait although the instance is still held.
        wait_until(lambda: waiting() == 0, "the cancelled call's wait ended")
        assert inside.is_set() and not release.is_set()
    finally:
        release.set()
    rig.join()
    assert pool.invoke("bump") == 1


def test_on_call_sees_a_pool_call_whose_wait_failed() -> None:
    seen: list[plugsafe.CallStats] = []
    host = plugsafe.Host(on_call=seen.append)
    inside, release = threading.Event(), threading.Event()

    @host.function
    def hook(k: int) -> int:
        if k == 1:
            inside.set()
            release.wait(BOUND)
        return 0

    policy = plugsafe.Policy(allow={"hook"}, timeout=0.3)
    pool = plugsafe.PluginPool(HOSTILE.encode(), policy, size=1, host=host, name="seen")
    holder = threading.Thread(target=pool.invoke, args=("go", 1), daemon=True)
    holder.start()
    try:
        assert inside.wait(BOUND)
        with pytest.raises(plugsafe.DeadlineExceeded):
            pool.invoke("bump", context="tenant-7")
    finally:
        release.set()
        holder.join(BOUND)
        assert not holder.is_alive()
    failed = [s for s in seen if s.function == "bump"]
    assert len(failed) == 1, seen
    assert failed[0].error is plugsafe.DeadlineExceeded
    assert failed[0].context == "tenant-7"
    pool.close()
    host.close()


@pytest.mark.parametrize("closer", ["host", "plugin"])
def test_closing_from_a_host_function_does_not_wait_for_a_call_that_waits_for_it(
    rig: Rig, closer: str
) -> None:
    # Thread B's call of Y waits (no timeout) for plugin X, which thread A is inside; X's host
    # function closes Y (or the whole Host). Waiting for B's call there deadlocked (B waits for
    # A): Y is closed as B's call ends instead.
    x, y = rig.plugin("X"), rig.plugin("Y")
    a_inside = threading.Event()

    def b_side() -> int:
        assert a_inside.wait(BOUND)
        return int(x.invoke("five"))

    def a_side() -> int:
        a_inside.set()
        wait_until(lambda: waiting() == 1, "B waiting for X")
        (rig.host if closer == "host" else y).close()
        return 4

    rig.actions[1] = b_side
    rig.actions[2] = a_side
    rig.start("b", y.invoke, "go", 1)
    rig.start("a", x.invoke, "go", 2)
    rig.join()
    assert rig.results["a"] == 4
    if closer == "host":  # X closed too (as A's call ended): B's wait for it ends typed
        assert isinstance(rig.results["b"], plugsafe.HostFunctionError), rig.results
        assert isinstance(rig.results["b"].__cause__, plugsafe.PluginClosedError)
    else:
        assert rig.results["b"] == 5
    assert y.closed and y._instance is None  # the deferred close completed
    assert waiting() == 0


def test_a_close_waiting_for_a_call_counts_in_the_wait_for_check(rig: Rig) -> None:
    # A (inside X) closes Y while B's call of Y is still running, so A waits for it (it can
    # end). Then B waits for X, which A holds: that wait closes a cycle through A's close and
    # is refused at once; B's call ends, and A's close goes on.
    x, y = rig.plugin("X"), rig.plugin("Y")
    b_inside, a_closing = threading.Event(), threading.Event()

    def b_side() -> int:
        b_inside.set()
        wait_until(lambda: waiting() == 1, "A's close waiting for Y")
        return int(x.invoke("five"))

    def a_side() -> int:
        assert b_inside.wait(BOUND)
        a_closing.set()
        y.close()
        return 4

    rig.actions[1] = b_side
    rig.actions[2] = a_side
    rig.start("b", y.invoke, "go", 1)
    rig.start("a", x.invoke, "go", 2)
    rig.join()
    assert rig.results["a"] == 4
    refused_as_deadlock(rig.results["b"])
    assert y.closed and y._instance is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_wait_for_pool_instances_lost_at_the_fork() -> None:
    # A thread holds the only instance of pool "one" (and one of pool "two") while the main
    # thread forks. In the child that thread is gone and never gives them back: a call of
    # "one" (no timeout) waited forever; it is refused at once. "two" still serves.
    script = f"""
import os, sys, threading, time
sys.path[:0] = [{str(TESTS / "security")!r}, {str(TESTS)!r}]
import plugsafe
from test_sec_pool_attack import HOSTILE

host = plugsafe.Host()
inside, release = threading.Event(), threading.Event()
count = []

@host.function
def hook(k: int) -> int:
    count.append(k)
    if len(count) == 2:
        inside.set()
    release.wait(30)
    return 0

pol = plugsafe.Policy(allow={{"hook"}})
one = plugsafe.PluginPool(HOSTILE.encode(), pol, size=1, host=host, name="one")
two = plugsafe.PluginPool(HOSTILE.encode(), pol, size=2, host=host, name="two")
threads = [threading.Thread(target=p.invoke, args=("go", 1)) for p in (one, two)]
for t in threads:
    t.start()
assert inside.wait(30)
pid = os.fork()
if pid == 0:
    code = 1
    try:
        try:
            one.invoke("bump")
            code = 2
        except plugsafe.PluginCallError as exc:
            code = 0 if "did not survive a fork" in str(exc) else 3
        if code == 0 and two.invoke("bump") != 1:
            code = 4
    finally:
        os._exit(code)
end = time.monotonic() + 60
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    if time.monotonic() > end:
        os.kill(pid, 9)
        raise SystemExit("the child hung waiting for a pool instance lost at the fork")
    time.sleep(0.01)
release.set()
for t in threads:
    t.join()
print("child", os.waitstatus_to_exitcode(status))
"""
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "child 0", res.stdout + res.stderr


def test_a_component_closed_from_its_own_host_function_does_not_hang() -> None:
    # Found in this pass: ComponentPlugin.close() took the lock its own running call held.
    from component_wat import HOST_CALLS

    host = plugsafe.Host()
    box: list[Any] = []

    @host.component_function("test:host/logging#host-log")
    def host_log(msg: str) -> None:
        box[0].close()

    @host.component_function("test:host/clock#now")
    def now() -> int:
        return 42

    policy = plugsafe.Policy(allow={"test:host/logging", "test:host/clock#now"})
    component = host.load(HOST_CALLS.encode(), policy=policy)
    box.append(component)
    r = Rig()
    r.start("call", component.invoke, "run", "x", 1)
    r.join()
    assert r.results["call"] == 42  # the running call finished on its instance
    assert component.closed
    with pytest.raises(plugsafe.PluginClosedError):
        component.invoke("run", "x", 1)
    host.close()
    r.host.close()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_chains_with_a_close_from_inside_never_hang(rig: Rig, seed: int) -> None:
    # As test_sec_pool_waits' random chains, and one host function along the way closes a
    # pool, a plugin or the whole Host: every chain still ends, typed, with nothing waiting.
    import random

    targets: list[Any] = [rig.pool("P1", 2), rig.pool("P2", 1), rig.plugin("X"), rig.plugin("Y")]
    local = threading.local()
    pick = random.Random(seed)
    close_at, victim = pick.randrange(1, 40), pick.choice([*targets, rig.host])
    steps = [0]

    def step() -> object:
        steps[0] += 1
        if steps[0] == close_at:
            victim.close()
        plan: list[int] = local.plan
        i: int = local.i
        if i >= len(plan):
            time.sleep(0.001)
            return 1
        local.i = i + 1
        try:
            return targets[plan[i]].invoke("go", 1)
        finally:
            local.i = i

    rig.actions[1] = step

    def worker(k: int) -> int:
        rnd = random.Random(seed * 100 + k)
        for _ in range(15):
            plan = [rnd.randrange(len(targets)) for _ in range(rnd.randint(1, 4))]
            local.plan, local.i = plan, 1
            with contextlib.suppress(plugsafe.PlugsafeError):  # typed: fine; else it fails
                targets[plan[0]].invoke("go", 1)
        return 15

    for k in range(4):
        rig.start(f"w{k}", worker, k)
    rig.join()
    assert all(v == 15 for v in rig.results.values()), rig.results
    assert victim.closed
    assert waiting() == 0
