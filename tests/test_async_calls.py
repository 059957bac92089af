"""Issue 13 §3: async host functions are refused with a way out; call_async runs on plugsafe's own
threads, and a call abandoned by cancellation stops promptly."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import plugsafe
from plugsafe import Policy

from wat import ECHO


def test_async_host_functions_are_refused_with_what_to_do(host: plugsafe.Host) -> None:
    async def fetch(key: str) -> bytes:
        return b""

    class Fetcher:
        async def __call__(self, key: str) -> bytes:
            return b""

    for fn in (fetch, functools.partial(fetch), Fetcher()):
        with pytest.raises(TypeError, match="async") as info:
            host.function(fn, name="fetch")
        assert "run_coroutine_threadsafe" in str(info.value)
    assert "fetch" not in host.functions


def test_a_sync_function_returning_a_coroutine_is_an_error_not_dropped(
    host: plugsafe.Host,
) -> None:
    ran: list[str] = []

    async def work() -> None:
        ran.append("work")

    @host.function
    def notify() -> None:
        return work()  # type: ignore[func-returns-value]  # the bug this test is about

    p = host.load(
        b'(module (import "plugsafe" "notify" (func $n)) (func (export "go") (call $n)))',
        policy=Policy(allow={"notify"}),
    )
    with pytest.raises(plugsafe.HostFunctionError) as info:
        p.invoke("go")
    assert "awaitable" in str(info.value.__cause__)
    assert ran == []


def test_call_async_does_not_use_the_loops_default_executor(host: plugsafe.Host) -> None:
    p = host.load(ECHO.encode())
    block = threading.Event()

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        # The default executor's only thread is busy: anything queued on it would wait.
        loop.set_default_executor(ThreadPoolExecutor(1))
        busy = loop.run_in_executor(None, block.wait, 30)
        try:
            return list(await asyncio.gather(*(p.call_async("echo", f"{i}") for i in range(20))))
        finally:
            block.set()
            await busy

    assert asyncio.run(main()) == [f"{i}".encode() for i in range(20)]


@pytest.mark.parametrize(
    ("how", "timeout"), [("wait_for", 30.0), ("cancel", 30.0), ("cancel", 2.0)]
)
def test_an_abandoned_call_is_interrupted_not_run_to_its_timeout(
    host: plugsafe.Host, how: str, timeout: float
) -> None:
    # A call that ran on to its timeout would hold the plugin that long. (A short timeout's
    # epoch ticks are advanced on the cancelling thread, a long one's on a helper thread.)
    p = host.load(ECHO.encode(), policy=Policy(timeout=timeout), name="spinner")

    async def main() -> None:
        if how == "wait_for":
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(p.invoke_async("spin"), 0.2)
        else:
            task = asyncio.ensure_future(p.invoke_async("spin"))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    start = time.monotonic()
    asyncio.run(main())
    assert p.invoke("add", 1, 2) == 3  # waits for the abandoned call's end: it must come soon
    # Generous on a shared machine: the whole timeout if not stopped.
    assert time.monotonic() - start < min(10.0, 0.75 * timeout)


def test_a_cancelled_queued_call_never_runs(host: plugsafe.Host) -> None:
    ran: list[str] = []

    @host.function
    def mark() -> None:
        ran.append("ran")

    wat = ECHO.replace("(module", '(module (import "plugsafe" "mark" (func $mark))', 1).replace(
        '(func (export "trap") unreachable)',
        '(func (export "trap") unreachable) (func (export "marked") (call $mark))',
    )
    p = host.load(wat.encode(), policy=Policy(allow={"mark"}, timeout=30.0))

    async def main() -> None:
        spinning = asyncio.ensure_future(p.invoke_async("spin"))
        await asyncio.sleep(0.2)
        queued = asyncio.ensure_future(p.invoke_async("marked"))
        await asyncio.sleep(0.05)
        queued.cancel()
        spinning.cancel()
        for task in (queued, spinning):
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    p.invoke("marked")  # the plugin works afterwards
    assert ran == ["ran"]  # only this one: the cancelled call never started


def test_a_cancelled_call_inside_host_functions_stops_at_its_next_host_call(
    host: plugsafe.Host,
) -> None:
    ticks: list[float] = []

    @host.function
    def tick() -> None:
        ticks.append(time.monotonic())
        time.sleep(0.02)

    # 5000 host calls of 20 ms: 100 s if nothing stopped it (timeout 60 s).
    wat = """(module (import "plugsafe" "tick" (func $t))
      (func (export "many") (param $n i32)
        (loop $l (call $t) (local.set $n (i32.sub (local.get $n) (i32.const 1)))
          (br_if $l (local.get $n)))))"""
    p = host.load(wat.encode(), policy=Policy(allow={"tick"}, timeout=60.0, max_host_calls=None))

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(p.invoke_async("many", 5000), 0.3)

    asyncio.run(main())
    cancelled = time.monotonic()
    p.invoke("many", 1)  # waits until the abandoned call has stopped
    assert time.monotonic() - cancelled < 10  # generous; the whole call would take 100 s
    assert len(ticks) < 1000


def test_an_async_host_function_pattern_waits_on_the_callers_loop(host: plugsafe.Host) -> None:
    # The documented way to use async work from a host function under call_async: the call
    # runs on the plugin's worker thread, so the loop is free to run the coroutine.
    loops: list[asyncio.AbstractEventLoop] = []

    async def fetch(key: str) -> bytes:
        await asyncio.sleep(0.01)
        return key.upper().encode()

    @host.function
    def lookup(key: str) -> bytes | None:
        return asyncio.run_coroutine_threadsafe(fetch(key), loops[0]).result(timeout=10)

    from test_host_context import LOOKUP_WAT

    p = host.load(LOOKUP_WAT.encode(), policy=Policy(allow={"lookup"}))

    async def main() -> list[bytes]:
        loops.append(asyncio.get_running_loop())
        return list(await asyncio.gather(p.call_async("get", "ab"), p.call_async("get", "cd")))

    assert asyncio.run(main()) == [b"AB", b"CD"]


def test_async_calls_queued_when_the_plugin_closes_raise_plugin_closed_error(
    host: plugsafe.Host,
) -> None:
    queued = threading.Event()
    holder: list[plugsafe.Plugin] = []

    @host.function
    def hold() -> None:
        queued.wait(10)  # until the second call waits behind this one
        holder[0].close()  # from its own host function: done when this call ends

    wat = ECHO.replace("(module", '(module (import "plugsafe" "hold" (func $hold))', 1).replace(
        '(func (export "trap") unreachable)',
        '(func (export "trap") unreachable) (func (export "go") (call $hold))',
    )
    p = host.load(wat.encode(), policy=Policy(allow={"hold"}))
    holder.append(p)

    async def main() -> None:
        first = asyncio.ensure_future(p.invoke_async("go"))
        await asyncio.sleep(0.1)
        second = asyncio.ensure_future(p.call_async("echo", b"x"))
        await asyncio.sleep(0.05)
        queued.set()
        await first
        with pytest.raises(plugsafe.PluginClosedError):
            await second
        with pytest.raises(plugsafe.PluginClosedError):
            await p.call_async("echo", b"y")

    asyncio.run(main())
