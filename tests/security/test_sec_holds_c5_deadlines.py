"""Issue 12, class 5: a deadline is a wall-clock promise. A call with ``timeout=T`` ends by
``T`` plus a few milliseconds and one GIL switch interval, never before ``T``, however busy the
host's other Python threads are; and idle Hosts cost no CPU (one ticker per process, asleep while
no timed call runs).

The bounds here are generous (the machine is shared, 2 cores); the precise figures are in
benchmarks/test_bench_deadlines.py.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import plugsafe

from wat import ECHO, abi_module

C5 = "issue 12 class 5: "

# Lateness allowed by these tests: far above "a few ms + one switch interval" on purpose.
SLACK = 0.1
BUSY_SLACK = 0.4


def _best_of(tries: int, bound: float, attempt: Callable[[], float]) -> list[float]:
    """Run ``attempt`` (one whole scenario, its behaviour asserted inside; it returns the
    seconds it measured) until one is under ``bound``, at most ``tries`` times.

    How late a deadline fires on a loaded CI machine is timing: a few percent of single tries
    there ended past SLACK (one at 0.15 s). A deadline counted wrong (a wait or an
    instantiation left out) is late by far more on every try, and still fails."""
    times: list[float] = []
    while len(times) < tries and (not times or times[-1] >= bound):
        times.append(attempt())
    assert min(times) < bound, times
    return times


@pytest.fixture
def busy() -> Iterator[object]:
    """Start ``n`` pure-Python busy threads with ``busy(n)``; they stop after the test."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def spin() -> None:
        x = 0
        while not stop.is_set():
            x += 1

    def start(n: int) -> None:
        for _ in range(n):
            t = threading.Thread(target=spin, daemon=True)
            t.start()
            threads.append(t)

    yield start
    stop.set()
    for t in threads:
        t.join()


def _load(host: plugsafe.Host, timeout: float) -> plugsafe.Plugin:
    """ECHO under ``timeout``. Its load's ABI check runs under that timeout too: with 20 ms a
    loaded machine stopped 1 load in 2000 (DeadlineExceeded in plugsafe_abi_version, on time
    as a deadline, but not what these tests measure), so a load stopped so is tried again."""
    policy = plugsafe.Policy(timeout=timeout)
    for _ in range(2):
        try:
            return host.load(ECHO.encode(), policy=policy)
        except plugsafe.DeadlineExceeded as exc:
            assert exc.phase == "load", exc
    return host.load(ECHO.encode(), policy=policy)


def _lateness(
    host: plugsafe.Host, timeout: float, tries: int = 3, plugin: plugsafe.Plugin | None = None
) -> list[float]:
    if plugin is None:
        plugin = _load(host, timeout)
    late = []
    for _ in range(tries):
        t0 = time.perf_counter()
        with pytest.raises(plugsafe.DeadlineExceeded):
            plugin.invoke("spin")
        late.append(time.perf_counter() - t0 - timeout)
    return late


@pytest.mark.parametrize("timeout", [0.02, 0.05, 0.2])
def test_c5_deadline_is_never_early(host: plugsafe.Host, timeout: float) -> None:
    assert min(_lateness(host, timeout)) >= 0


def test_c5_deadline_is_on_time_with_no_busy_threads(host: plugsafe.Host) -> None:
    # Measured today: 0.2 s fires 0.15-0.22 s late with nothing else running (ticks of ~9 ms).
    # SLACK, not less: at load 5 on this shared 2-core machine the median was 60 ms late (the
    # stopped call waits for a core); the regression this catches fired 150-220 ms late, on
    # every try. Heavier load made a median of three 0.16 s once (the late-ticker test below):
    # up to three rounds, each never early, the best median under SLACK.
    plugin = _load(host, 0.2)
    medians: list[float] = []
    while len(medians) < 3 and (not medians or medians[-1] >= SLACK):
        late = _lateness(host, 0.2, plugin=plugin)
        assert min(late) >= 0, late
        medians.append(sorted(late)[1])
    assert min(medians) < SLACK, medians


