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


@pytest.mark.parametrize("how", ["wait_for", "cancel"])
def test_an_abandoned_call_is_interrupted_not_run_to_its_timeout(
    host: plugsafe.Host, how: str
) -> None:
    # A 30 s timeout: a call that ran on to it would hold the plugin that long.
    p = host.load(ECHO.encode(), policy=Policy(timeout=30.0), name="spinner")

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
    assert time.monotonic() - start < 10  # generous on a shared machine; 30 s if not stopped


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
