"""Attack pass 3: plugsafe's memory creator for components (``_runtime/_hostmem.py``) holds.

A guest tries to read or write outside its memory at the 4 GiB edge, to overflow the size
arithmetic with huge growths, to get a 64-bit memory, to leak address space over many
load/close cycles, and to beat the cap from two threads at once. Fixtures are component text.
"""

from __future__ import annotations

import gc
import threading
from pathlib import Path
from typing import Any

import pytest

import plugsafe
from plugsafe import Host, Policy
from plugsafe._runtime import _hostmem

pytestmark = pytest.mark.skipif(
    not _hostmem.AVAILABLE, reason="plugsafe's memory creator needs a 64-bit POSIX host"
)

PAGE = 65536
GiB = 1 << 30


def _component(index: str = "") -> bytes:
    t = "i64" if index else "i32"
    u = "u64" if index else "u32"
    s = "s64" if index else "s32"
    funcs = ["grow", "peek", "poke"]
    return f"""(component
  (core module $m
    (memory (export "memory") {index} 1)
    (func (export "grow") (param {t}) (result {t}) (memory.grow (local.get 0)))
    (func (export "peek") (param {t}) (result {t}) ({t}.load (local.get 0)))
    (func (export "poke") (param {t}) (result {t}) ({t}.store (local.get 0) ({t}.const 7))
      ({t}.const 0)))
  (core instance $i (instantiate $m))
  {
        " ".join(
            f'(func ${f} (param "p" {u}) (result {s}) (canon lift (core func $i "{f}")))'
            f' (export "{f}" (func ${f}))'
            for f in funcs
        )
    }
)""".encode()


MEM32 = _component()


@pytest.fixture(scope="module")
def host() -> Any:
    with Host() as h:
        yield h


def test_the_4_gib_edge_is_exact_and_huge_growths_are_refused(host: Host) -> None:
    with host.load_component(MEM32, policy=Policy(memory=4 * GiB)) as plugin:
        assert plugin.invoke("grow", 65535) == 1  # to exactly 4 GiB (address space only)
        assert plugin.last_call is not None and plugin.last_call.memory_bytes == 4 * GiB
        assert plugin.invoke("grow", 1) == -1  # past 4 GiB: refused
        # The last 4 bytes are the guest's; one byte further is a trap, never the host's.
        assert plugin.invoke("poke", 4 * GiB - 4) == 0
        assert plugin.invoke("peek", 4 * GiB - 4) == 7
        with pytest.raises(plugsafe.PluginTrap):
            plugin.invoke("peek", 4 * GiB - 3)
        # A fresh instance after the trap: one page again.
        for delta in (2**32 - 1, 2**31, 65536):
            assert plugin.invoke("grow", delta) == -1
        assert plugin.last_call is not None and plugin.last_call.memory_bytes == PAGE
        assert plugin.invoke("grow", 0) == 1


def test_a_64_bit_memory_is_refused_at_load(host: Host) -> None:
    with pytest.raises(plugsafe.InvalidModuleError, match="memory64"):
        host.load_component(_component("i64"), policy=Policy(memory=4 * GiB))


def _mapped_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmSize:")[1].split()[0])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_load_close_cycles_give_the_address_space_back(host: Host) -> None:
    # Each memory reserves 4 GiB + its guard: a leak would show at once in VmSize.
    for _ in range(3):  # warm up wasmtime's own caches
        with host.load_component(MEM32, policy=Policy(memory=2 * PAGE)) as p:
            p.invoke("grow", 1)
    gc.collect()  # what earlier tests left to the collector
    before_live = _hostmem.live_memories()
    before = _mapped_kib()
    for _ in range(100):
        with host.load_component(MEM32, policy=Policy(memory=2 * PAGE)) as p:
            assert p.invoke("grow", 1) == 1
    assert _hostmem.live_memories() == before_live
    assert _mapped_kib() - before < 1024 * 1024  # well under one reservation (4 GiB)


def test_two_threads_growing_two_instances_each_hold_their_own_cap(host: Host) -> None:
    cap = 16 * PAGE
    plugins = [host.load_component(MEM32, policy=Policy(memory=cap)) for _ in range(2)]
    pages: list[int] = [0, 0]
    barrier = threading.Barrier(2)

    def grow(i: int) -> None:
        barrier.wait()
        while plugins[i].invoke("grow", 1) != -1:
            pass
        pages[i] = plugins[i].invoke("grow", 0)

    threads = [threading.Thread(target=grow, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert pages == [16, 16]
    for p in plugins:
        assert p.invoke("grow", 0) == 16  # (last_call is per thread: asked from this one)
        assert p.last_call is not None and p.last_call.memory_bytes == cap
        p.close()


_STARTS_WITH_A_HOST_CALL = r"""
(component
  (import "test:host/clock" (instance $clock (export "now" (func (result u64)))))
  (core func $now (canon lower (func $clock "now")))
  (core module $m
    (import "host" "now" (func $now (result i64)))
    (memory (export "memory") 1)
    (func $start (drop (call $now)))
    (start $start)
    (func (export "one") (result i32) i32.const 1)
    (func (export "boom") (result i32) unreachable))
  (core instance $i (instantiate $m (with "host" (instance (export "now" (func $now))))))
  (func (export "one") (result u32) (canon lift (core func $i "one")))
  (func (export "boom") (result u32) (canon lift (core func $i "boom")))
)"""


def test_a_close_from_a_start_functions_host_call_does_not_keep_the_new_instance() -> None:
    # After a trap the next call instantiates afresh, and the start function calls a host
    # function that closes the plugin. That call still runs (as any call closed from inside),
    # but the closed plugin kept the new instance and its memory while the app held it.
    with Host() as host:
        closing: list[Any] = []

        @host.component_function("test:host/clock#now")
        def now() -> int:
            for plugin in closing:
                plugin.close()
            return 42

        plugin = host.load(
            _STARTS_WITH_A_HOST_CALL.encode(),
            policy=Policy(allow={"test:host/clock#now"}, memory=2 * PAGE),
        )
        with pytest.raises(plugsafe.PluginTrap):
            plugin.invoke("boom")
        gc.collect()
        before = _hostmem.live_memories()  # the trapped instance is gone, none made yet
        closing.append(plugin)
        assert plugin.invoke("one") == 1  # ran on the instance made for it
        assert plugin.closed
        with pytest.raises(plugsafe.PluginClosedError):
            plugin.invoke("one")
        gc.collect()
        # The instance made for that call went when the call ended (the app holds the plugin).
        assert _hostmem.live_memories() == before