@pytest.mark.parametrize(("threads", "timeout"), [(2, 0.2), (4, 0.05)])
def test_c5_deadline_is_on_time_with_busy_python_threads(
    host: plugsafe.Host, busy: object, threads: int, timeout: float
) -> None:
    # Measured today: 0.2 s with 2 threads fires 1.4-1.8 s late; 0.05 s with 4 fires 0.6-1.3 s.
    # Loaded before the threads start: the load's own instantiation and ABI check run under
    # the same timeout, and with 4 busy threads two waits for the GIL between arming and the
    # wasm call (each 20-50 ms here) can use up 50 ms of it, so the load itself was stopped
    # (DeadlineExceeded in plugsafe_abi_version: on time, as a wall-clock deadline, but not
    # what this test measures; see docs/policy.md on timeouts and busy threads).
    plugin = _load(host, timeout)
    busy(threads)  # type: ignore[operator]
    # A bound for the regression (seconds late), not the goal: with busy threads a test run on a
    # shared 2-core machine sees 30-250 ms; benchmarks/test_bench_deadlines.py has the figures.
    # With other processes busy too, a median of five was measured at 0.40 s once (see
    # tests/test_deadlines.py::test_late_by_little): up to three rounds, each never early, the
    # best median under the bound. The regression (1.4-1.8 s late) is late on every round.
    medians: list[float] = []
    while len(medians) < 3 and (not medians or medians[-1] >= BUSY_SLACK):
        late = _lateness(host, timeout, plugin=plugin)
        assert min(late) >= 0, late
        medians.append(sorted(late)[1])
    assert min(medians) < BUSY_SLACK, medians


NAP = '(import "plugsafe" "nap" (func $nap))'


def _napper(host: plugsafe.Host) -> None:
    @host.function
    def nap() -> None:
        time.sleep(0.25)


# The start function naps 0.25 s, then the function spins: a call promised 0.4 s ends at about
# 0.4 s when the instantiation is counted in its timeout, at 0.25 + 0.4 = 0.65 s at the earliest
# when it is not (the nap never sleeps less), so the bound 0.4 + SLACK tells them apart on every
# try. (The function once napped 0.25 s too and returned, and the test asserted DeadlineExceeded:
# on a loaded machine the epoch tick was sometimes late past the nap's return, the call returned
# its result at 0.5 s and failed the test; 2 in 20 runs alone with two CPU burners, py3.13.)
SPIN_GO = """
  (func $s call $nap) (start $s)
  (func (export "go") (param i32 i32) (result i64) (loop $l (br $l)) (i64.const 0))"""


def test_c5_deadline_covers_the_instantiation_a_fresh_instance_call_makes(
    host: plugsafe.Host,
) -> None:
    _napper(host)
    wat = abi_module(SPIN_GO, imports=NAP)
    policy = plugsafe.Policy(allow={"nap"}, timeout=0.4, fresh_instance=True)

    def attempt() -> float:
        # A plugin per try: a call stopped right after its instantiation (the nap overslept
        # past 0.4 s on a loaded machine: DeadlineExceeded "waiting for the plugin and
        # instantiating it") leaves that unused instance to the plugin's next call, which then
        # makes none and returns in time. Each try's call must make its own.
        plugin = host.load(wat.encode(), policy=policy)
        t0 = time.perf_counter()
        with pytest.raises(plugsafe.DeadlineExceeded):
            plugin.call("go")
        return time.perf_counter() - t0

    _best_of(3, 0.4 + SLACK, attempt)


def test_c5_deadline_covers_the_instantiation_after_a_trap(host: plugsafe.Host) -> None:
    # As above (SPIN_GO): 0.25 s re-instantiating after the trap, then the call spins; about
    # 0.4 s when the re-instantiation is counted, 0.65 s at the earliest when it is not.
    _napper(host)
    wat = abi_module(
        SPIN_GO
        + """
  (func (export "trap") (param i32 i32) (result i64) unreachable)""",
        imports=NAP,
    )

    def attempt() -> float:
        # A plugin per try, so the trap is taken on the load's instance (a call after the
        # DeadlineExceeded of a try before would have to make one, and nap, itself).
        plugin = host.load(wat.encode(), policy=plugsafe.Policy(allow={"nap"}, timeout=0.4))
        with pytest.raises(plugsafe.PluginTrap):
            plugin.call("trap")
        t0 = time.perf_counter()
        with pytest.raises(plugsafe.DeadlineExceeded):
            plugin.call("go")
        return time.perf_counter() - t0

    _best_of(3, 0.4 + SLACK, attempt)


