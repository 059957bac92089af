"""Deadlines are wall-clock promises (issue 12, classes 4 and 5).

Never early, late by a few milliseconds even while Python threads hold the GIL, no cost while
idle, and nothing that hangs across fork() or at exit. The tickers are driven here with plain
wasmtime-py engines and stores, following the call path's protocol (see plugsafe._ticker),
on both the native POSIX-timer ticker and the Python fallback.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import gc
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import wasmtime

from plugsafe._runtime import _ticker

from helpers import run_ok

SPIN = '(module (func (export "spin") (loop br 0)))'
LINUX_GLIBC = sys.platform.startswith("linux") and os.uname().machine in ("x86_64", "aarch64")

MODES = [
    pytest.param(
        True,
        id="native",
        marks=pytest.mark.skipif(not _ticker.native_available(), reason="no native ticker here"),
    ),
    pytest.param(False, id="python"),
]


class Rig:
    """One engine with its ticker and a store running ``spin`` (an endless loop)."""

    def __init__(self, native: bool) -> None:
        cfg = wasmtime.Config()
        cfg.epoch_interruption = True
        self.engine = wasmtime.Engine(cfg)
        self.ticker = _ticker.Ticker(self.engine, native=native)
        self.module = wasmtime.Module(self.engine, SPIN)
        self.new_store()

    def new_store(self) -> None:
        self.store = wasmtime.Store(self.engine)
        self.spin = wasmtime.Instance(self.store, self.module, []).exports(self.store)["spin"]
        self.arming = [-1e9]
        self.guarded: float | None = None

    def arm(self, timeout: float, start: float) -> None:
        """The call path's arming: the store's deadline, if the last arming is over a period
        old (and its wall-clock guard, once per store and timeout)."""
        tk = self.ticker
        if self.guarded != timeout:
            store_ptr = ctypes.cast(self.store.ptr(), ctypes.c_void_p).value or 0
            _ticker.guard(self.store, store_ptr, self.arming, timeout, tk)
            self.guarded = timeout
        if start - self.arming[0] > tk.period:
            self.arming[0] = start
            self.store.set_epoch_deadline(tk.ticks(timeout))

    def run(self, timeout: float) -> float:
        """One timed call of ``spin`` as the call path makes it; seconds until it stopped."""
        tk = self.ticker
        tk.use_timeout(timeout)
        start = time.perf_counter()
        tk.last = start
        if not tk.armed:
            tk.arm()
        self.arm(timeout, start)
        try:
            self.spin(self.store)
        except wasmtime.Trap as trap:
            assert trap.trap_code == wasmtime.TrapCode.INTERRUPT
        else:
            raise AssertionError("spin returned")
        return time.perf_counter() - start


# Process-wide tickers are never freed: one rig per mode for the whole module.
_RIGS: dict[bool, Rig] = {}


@pytest.fixture(params=MODES)
def rig(request: pytest.FixtureRequest) -> Rig:
    native: bool = request.param
    if native not in _RIGS:
        _RIGS[native] = Rig(native)
    return _RIGS[native]


@pytest.fixture
def busy(request: pytest.FixtureRequest) -> Iterator[None]:
    """``request.param`` plain Python threads spinning (each wants the GIL all the time)."""
    stop = threading.Event()

    def burn() -> None:
        while not stop.is_set():
            pass

    threads = [threading.Thread(target=burn, daemon=True) for _ in range(request.param)]
    for t in threads:
        t.start()
    yield
    stop.set()
    for t in threads:
        t.join()


def test_native_ticker_on_linux() -> None:
    if not (LINUX_GLIBC and platform.libc_ver()[0] == "glibc"):
        pytest.skip("the native ticker is for Linux/glibc on x86_64 and aarch64")
    if os.environ.get("PLUGSAFE_TICKER", "").lower() == "python":
        assert not _ticker.native_available()
    else:
        assert _ticker.native_available(), _ticker._NATIVE.why_not


@pytest.mark.parametrize("timeout", [0.001, 0.004, 0.011, 0.03])
def test_never_early(rig: Rig, timeout: float) -> None:
    for _ in range(10):
        assert rig.run(timeout) >= timeout


def test_never_early_on_a_reused_deadline(rig: Rig) -> None:
    # The call path re-arms a store's deadline only when the last arming is over a period old:
    # a call starting just under a period after the arming still gets its full timeout.
    timeout = 0.01
    tk = rig.ticker
    for _ in range(10):
        tk.last = armed_at = time.perf_counter()
        if not tk.armed:
            tk.arm()
        rig.arming[0] = -1e9
        rig.arm(timeout, armed_at)
        while time.perf_counter() - armed_at < tk.period * 0.95:
            pass
        assert rig.run(timeout) >= timeout


def test_a_burst_of_ticks_does_not_fire_early(rig: Rig) -> None:
    # A starved ticking thread delivers its backlog at once: the epoch deadline comes long
    # before the wall-clock one, and the guard must let the call run on.
    timeout = 0.05
    engine = rig.engine

    def burst() -> None:
        time.sleep(0.005)
        for _ in range(10_000):
            engine.increment_epoch()

    t = threading.Thread(target=burst)
    t.start()
    try:
        took = rig.run(timeout)
    finally:
        t.join()
    assert timeout <= took < timeout + 0.5


def test_a_store_without_guard_state_is_interrupted(rig: Rig) -> None:
    # The guard's callback never lets an exception into wasmtime: with its bookkeeping gone
    # (say, torn down at exit) it interrupts the call rather than letting it run forever.
    rig.new_store()
    rig.run(0.01)
    for key, entry in list(_ticker._GUARDS.items()):
        if entry[0] is rig.arming:
            del _ticker._GUARDS[key]
    rig.arming[0] = time.perf_counter()
    rig.store.set_epoch_deadline(1)
    t0 = time.perf_counter()
    with pytest.raises(wasmtime.Trap) as trap:
        rig.spin(rig.store)
    assert trap.value.trap_code == wasmtime.TrapCode.INTERRUPT
    assert time.perf_counter() - t0 < 0.5
    rig.new_store()


def _limited(rig: Rig, timeout: float, begun: float) -> float:
    """Arm the rig's store as the call path does for a call that began at ``begun`` (before
    it got its plugin): limited to that call's end. The arming time."""
    tk = rig.ticker
    if len(rig.arming) < 3:
        rig.arming += [-math.inf, math.inf]
    rig.arm(timeout, time.perf_counter())  # the store's guard
    now = time.perf_counter()
    tk.last = now
    if not tk.armed:
        tk.arm()
    _ticker.limit(rig.arming, now, begun + timeout)
    rig.store.set_epoch_deadline(tk.ticks(max(begun + timeout - now, 0.0)))
    return now


