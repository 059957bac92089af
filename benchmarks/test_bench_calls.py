"""Per-call cost: invoke("add"), the 11-byte and 1 MiB echo, and a guest→host call."""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Iterator
from typing import Any

import pytest

import plugsafe

from conftest import BIG, SMALL, ByHand, tag
from guests import HOST_CALLS_PER_RUN, PLUGSAFE_PURE_GUEST

# -- invoke("add") -------------------------------------------------------------------------------


def test_invoke_add_plugsafe(benchmark: Any, ps_plugin: plugsafe.Plugin) -> None:
    tag(benchmark, "invoke add", "plugsafe")
    assert benchmark(ps_plugin.invoke, "add", 1, 2) == 3


def test_invoke_add_wasmtime(benchmark: Any, wt: ByHand) -> None:
    tag(benchmark, "invoke add", "wasmtime-py")
    assert benchmark(wt.add, wt.store, 1, 2) == 3


def test_invoke_add_c_floor(benchmark: Any) -> None:
    """The floor: one trivial C call from Python through ctypes."""
    tag(benchmark, "invoke add", "C call (ctypes)")
    labs = ctypes.CDLL(None).labs
    labs.argtypes = [ctypes.c_long]
    labs.restype = ctypes.c_long
    assert benchmark(labs, -3) == 3


# -- echo through the ABI ------------------------------------------------------------------------

ECHOES = pytest.mark.parametrize(
    ("item", "data"),
    [pytest.param("echo 11 B", SMALL, id="11B"), pytest.param("echo 1 MiB", BIG, id="1MiB")],
)


@ECHOES
def test_echo_plugsafe(benchmark: Any, ps_plugin: plugsafe.Plugin, item: str, data: bytes) -> None:
    tag(benchmark, item, "plugsafe")
    assert benchmark(ps_plugin.call, "echo", data) == data


@ECHOES
def test_echo_wasmtime(benchmark: Any, wt: ByHand, item: str, data: bytes) -> None:
    tag(benchmark, item, "wasmtime-py")
    assert benchmark(wt.call_echo, data) == data


@ECHOES
def test_echo_extism(benchmark: Any, ex_plugin: Any, item: str, data: bytes) -> None:
    tag(benchmark, item, "extism")
    assert benchmark(ex_plugin.call, "echo", data) == data


def test_two_memmoves_1mib(benchmark: Any) -> None:
    """The 1 MiB goal's yardstick: two ``ctypes.memmove`` of 1 MiB into ready buffers."""
    tag(benchmark, "echo 1 MiB", "2x memmove")
    n = len(BIG)
    a = ctypes.create_string_buffer(n)
    b = ctypes.create_string_buffer(n)

    def two_copies() -> None:
        ctypes.memmove(a, BIG, n)
        ctypes.memmove(b, a, n)

    benchmark(two_copies)
    assert b.raw == BIG


# -- guest→host calls: one run makes HOST_CALLS_PER_RUN calls of bump(i64) -> i64 ------------------


def test_host_call_plugsafe(benchmark: Any, ps_plugin: plugsafe.Plugin) -> None:
    tag(benchmark, "guest→host call", "plugsafe", per=HOST_CALLS_PER_RUN)
    assert benchmark(ps_plugin.invoke, "hostloop") == HOST_CALLS_PER_RUN


def test_host_call_wasmtime(benchmark: Any, wt: ByHand) -> None:
    tag(benchmark, "guest→host call", "wasmtime-py", per=HOST_CALLS_PER_RUN)
    assert benchmark(wt.hostloop, wt.store) == HOST_CALLS_PER_RUN


def test_host_call_extism(benchmark: Any, ex_plugin: Any) -> None:
    tag(benchmark, "guest→host call", "extism", per=HOST_CALLS_PER_RUN)
    assert benchmark(ex_plugin.call, "hostloop", b"") == b""


# -- awaited from asyncio: the same 11-byte echo through call_async ------------------------------


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    ev = asyncio.new_event_loop()
    yield ev
    ev.close()


def test_echo_async_plugsafe(
    benchmark: Any, ps_plugin: plugsafe.Plugin, loop: asyncio.AbstractEventLoop
) -> None:
    tag(benchmark, "echo 11 B, awaited", "plugsafe")
    if not hasattr(ps_plugin, "call_async"):
        pytest.skip("this plugsafe has no call_async yet")
    run = loop.run_until_complete
    assert benchmark(lambda: run(ps_plugin.call_async("echo", SMALL))) == SMALL


def test_echo_async_pool(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    tag(benchmark, "echo 11 B, awaited", "PluginPool(size=2)")
    pool_cls = getattr(plugsafe, "PluginPool", None)
    if pool_cls is None:
        pytest.skip("this plugsafe has no PluginPool yet")
    run = loop.run_until_complete
    with pool_cls(PLUGSAFE_PURE_GUEST.encode(), plugsafe.Policy(), size=2) as pool:
        assert benchmark(lambda: run(pool.call_async("echo", SMALL))) == SMALL


def test_echo_async_floor(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    """The floor for any awaitable that runs a blocking call: a no-op through run_in_executor."""
    tag(benchmark, "echo 11 B, awaited", "run_in_executor(no-op)")
    run = loop.run_until_complete

    def noop() -> bytes:
        return SMALL

    assert benchmark(lambda: run(loop.run_in_executor(None, noop))) == SMALL
