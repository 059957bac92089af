"""Deadlines (issue 12, class 5): how late a spinning plugin's timeout fires, and what idle Hosts
cost.

- ``deadline lateness``: a plugin spinning in ``loop br 0`` under ``timeout=TIMEOUT``, with 0, 2
  and 4 pure-Python busy threads in the process. Each round is one call; the round's time is
  ``TIMEOUT + lateness``, and ``extra_info`` keeps the lateness of every round (``lateness_ms``)
  and their median. The promise: never early, late by at most a few milliseconds plus one GIL
  switch interval (``sys.getswitchinterval()``, 5 ms by default), whatever the threads do.
  ``sleep_lateness_ms`` is the floor for comparison: how late ``time.sleep(TIMEOUT)`` returns
  under the same threads (any Python call that blocks must take the GIL back to return).
- ``idle hosts``: N Hosts that each made one timed call, then sit idle for IDLE_SECONDS; the
  process CPU time (``time.process_time()``) and voluntary context switches over that second are
  in ``extra_info``. The promise: an idle host costs nothing (one ticker per process, asleep).
- ``ticker while armed``: the ticker's own CPU while a timed call runs: the call waits
  ARMED_SECONDS in a host function (sleeping), so the process CPU over that time is the ticker's
  (its timer expiries and the reaper's looks). With only the call's own 30 s timeout on its
  engine the ticker does not tick at all (no deadline can come for 30 s); with a 0.05 s timeout
  also in use there, it ticks all along.

Both also run (once, untimed) under ``--benchmark-disable``.
"""

from __future__ import annotations

import resource
import statistics
import sys
import threading
import time
from typing import Any

import pytest

import plugsafe

from conftest import tag

SPIN = b'(module (func (export "spin") (loop $l (br $l))))'
ECHO = b"""(module (memory (export "memory") 1)
  (func (export "plugsafe_abi_version") (result i32) i32.const 1)
  (func (export "plugsafe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "echo") (param i32 i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get 0)) (i64.const 32))
            (i64.extend_i32_u (local.get 1)))))"""
TIMEOUT = 0.05
ROUNDS = 5
IDLE_SECONDS = 1.0
ARMED_SECONDS = 3.0


def _start_busy(n: int, stop: threading.Event) -> list[threading.Thread]:
    def spin() -> None:
        x = 0
        while not stop.is_set():
            x += 1

    threads = [threading.Thread(target=spin, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


@pytest.mark.parametrize("threads", [0, 2, 4], ids=["0busy", "2busy", "4busy"])
def test_deadline_lateness(benchmark: Any, threads: int) -> None:
    stop = threading.Event()
    busy = _start_busy(threads, stop)
    host = plugsafe.Host()
    try:
        plugin = host.load(SPIN, policy=plugsafe.Policy(timeout=TIMEOUT), name="spin")
        late: list[float] = []
        slept: list[float] = []

        def one_call() -> None:
            t0 = time.perf_counter()
            try:
                plugin.invoke("spin")
            except plugsafe.DeadlineExceeded:
                late.append(time.perf_counter() - t0 - TIMEOUT)
            else:  # pragma: no cover - a spin never returns
                raise AssertionError("the spin returned")
            t0 = time.perf_counter()
            time.sleep(TIMEOUT)
            slept.append(time.perf_counter() - t0 - TIMEOUT)

        benchmark.pedantic(one_call, rounds=ROUNDS, iterations=1)
    finally:
        stop.set()
        for t in busy:
            t.join()
        host.close()
    assert late and min(late) >= 0, f"a deadline fired early: {late}"
    tag(
        benchmark,
        f"deadline lateness, {threads} busy threads",
        "plugsafe",
        timeout_s=TIMEOUT,
        busy_threads=threads,
        switch_interval_ms=sys.getswitchinterval() * 1000,
        lateness_ms=[round(x * 1000, 2) for x in late],
        median_lateness_ms=round(statistics.median(late) * 1000, 2),
        sleep_lateness_ms=[round(x * 1000, 2) for x in slept],
        median_sleep_lateness_ms=round(statistics.median(slept) * 1000, 2),
    )


@pytest.mark.parametrize("n", [1, 20], ids=["1host", "20hosts"])
def test_idle_hosts_cpu(benchmark: Any, n: int) -> None:
    hosts = [plugsafe.Host() for _ in range(n)]
    try:
        for h in hosts:
            p = h.load(ECHO, policy=plugsafe.Policy(timeout=1.0), name="echo")
            assert p.call("echo", b"x") == b"x"  # a timed call: the host's ticker has started
        time.sleep(0.1)
        figures: dict[str, float] = {}

        def idle() -> None:
            cpu0 = time.process_time()
            sw0 = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
            t0 = time.perf_counter()
            time.sleep(IDLE_SECONDS)
            figures["wall_s"] = time.perf_counter() - t0
            figures["cpu_s"] = time.process_time() - cpu0
            figures["wakeups"] = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - sw0

        benchmark.pedantic(idle, rounds=1, iterations=1)
    finally:
        for h in hosts:
            h.close()
    tag(
        benchmark,
        f"{n} idle hosts, {IDLE_SECONDS:g} s",
        "plugsafe",
        hosts=n,
        cpu_s=round(figures["cpu_s"], 4),
        cpu_percent_of_a_core=round(100 * figures["cpu_s"] / figures["wall_s"], 2),
        wakeups=figures["wakeups"],
    )


WAITER = b"""(module (import "plugsafe" "wait" (func $w)) (func (export "go") call $w))"""


@pytest.mark.parametrize("shortest", ["only_long", "short_too"])
def test_ticker_cpu_while_armed(benchmark: Any, shortest: str) -> None:
    # Engines are per configuration and process-wide: a max_stack of its own gives each case an
    # engine (and so a ticker) that no other benchmark used. "only_long": the call's timeout
    # (30 s) is the only one on the engine, and the call ends long before it could come;
    # "short_too": a plugin with a 0.05 s timeout is loaded on the same engine, so the ticker
    # must tick from about 0.04 s after it is armed.
    host = plugsafe.Host(max_stack=(640 if shortest == "only_long" else 704) * 1024)
    figures: dict[str, float] = {}

    @host.function
    def wait() -> None:  # a timed call is running (the ticker is armed) while this sleeps
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        time.sleep(ARMED_SECONDS)
        figures["wall_s"] = time.perf_counter() - t0
        figures["cpu_s"] = time.process_time() - cpu0

    try:
        if shortest == "short_too":
            host.load(SPIN, policy=plugsafe.Policy(timeout=TIMEOUT), name="short")
        policy = plugsafe.Policy(allow={"wait"}, timeout=ARMED_SECONDS * 10)
        plugin = host.load(WAITER, policy=policy, name="waiter")
        benchmark.pedantic(lambda: plugin.invoke("go"), rounds=1, iterations=1)
    finally:
        host.close()
    tag(
        benchmark,
        f"ticker CPU while a timed call runs, {ARMED_SECONDS:g} s, {shortest}",
        "plugsafe",
        cpu_s=round(figures["cpu_s"], 4),
        cpu_percent_of_a_core=round(100 * figures["cpu_s"] / figures["wall_s"], 2),
    )
