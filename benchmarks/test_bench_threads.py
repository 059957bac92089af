"""Scaling over threads: the compute loop on 2 plugins from 2 threads vs 1 plugin from 1 thread.

Each round starts the threads, each thread makes CALLS_PER_THREAD calls, and the round ends when
all are done. With the GIL released while wasm runs, 2 threads do twice the work in about the
time 1 thread takes: the report shows ``2 x t(1 thread) / t(2 threads)``.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any

import pytest

import plugsafe

from conftest import by_hand, tag

ITEM = "2 threads vs 1"
CALLS_PER_THREAD = 8


def run_threads(work: list[Callable[[], Any]]) -> None:
    """Run each callable CALLS_PER_THREAD times, one thread each, and wait for all."""

    def loop(fn: Callable[[], Any]) -> None:
        for _ in range(CALLS_PER_THREAD):
            fn()

    threads = [threading.Thread(target=loop, args=(fn,)) for fn in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.mark.parametrize("n", [1, 2], ids=["1thread", "2threads"])
def test_threads_plugsafe(benchmark: Any, ps_host: plugsafe.Host, pure_wasm: bytes, n: int) -> None:
    tag(benchmark, ITEM, f"plugsafe {n}T", threads=n)
    plugins = [ps_host.load(pure_wasm, policy=plugsafe.Policy(timeout=10.0)) for _ in range(n)]
    benchmark(run_threads, [lambda p=p: p.invoke("compute") for p in plugins])
    for p in plugins:
        p.close()


@pytest.mark.parametrize("n", [1, 2], ids=["1thread", "2threads"])
def test_threads_wasmtime(benchmark: Any, n: int) -> None:
    tag(benchmark, ITEM, f"wasmtime-py {n}T", threads=n)
    instances = [by_hand() for _ in range(n)]
    benchmark(run_threads, [lambda w=w: w.compute(w.store) for w in instances])


@pytest.mark.parametrize("n", [1, 2], ids=["1thread", "2threads"])
def test_threads_ceiling(benchmark: Any, n: int) -> None:
    """The machine's own ceiling: hashlib.sha256 of 4 MiB, which also runs without the GIL."""
    tag(benchmark, ITEM, f"sha256 (ceiling) {n}T", threads=n)
    data = bytes(4 * 1024 * 1024)
    benchmark(run_threads, [lambda: hashlib.sha256(data).digest()] * n)


def test_threads_pool(benchmark: Any, pure_wasm: bytes) -> None:
    """``PluginPool(size=2)`` shared by 2 threads (once plugsafe has a PluginPool)."""
    tag(benchmark, ITEM, "PluginPool 2T", threads=2)
    pool_cls = getattr(plugsafe, "PluginPool", None)
    if pool_cls is None:
        pytest.skip("this plugsafe has no PluginPool yet")
    pool = pool_cls(pure_wasm, plugsafe.Policy(timeout=10.0), size=2)
    try:
        benchmark(run_threads, [lambda: pool.invoke("compute")] * 2)
    finally:
        close = getattr(pool, "close", None)
        if close is not None:
            close()