def test_c5_deadline_covers_waiting_for_a_plugin_another_thread_is_using(
    host: plugsafe.Host,
) -> None:
    plugin = host.load(ECHO.encode(), policy=plugsafe.Policy(timeout=0.5))

    def hold() -> None:
        with pytest.raises(plugsafe.DeadlineExceeded):
            plugin.invoke("spin")

    # Uncounted, the wait would make the call end at about 0.95 s (0.45 s waiting, then its
    # own 0.5 s), every time; on a loaded CI machine a counted one ended 0.15 s late once.
    def attempt() -> float:
        other = threading.Thread(target=hold)
        other.start()
        # The other thread holds the plugin now, for 0.5 s: waited for, not slept for (a fixed
        # 50 ms is a guess a loaded machine can beat, and then this call took the plugin first).
        give_up = time.perf_counter() + 30
        while not plugin._calls.lock.locked():
            assert time.perf_counter() < give_up, "the other thread never took the plugin"
            time.sleep(0.001)
        t0 = time.perf_counter()
        with pytest.raises(plugsafe.DeadlineExceeded):
            plugin.invoke("spin")
        waited = time.perf_counter() - t0
        other.join()
        return waited

    _best_of(3, 0.5 + SLACK, attempt)


def _idle_hosts(n: int) -> list[plugsafe.Host]:
    hosts = []
    for _ in range(n):
        h = plugsafe.Host()
        p = h.load(ECHO.encode(), policy=plugsafe.Policy(timeout=1.0))
        assert p.call("echo", b"x") == b"x"  # one timed call: each host's ticker has started
        hosts.append(h)
    return hosts


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc")
def test_c5_one_ticker_thread_per_process() -> None:
    before = _threads()
    hosts = _idle_hosts(20)
    try:
        # Idle: once the last call's timer expiries are over (glibc runs each on a short-lived
        # thread of its own while a ticker ticks), at most one thread more than before.
        settle = time.perf_counter() + 3.0
        while _threads() - before > 1 and time.perf_counter() < settle:
            time.sleep(0.05)
        assert _threads() - before <= 1
    finally:
        for h in hosts:
            h.close()


def test_c5_idle_hosts_cost_no_cpu() -> None:
    hosts = _idle_hosts(20)
    try:
        time.sleep(0.2)  # let the last call's deadline pass

        # Best of three 1 s windows: the process's counts include every thread an earlier
        # test left behind (in a whole loaded py3.13 run one window counted 93 wake-ups, where
        # the test alone, loaded, never failed in 20 runs). Ticking idle hosts cost ~0.2 s of
        # CPU and ~4000 wake-ups in *every* window (20 tickers x 200/s), and still fail.
        windows: list[tuple[float, float, int]] = []
        while len(windows) < 3 and (
            not windows or windows[-1][0] >= 0.02 * windows[-1][1] or windows[-1][2] >= 50
        ):
            cpu0, wall0 = time.process_time(), time.perf_counter()
            switches0 = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
            time.sleep(1.0)
            cpu = time.process_time() - cpu0
            switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - switches0
            windows.append((cpu, time.perf_counter() - wall0, switches))
        cpu, wall, switches = windows[-1]
        assert cpu < 0.02 * wall, windows
        assert switches < 50, windows
    finally:
        for h in hosts:
            h.close()


def test_c5_the_ticker_sleeps_while_no_timed_call_runs(host: plugsafe.Host) -> None:
    plugin = host.load(ECHO.encode(), policy=plugsafe.Policy(timeout=0.5))
    assert plugin.call("echo", b"x") == b"x"
    time.sleep(0.6)
    # Best of three 0.5 s windows, as test_c5_idle_hosts_cost_no_cpu (flake13): the count is
    # the whole process's, threads earlier tests left included; a ticker thread still ticking
    # (PLUGSAFE_TICKER=python, while a timed call runs) wakes ~95 times in every window.
    windows: list[int] = []
    while len(windows) < 3 and (not windows or windows[-1] >= 20):
        switches0 = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        time.sleep(0.5)
        windows.append(resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - switches0)
    assert windows[-1] < 20, windows


