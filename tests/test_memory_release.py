"""Guest memory goes back inside ``Plugin.close()``, not whenever the garbage collector runs."""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import plugsafe

from wat import ECHO

MiB = 1024 * 1024


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


@pytest.fixture
def no_gc() -> Iterator[None]:
    """The cyclic garbage collector off: only what close() frees is freed."""
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_150_load_echo_close_cycles_keep_rss_bounded_without_the_gc(
    host: plugsafe.Host, no_gc: None
) -> None:
    data = b"x" * (8 * MiB)
    # No timeout: the ctypes fallback copies 8 MiB slowly on a busy machine; memory is the point.
    policy = plugsafe.Policy(memory=64 * MiB, max_input=16 * MiB, max_output=16 * MiB, timeout=None)
    wasm = ECHO.encode()
    # Warm up (the module compiled, the allocator's arenas grown) before the baseline.
    for _ in range(3):
        p = host.load(wasm, policy=policy)
        assert p.call("echo", data) == data
        p.close()
    del p
    base = _rss()
    # One cycle holds ~8 MiB of input, 8 of output and ~16 of guest memory. Before close()
    # freed the store, 150 cycles with the GC off kept every store: gigabytes. Generous: the
    # machine is shared, and the allocator keeps what it likes.
    bound = base + 160 * MiB
    peak = base
    for i in range(150):
        plugin = host.load(wasm, policy=policy)
        out = plugin.call("echo", data)
        assert len(out) == len(data)
        del out
        plugin.close()
        del plugin
        peak = max(peak, _rss())
        assert peak < bound, f"cycle {i}: RSS {peak / MiB:.0f} MiB, started at {base / MiB:.0f}"


def test_close_frees_the_store_and_keeps_the_last_calls_memory(host: plugsafe.Host) -> None:
    plugin = host.load(ECHO.encode())
    assert plugin.call("echo", b"x" * 70_000) == b"x" * 70_000  # grows memory to 2 pages
    inst = plugin._instance
    assert inst is not None
    before = plugin.last_call
    assert before is not None and before.memory_bytes == 2 * 65536
    plugin.close()
    assert inst._final == 2 * 65536 and inst.memory is None and not inst.funcs
    after = plugin.last_call
    assert after is not None and after.memory_bytes == before.memory_bytes
    inst.release()  # idempotent
    with pytest.raises(plugsafe.PluginClosedError):
        plugin.call("echo", b"x")


def test_close_from_a_host_function_frees_the_store_when_the_call_ends(
    host: plugsafe.Host,
) -> None:
    plugins: list[plugsafe.Plugin] = []
    seen: list[object] = []

    @host.function
    def shut() -> None:
        plugins[0].close()
        seen.append(plugins[0]._instance)  # still there: its call is running

    wat = """(module (import "plugsafe" "shut" (func $shut))
      (memory (export "memory") 1)
      (func (export "run") (result i32) (call $shut) (i32.const 7)))"""
    plugin = host.load(wat.encode(), policy=plugsafe.Policy(allow={"shut"}))
    plugins.append(plugin)
    inst = plugin._instance
    assert plugin.invoke("run") == 7
    assert seen == [inst] and plugin._instance is None
    assert inst is not None and inst._final == 65536 and not inst.funcs
    last = plugin.last_call
    assert last is not None and last.memory_bytes == 65536


def test_last_call_read_while_another_thread_closes(host: plugsafe.Host) -> None:
    # Plugin.last_call reads memory lazily and without the call lock: a close() racing it must
    # give either the live size or the size at release, never touch a freed store. last_call is
    # per thread (issue 13), so the reader makes the call whose stats it reads.
    errors: list[BaseException] = []
    for _ in range(30):
        plugin = host.load(ECHO.encode())
        stop = threading.Event()
        ready = threading.Event()

        def read(
            p: plugsafe.Plugin = plugin,
            stop: threading.Event = stop,
            ready: threading.Event = ready,
        ) -> None:
            try:
                p.call("echo", b"hi")
                ready.set()
                while not stop.is_set():
                    last = p.last_call
                    assert last is not None and last.memory_bytes == 65536
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                ready.set()

        reader = threading.Thread(target=read)
        reader.start()
        ready.wait()
        plugin.close()
        stop.set()
        reader.join()
    assert errors == []
