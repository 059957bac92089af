"""attack12: cancelled calls end promptly wherever the cancel lands, and never stop a call early.

A call instantiates its plugin first when it has no instance (``fresh_instance``, or after a
trap dropped it): the start function and a reactor's ``_initialize`` run inside the call, on
its timeout. A cancel that came then only marked the call cancelled (the call marked itself
running, interruptible, only once its instance was made): the start function ran to the
call's whole timeout (5 s here) before the cancel was seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest
from cancelling import cancel_invoke, free_after

import plugsafe
from plugsafe import Policy

# The start function (or ``_initialize``) spins while the host says so: loading runs it once
# with the flag down.
START_SPIN = b"""(module
 (import "plugsafe" "spin_flag" (func $f (result i32)))
 (func $s (if (call $f) (then (loop $l (br $l)))))
 (start $s)
 (func (export "one") (result i32) (i32.const 1)))"""
INIT_SPIN = b"""(module
 (import "plugsafe" "spin_flag" (func $f (result i32)))
 (memory (export "memory") 1)
 (func (export "_initialize") (if (call $f) (then (loop $l (br $l)))))
 (func (export "one") (result i32) (i32.const 1)))"""


@pytest.mark.parametrize("wat", [START_SPIN, INIT_SPIN], ids=["start", "initialize"])
@pytest.mark.parametrize("fresh", [True, False], ids=["fresh_instance", "re-instantiated"])
def test_a_call_cancelled_while_its_instance_is_made_ends_promptly(wat: bytes, fresh: bool) -> None:
    flag = [0]
    with plugsafe.Host() as host:

        @host.function
        def spin_flag() -> int:
            return flag[0]

        plugin = host.load(
            wat, policy=Policy(timeout=5.0, allow={"spin_flag"}, fresh_instance=fresh)
        )
        if not fresh:
            # As after a trap: the next call makes the instance again.
            plugin._calls.instance = None
        flag[0] = 1
        cancelled = cancel_invoke(plugin, "one", after=0.3)
        took = free_after(plugin, cancelled)
        # Was: the call's whole 5 s timeout (4.7 s after the cancel).
        assert took < 1.0, took
        flag[0] = 0
        assert plugin.invoke("one") == 1


SPIN = b'(module (func (export "spin") (result i32) (loop $l (br $l)) (i32.const 0)))'
NESTS = b"""(module (import "plugsafe" "nested" (func $n (result i32)))
 (func (export "one") (result i32) (call $n)))"""


@pytest.mark.parametrize("engine", ["same", "another"])
def test_a_cancelled_call_stops_the_plugin_call_its_host_function_makes(engine: str) -> None:
    # The host function of the cancelled call calls another plugin (on the call's thread):
    # that nested call ran to its own timeout (5 s) before the cancelled call could see its
    # interrupt. It is stopped too; a call of the same plugin on another thread is not.
    with plugsafe.Host() as host, plugsafe.Host() as other:
        # (Another engine: a metered one.)
        inner_host = host if engine == "same" else other
        inner_policy = Policy(timeout=5.0, fuel=None if engine == "same" else 10**15)
        inner = inner_host.load(SPIN, policy=inner_policy)
        bystander = inner_host.load(SPIN, policy=Policy(timeout=1.5))
        seen: list[BaseException] = []

        @host.function
        def nested() -> int:
            try:
                return int(inner.invoke("spin"))
            except plugsafe.PlugsafeError as exc:
                seen.append(exc)
                raise

        outer = host.load(NESTS, policy=Policy(timeout=5.0, allow={"nested"}))
        stood: list[float] = []

        def bystand() -> None:
            began = time.perf_counter()
            with pytest.raises(plugsafe.DeadlineExceeded):
                bystander.invoke("spin")
            stood.append(time.perf_counter() - began)

        by = threading.Thread(target=bystand)
        by.start()
        cancelled = cancel_invoke(outer, "one", after=0.3)
        took = free_after(outer, cancelled)
        by.join(10)
        # Was: the nested call's whole 5 s timeout.
        assert took < 1.0, took
        assert seen and isinstance(seen[0], plugsafe.DeadlineExceeded), seen
        # The plugin called on another thread ran to its own timeout: never stopped early.
        assert stood and stood[0] >= 1.5, stood


def test_a_call_cancelled_while_it_waits_for_the_plugin_frees_its_worker_promptly() -> None:
    # Another thread's call holds the plugin (for 3 s): the cancelled call kept the plugin's
    # one worker thread waiting for it (2.6 s after the cancel) before it found the cancel.
    with plugsafe.Host() as host:
        plugin = host.load(SPIN, policy=Policy(timeout=3.0))
        holder = threading.Thread(target=_spin_quietly, args=(plugin,))
        holder.start()
        try:
            lock = plugin._calls.lock
            deadline = time.perf_counter() + 10
            while not lock.locked() and time.perf_counter() < deadline:
                time.sleep(0.01)

            async def main() -> tuple[float, float]:
                task = asyncio.create_task(plugin.invoke_async("spin"))
                await asyncio.sleep(0.2)
                cancelled = time.perf_counter()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                # The worker is free once the cancelled call gave up its wait.
                executor = plugin._worker._executor
                assert executor is not None
                free = await asyncio.wrap_future(executor.submit(time.perf_counter))
                return cancelled, free

            cancelled, free = asyncio.run(main())
            assert free - cancelled < 1.0, free - cancelled
            assert lock.locked(), "the holder's call ended first (test premise)"
        finally:
            holder.join(10)


def _spin_quietly(plugin: plugsafe.Plugin) -> None:
    with contextlib.suppress(plugsafe.DeadlineExceeded):
        plugin.invoke("spin")