# A start function (or a reactor's _initialize) that spins only when the app says so: the load
# goes through, and every later instantiation spins.
SPIN_ON = '(import "plugsafe" "spin_now" (func $spin_now (result i64)))'
SPIN_IF = "(if (i64.ne (call $spin_now) (i64.const 0)) (then (loop $l (br $l))))"


def _spinner(
    host: plugsafe.Host, where: str, **policy: object
) -> tuple[plugsafe.Plugin, list[int]]:
    spin = [0]

    @host.function
    def spin_now() -> int:
        return spin[0]

    if where == "start":
        body = f"(func $s {SPIN_IF}) (start $s)"
    else:
        body = f'(func (export "_initialize") {SPIN_IF})'
    wat = abi_module(
        body
        + """
  (func (export "go") (param i32 i32) (result i64) (call $ok (i32.const 0) (i32.const 0)))
  (func (export "five") (result i32) i32.const 5)
  (func (export "trap") unreachable)""",
        imports=SPIN_ON,
    )
    pol = plugsafe.Policy(allow={"spin_now"}, **policy)  # type: ignore[arg-type]
    return host.load(wat.encode(), policy=pol), spin


@pytest.mark.parametrize("where", ["start", "_initialize"])
@pytest.mark.parametrize("how", ["fresh_instance", "after_a_trap"])
def test_c5_a_spinning_instantiation_is_stopped_by_the_calls_deadline(
    host: plugsafe.Host, where: str, how: str
) -> None:
    timeout = 0.3
    plugin, spin = _spinner(host, where, timeout=timeout, fresh_instance=how == "fresh_instance")

    def attempt() -> float:
        if how == "after_a_trap":
            with pytest.raises(plugsafe.PluginTrap):
                plugin.invoke("trap")
        spin[0] = 1
        t0 = time.perf_counter()
        with pytest.raises(plugsafe.DeadlineExceeded) as info:
            plugin.call("go")
        took = time.perf_counter() - t0
        # The call's deadline, with the call's phase: instantiating was part of the call.
        assert info.value.phase == "call"
        assert info.value.limit == "timeout"
        assert timeout <= took, took
        spin[0] = 0
        assert plugin.invoke("five") == 5  # and the next call instantiates and runs
        return took

    # Best of three: one try ended at 0.91 s (py3.13, two CPU burners, 1 in 6 runs of this
    # file). A spinning instantiation the deadline did not cover would never end at all.
    _best_of(3, timeout + BUSY_SLACK, attempt)


def test_c5_a_call_after_a_slow_instantiation_gets_only_what_is_left(host: plugsafe.Host) -> None:
    # The start function naps (in a host function) 0.25 s of a 0.3 s call; then the function
    # spins: it is stopped 0.3 s after the call's start, not 0.3 s after the instantiation.
    nap = [0.0]

    @host.function
    def napper() -> None:
        time.sleep(nap[0])

    wat = (
        '(module (import "plugsafe" "napper" (func $n)) (func $s call $n) (start $s)'
        ' (func (export "spin") (loop $l (br $l))) (func (export "trap") unreachable))'
    )
    plugin = host.load(wat.encode(), policy=plugsafe.Policy(allow={"napper"}, timeout=0.3))

    def attempt() -> float:
        nap[0] = 0.0
        with pytest.raises(plugsafe.PluginTrap):
            plugin.invoke("trap")  # the next call instantiates anew
        nap[0] = 0.25
        t0 = time.perf_counter()
        with pytest.raises(plugsafe.DeadlineExceeded):
            plugin.invoke("spin")
        took = time.perf_counter() - t0
        assert took >= 0.3, took
        return took

    _best_of(3, 0.3 + SLACK, attempt)  # was 0.25 + 0.3