def test_a_limited_deadline_ends_the_call_at_its_own_end_never_before(rig: Rig) -> None:
    # A call that waited 20 ms for its plugin gets what is left of its timeout, not a whole
    # one from when it got the plugin, and is still never stopped before its own end.
    timeout = 0.03
    late = []
    for _ in range(5):
        rig.new_store()
        begun = time.perf_counter() - 0.02
        _limited(rig, timeout, begun)
        with pytest.raises(wasmtime.Trap):
            rig.spin(rig.store)
        stopped = time.perf_counter()
        _ticker.unlimit(rig.arming)
        assert stopped >= begun + timeout  # never early, on every try
        late.append(stopped - begun - timeout)
    # Generous: the figures are in the benchmark. How late is timing: on a loaded machine the
    # ticking thread was measured 0.57 s late now and then (see the test after next), so the
    # median of the five tries, not each one, is held to the bound.
    assert sorted(late)[2] < 0.4, late


def test_a_lifted_limit_never_shortens_the_next_call(rig: Rig) -> None:
    # The limit ends with its call: a call right after it, reusing the store's arming (within
    # a period), gets its full timeout although the epoch deadline was set for the limit.
    timeout = 0.02
    for _ in range(10):
        rig.new_store()
        armed = _limited(rig, timeout, time.perf_counter() - timeout + 0.001)
        _ticker.unlimit(rig.arming)
        assert rig.arming[0] == armed  # lifted: armed then, for the limit's few ticks
        # Started within a period of that arming (unless this thread was descheduled), the
        # call reuses it: the guard sees its early epoch deadline and lets it run on.
        assert rig.run(timeout) >= timeout


# Rigs whose tickers watch a lock and know only long timeouts: they start ticking late.
_DELAYED: dict[bool, tuple[Rig, threading.Lock]] = {}
SHORTEST = 0.15


@pytest.fixture(params=MODES)
def delayed(request: pytest.FixtureRequest) -> tuple[Rig, threading.Lock]:
    native: bool = request.param
    if native not in _DELAYED:
        r = Rig(native)
        lock = threading.Lock()
        r.ticker.watch(lock)
        r.ticker.use_timeout(SHORTEST)
        _DELAYED[native] = (r, lock)
    return _DELAYED[native]