def test_c5_a_spinning_instantiation_after_a_lock_wait_ends_at_the_calls_deadline(
    host: plugsafe.Host,
) -> None:
    # Every call instantiates (fresh_instance). The call waits 0.25 s for the plugin, busy in
    # another thread, then its new instance's start function spins: it is stopped 0.3 s after
    # the call's start (waiting included), not 0.3 s after it got the plugin.
    spin = [0]
    entered, release = threading.Event(), threading.Event()

    @host.function
    def spin_now() -> int:
        return spin[0]

    @host.function
    def hold() -> None:
        entered.set()
        release.wait(10)

    wat = abi_module(
        f"""(func $s {SPIN_IF}) (start $s)
  (func (export "hold") call $hold)
  (func (export "five") (result i32) i32.const 5)""",
        imports=SPIN_ON + '(import "plugsafe" "hold" (func $hold))',
    )
    pol = plugsafe.Policy(allow={"spin_now", "hold"}, timeout=0.3, fresh_instance=True)
    plugin = host.load(wat.encode(), policy=pol)

    def holder() -> None:
        with contextlib.suppress(plugsafe.DeadlineExceeded):  # its own timeout may pass
            plugin.invoke("hold")

    def attempt() -> float:
        spin[0] = 0  # the holder's instance starts without spinning
        entered.clear()
        release.clear()
        other = threading.Thread(target=holder)
        other.start()
        try:
            assert entered.wait(10)
            spin[0] = 1  # the next instance's start function spins
            threading.Timer(0.25, release.set).start()
            t0 = time.perf_counter()
            with pytest.raises(plugsafe.DeadlineExceeded) as info:
                plugin.invoke("five")
            took = time.perf_counter() - t0
        finally:
            release.set()
            other.join()
        assert info.value.phase == "call"
        assert took >= 0.3, took
        return took

    _best_of(3, 0.3 + SLACK, attempt)  # was 0.25 + 0.3


def test_c5_waiting_for_a_busy_plugin_ends_typed_saying_so(host: plugsafe.Host) -> None:
    entered, release = threading.Event(), threading.Event()

    @host.function
    def hold() -> None:  # keeps the plugin busy in the other thread until released
        entered.set()
        release.wait(10)

    wat = (
        '(module (import "plugsafe" "hold" (func $h)) (func (export "hold") call $h)'
        ' (func (export "five") (result i32) i32.const 5))'
    )
    plugin = host.load(wat.encode(), policy=plugsafe.Policy(allow={"hold"}, timeout=0.3))

    def holder() -> None:
        with contextlib.suppress(plugsafe.DeadlineExceeded):  # its own timeout passed meanwhile
            plugin.invoke("hold")

    def attempt() -> float:
        entered.clear()
        release.clear()
        other = threading.Thread(target=holder)
        other.start()
        try:
            assert entered.wait(10)
            t0 = time.perf_counter()
            with pytest.raises(plugsafe.DeadlineExceeded) as info:
                plugin.invoke("five")  # returns at once if it gets the plugin
            waited = time.perf_counter() - t0
        finally:
            release.set()
            other.join()
        assert waited >= 0.3, waited
        assert info.value.phase == "call"
        assert "waiting for the plugin, busy in another thread" in str(info.value), info.value
        return waited

    _best_of(3, 0.3 + SLACK, attempt)
    assert plugin.invoke("five") == 5


@pytest.mark.parametrize("timeout", [0.1, 0.3])
def test_c5_a_ticker_that_starts_late_still_stops_calls_on_time(timeout: float) -> None:
    # On an engine of its own (its max_stack), the plugin's timeout is the only one: the ticker
    # starts ticking just before it could end (a call shorter than that never ticks), and the
    # deadlines armed before the first tick count from it.
    # How late is timing: with two busy processes beside the test the median of three tries
    # was measured at 0.16 s once. Up to three rounds, each never early, the best median under
    # SLACK; a ticker that starts too late (or a deadline counted from the wrong tick) is late
    # on every round. Between rounds the ticker has time to disarm (MARGIN after the last
    # deadline), so each round starts it late again.
    medians: list[float] = []
    while len(medians) < 3 and (not medians or medians[-1] >= SLACK):
        if medians:
            time.sleep(1.0)
        with plugsafe.Host(max_stack=(600 if timeout < 0.2 else 620) * 1024) as host:
            late = _lateness(host, timeout)
        assert min(late) >= 0, late
        medians.append(sorted(late)[1])
    assert min(medians) < SLACK, medians