def _run_delayed(rig: Rig, timeout: float) -> tuple[float, float]:
    """One timed call as the call path makes it (deadline() counts from the first tick); the
    seconds it took, and how far off the first tick was when it armed."""
    tk = rig.ticker
    rig.new_store()
    rig.arm(timeout, time.perf_counter())  # the store's guard
    start = time.perf_counter()
    tk.last = start
    if not tk.armed:
        tk.arm()
    rig.arming[0] = start
    rig.store.set_epoch_deadline(tk.deadline(start, tk.ticks(timeout)))
    ahead = tk.start - start
    with pytest.raises(wasmtime.Trap):
        rig.spin(rig.store)
    return time.perf_counter() - start, ahead


def test_a_ticker_starts_ticking_only_before_the_shortest_timeout_could_end(
    delayed: tuple[Rig, threading.Lock],
) -> None:
    # A burst of timed calls shorter than their timeouts never needs a tick: the ticker starts
    # LEAD before the shortest timeout in use could end. Deadlines armed before the first tick
    # count their ticks from it: still never early, and late by no more than before.
    rig, lock = delayed
    tk = rig.ticker
    for timeout in (SHORTEST, 0.25):
        # How late the trap comes is timing: on a loaded machine (two busy processes beside
        # this one) the ticking thread was measured 0.57 s late now and then. A deadline that
        # is late every time (counted wrong, or left to the guard's margin) still fails: the
        # best of a few tries must be in time, and every try is checked for the rest.
        late: list[float] = []
        while len(late) < 5 and (not late or late[-1] >= 0.4):
            _wait_disarmed(tk, 5.0)
            with lock:  # "a timed call is running": the call path's protocol
                took, ahead = _run_delayed(rig, timeout)
            assert ahead >= SHORTEST - _ticker.LEAD, ahead  # armed by this call, ticks far off
            assert took >= timeout, (timeout, took)  # never early, on any try
            late.append(took - timeout)
        assert min(late) < 0.4, (timeout, late)


def test_a_deadline_shorter_than_the_ticker_knew_starts_the_ticks_at_once(
    delayed: tuple[Rig, threading.Lock],
) -> None:
    # A timeout shorter than any noted when the ticker was armed: its deadline would come
    # before the first tick, so deadline() starts the ticking at once (else it would fire
    # only after the first tick, at about SHORTEST).
    rig, lock = delayed
    # deadline() started the ticks at once (no first tick still to come) on every try; how
    # soon the trap then comes is timing, late by 0.17 s now and then on a loaded machine: the
    # best of a few tries must come before SHORTEST.
    took_all: list[float] = []
    while len(took_all) < 5 and (not took_all or took_all[-1] >= SHORTEST):
        _wait_disarmed(rig.ticker, 5.0)
        with lock:
            took, ahead = _run_delayed(rig, 0.02)
        assert ahead == -math.inf, ahead
        assert took >= 0.02, took
        took_all.append(took)
    assert min(took_all) < SHORTEST, took_all


@pytest.mark.parametrize("busy", [0, 2, 4], indirect=True, ids=["idle", "2busy", "4busy"])
@pytest.mark.usefixtures("busy")
def test_late_by_little(rig: Rig) -> None:
    # Before: a 0.2 s timeout fired at 0.5-1.5 s with two busy threads. The bound is loose for
    # noisy CI machines (the measured figures are in benchmarks/test_bench_deadlines.py); it
    # includes getting the GIL back after the trap.
    timeout = 0.2
    # Both tickers: the interrupted call needs the GIL back to return, a few switch intervals
    # with busy threads on a shared 2-core machine (the fallback also needs it to tick). With
    # other processes busy too the median of five was measured at 0.40 s once: up to three
    # rounds, each never early, the best median under the bound.
    medians: list[float] = []
    while len(medians) < 3 and (not medians or medians[-1] >= 0.4):
        late = sorted(rig.run(timeout) - timeout for _ in range(5))
        assert late[0] >= 0
        medians.append(late[2])
    assert min(medians) < 0.4, medians


def _wait_disarmed(tk: _ticker.Ticker, limit: float) -> float:
    t0 = time.perf_counter()
    while tk.armed:
        assert time.perf_counter() - t0 < limit, "the reaper never disarmed the ticker"
        time.sleep(0.01)
    return time.perf_counter() - t0


def test_reaper_disarms_then_rearms(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ticker, "MARGIN", 0.05)
    rig.run(0.02)
    assert rig.ticker.armed
    assert _ticker.reaper_pending()
    # It stays armed while a call could still run: longest timeout in use + margin.
    _wait_disarmed(rig.ticker, 5.0 + rig.ticker._longest)
    # Disarmed: the epoch stands still, and the next timed call arms it again.
    assert rig.run(0.02) >= 0.02
    assert rig.ticker.armed


def test_a_watching_ticker_stops_once_no_call_holds_its_locks(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_ticker, "MARGIN", 30.0)  # so only the locks can explain a stop
    tk = rig.ticker
    lock = threading.Lock()
    tk.watch(lock)
    try:
        # The reaper looks every QUICK: stopped within a few looks of the lock's release. When
        # is timing (a loaded machine delays the reaper's thread now and then), so the best of
        # three tries must be under the bound; each try is checked in full otherwise.
        tooks: list[float] = []
        while len(tooks) < 3 and (not tooks or tooks[-1] >= _ticker.QUICK * 4):
            with lock:  # "a timed call is running"
                rig.run(0.01)
                time.sleep(_ticker.QUICK * 3)
                assert tk.armed
            tooks.append(_wait_disarmed(tk, 2.0))
        assert min(tooks) < _ticker.QUICK * 4, tooks
        with lock:  # every timed call on a watching ticker holds a watched lock
            assert rig.run(0.01) >= 0.01  # and it re-arms
    finally:
        del lock
        gc.collect()
        assert not tk._watched


def test_a_call_outliving_its_deadline_in_the_host_still_stops(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A call that spends longer than its timeout outside wasm (a slow host function) must
    # find its deadline passed when it gets back, even if the reaper disarmed meanwhile.
    monkeypatch.setattr(_ticker, "MARGIN", 0.05)
    tk = rig.ticker
    timeout = 0.02
    tk.use_timeout(timeout)
    start = time.perf_counter()
    tk.last = start
    if not tk.armed:
        tk.arm()
    rig.arming[0] = -1e9
    rig.arm(timeout, start)
    _wait_disarmed(tk, 5.0 + tk._longest)  # "in the host function"
    t0 = time.perf_counter()
    with pytest.raises(wasmtime.Trap):
        rig.spin(rig.store)
    assert time.perf_counter() - t0 < 0.5


def test_engine_kept_alive(rig: Rig) -> None:
    assert any(e is rig.engine for e in _ticker._KEEP)
    assert _ticker.ticker_for(rig.engine) is _ticker.ticker_for(rig.engine)


def _script(body: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    prelude = (
        "import time, gc, wasmtime\n"
        "from plugsafe._runtime import _ticker\n"
        "def engine():\n"
        "    cfg = wasmtime.Config(); cfg.epoch_interruption = True\n"
        "    return wasmtime.Engine(cfg)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + body],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("native", MODES)
def test_exit_while_ticking_is_clean(native: bool) -> None:
    # The first native experiment segfaulted at exit: a tick on an engine already freed.
    body = (
        f"for _ in range(4):\n"
        f"    e = engine(); tk = _ticker.Ticker(e, native={native}); tk.use_timeout(9)\n"
        f"    tk.last = time.perf_counter(); tk.arm()\n"
        f"    del e, tk; gc.collect()\n"
        f"time.sleep(0.05)\n"
        f"print('ok')\n"
    )
    for _ in range(3):
        done = _script(body)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "ok"


def test_idle_hosts_cost_nothing() -> None:
    # 20 engines with timed calls behind them: once the reaper has disarmed, no thread wakes.
    body = (
        "_ticker.MARGIN = 0.05\n"
        "tks = [_ticker.Ticker(engine()) for _ in range(20)]\n"
        "for tk in tks:\n"
        "    tk.use_timeout(0.05); tk.last = time.perf_counter(); tk.arm()\n"
        # Disarmed within about 0.15 s (timeout + MARGIN + a look); waited for, with a bound
        # for a hang, as a loaded machine can delay the reaper's thread past a fixed sleep.
        "end = time.monotonic() + 10\n"
        "while any(tk.armed for tk in tks) and time.monotonic() < end:\n"
        "    time.sleep(0.01)\n"
        "assert not any(tk.armed for tk in tks)\n"
        "t0 = time.process_time(); time.sleep(1.0)\n"
        "print(time.process_time() - t0)\n"
    )
    done = _script(body)
    assert done.returncode == 0, done.stderr
    # Was ~0.2 s of CPU per second (20 Python tickers at 5 ms); now ~0.
    assert float(done.stdout) < 0.02


# -- fork ------------------------------------------------------------------------------------


def _child_spin(native: bool, timeout: float) -> float:
    """In a forked worker: a timed call on the rig inherited from the parent."""
    rig = _RIGS[native]
    rig.new_store()  # a store of its own (the parent's may have been mid-call in a thread)
    return rig.run(timeout)


def _fork_pool_scenario(native: bool, workers: int) -> None:
    """(In a fresh interpreter.) The parent makes a timed call, then a fork ProcessPoolExecutor's
    workers each make one on the rig they inherited."""
    rig = _RIGS[native] = Rig(native)
    # The parent made a timed call: ticker armed, reaper running. The reaper disarms a rig's
    # ticker 0.5 s (MARGIN) after the last call began: a loaded machine can take that long
    # between the call's start and the look (a late trap, a descheduled thread), so a few
    # tries for the state the fork must see.
    for _ in range(5):
        assert rig.run(0.01) >= 0.01
        if rig.ticker.armed:
            break
    assert rig.ticker.armed
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = [pool.submit(_child_spin, native, 0.05) for _ in range(workers * 2)]
        results = [f.result(timeout=30) for f in futures]
    assert all(0.05 <= r < 1.0 for r in results), results
    assert rig.run(0.01) >= 0.01  # and the parent still works


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("workers", [1, 3])
def test_process_pool_fork_workers(rig: Rig, workers: int) -> None:
    # In a fresh interpreter with a hard timeout: forked from the test process, the workers
    # would inherit every thread earlier tests left (pools, executors), and a hang must fail
    # the test, not the run (ProcessPoolExecutor's exit waits for its workers forever).
    native = rig.ticker.native
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_deadlines as t; "
        "t._fork_pool_scenario(sys.argv[2] == '1', int(sys.argv[3])); print('ok')"
    )
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    res = subprocess.run(
        [sys.executable, "-c", script, here, "1" if native else "0", str(workers)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stdout + res.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_while_another_thread_arms(rig: Rig) -> None:
    # Fork while a second thread keeps making timed calls (holding the ticker's lock at times).
    stop = threading.Event()
    other = Rig(rig.ticker.native)

    def caller() -> None:
        while not stop.is_set():
            other.run(0.002)

    t = threading.Thread(target=caller)
    t.start()
    try:
        for _ in range(5):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 1
                try:
                    code = 0 if 0.02 <= _child_spin(rig.ticker.native, 0.02) < 1.0 else 2
                finally:
                    os._exit(code)
            deadline = time.monotonic() + 30
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                    pytest.fail("the forked child hung")
                time.sleep(0.01)
            assert os.waitstatus_to_exitcode(status) == 0
    finally:
        stop.set()
        t.join()


def test_forced_fallback_by_environment() -> None:
    done = _script("print(_ticker.native_available())", {"PLUGSAFE_TICKER": "python"})
    assert done.stdout.strip() == "False", done.stderr


def test_a_starved_fallback_reaper_gives_the_due_ticks_before_it_disarms() -> None:
    # The fallback ticker's one thread both ticks and reaps. Starved past a call's timeout +
    # MARGIN (here: kept off the ticker lock; in a whole loaded py3.10 run, by the machine), it
    # woke, found the ticker past its horizon and disarmed it without first giving the ticks
    # due meanwhile: the epoch never reached the deadline and the spinning call ran for ever
    # (test_late_by_little[python-*] hung for 10 min). A child, so a regression fails, not hangs.
    run_ok(
        """
        import threading, time, ctypes, wasmtime
        from plugsafe._runtime import _ticker
        _ticker.MARGIN = 0.05
        cfg = wasmtime.Config(); cfg.epoch_interruption = True
        engine = wasmtime.Engine(cfg)
        tk = _ticker.Ticker(engine, native=False)
        store = wasmtime.Store(engine)
        module = wasmtime.Module(engine, '(module (func (export "spin") (loop br 0)))')
        spin = wasmtime.Instance(store, module, []).exports(store)["spin"]
        arming = [-1e9]
        _ticker.guard(store, ctypes.cast(store.ptr(), ctypes.c_void_p).value or 0, arming,
                      0.02, tk)
        tk.use_timeout(0.02)
        with _ticker._lock:  # the ticker's thread cannot turn while this is held
            start = time.perf_counter()
            tk.last = arming[0] = start
            tk.arm()
            store.set_epoch_deadline(tk.ticks(0.02))
            time.sleep(0.3)  # past the horizon: 0.02 + MARGIN
        try:
            spin(store)
        except wasmtime.Trap as trap:
            assert trap.trap_code == wasmtime.TrapCode.INTERRUPT, trap
        print("stopped", round(time.perf_counter() - start, 2))
        """,
        timeout=30,
        hang="a call whose ticker was reaped while its thread was starved never stopped",
    )
