"""Epoch tickers: what makes a wasm deadline fire on time, and costs nothing while idle.

wasmtime interrupts wasm when its store's *epoch deadline* passes, and the epoch is a counter
on the engine that somebody must advance. A Python thread doing that needs the GIL, and with
busy Python threads a 5 ms ticker ticked only every 15-30 ms, so deadlines stretched 3-6x
(issue 12). This module advances epochs without Python:

* **Native ticker** (Linux/glibc on x86_64 and aarch64): a POSIX timer, ``timer_create(
  CLOCK_MONOTONIC)`` with ``SIGEV_THREAD``, whose notify function *is* libwasmtime's
  ``wasmtime_engine_increment_epoch`` and whose ``sigev_value`` is the engine pointer (a
  ``union sigval`` is passed like a pointer on the SysV ABIs). glibc calls it on a thread of
  its own: no Python, no GIL, so a deadline holds whatever Python threads do.
* **Python fallback** (elsewhere, when the probe fails, or with ``PLUGSAFE_TICKER=python``):
  one thread for the whole process that, whenever it gets the GIL, advances each armed
  engine's epoch by the ticks the *wall clock* says are due (not one per wake-up).

Ticks can come late (a starved thread) and, after a stall, several at once, so a count of
ticks alone could fire a deadline early. A store's epoch deadline is therefore only the moment
to *look*: :func:`guard` gives each timed store an epoch-deadline callback that compares the
wall clock with the call's deadline and either extends the epoch deadline (too early) or
interrupts the call with wasmtime's own ``INTERRUPT`` trap. Deadlines never fire early.

A stopped call still needs the GIL twice (the guard, then the return). So the guard first looks
a little ahead of the deadline (``AHEAD``) and, from then until the call is back, the
interpreter's switch interval is ``PROMPT_INTERVAL`` instead of the app's (5 ms by default):
with busy Python threads the stopped call gets the GIL back within a fraction of a millisecond
of asking instead of several switch intervals (see "Prompt returns" below).

A timer must never outlive its engine (a tick on a freed engine is a use-after-free: the first
experiment segfaulted at interpreter exit). So a :class:`Ticker` keeps its engine alive for the
rest of the process (engines are process-wide anyway: one per configuration), and timers are
disarmed at exit.

Idle costs nothing: a timer runs only while timed calls may run, and, for the call path's
tickers, only once a deadline could come (see LEAD: a call shorter than the shortest timeout on
its engine makes no tick at all; each tick costs a glibc thread, ~60 us of CPU). A call with a
timeout stamps its start time on its engine's ticker and arms it if needed (two attribute
accesses when it is armed already). One *reaper* per process disarms a ticker once no timed
call can still be running (its last stamp + the largest timeout used on it + a margin, or none
of its watched locks held), then sleeps until the next arm: no wake-ups at all while idle.

Fork: POSIX timers and threads do not survive ``fork()``. The at-fork child handler only
forgets them (plain assignments: no thread start, no lock wait, nothing that can block on a
lock another thread held at the fork); the next timed call in the child re-creates them.
"""

from __future__ import annotations

import _thread
import atexit
import contextlib
import ctypes
import functools
import math
import os
import sys
import threading
import time
import weakref
from typing import Any

from . import _lib
from ._daemon import Daemon

__all__ = [
    "BUSY",
    "FALLBACK_PERIOD",
    "AHEAD",
    "CANCELLED",
    "LEAD",
    "MARGIN",
    "MAX_DEADLINE_TICKS",
    "MIN_DELAY",
    "PROMPT_GRACE",
    "PROMPT_INTERVAL",
    "NATIVE_PERIOD",
    "QUICK",
    "SLOW",
    "Ticker",
    "bump_armed",
    "guard",
    "limit",
    "native_available",
    "prompt_due",
    "prompt_off",
    "reaper_pending",
    "ticker_for",
    "unlimit",
]

# Native tick period. glibc starts a thread per expiry (about 60 us of CPU each, measured on a
# loaded 2-core box), so a period is a trade: 2 ms costs 3-4% of a core while ticking and lands
# deadlines within ~2-6 ms; 4 ms costs ~2% and ~2 ms more. Only while a deadline could come.
NATIVE_PERIOD = 0.002
# The Python fallback's wake-up period (it catches up with the wall clock on every wake-up,
# so a longer period costs precision, not correctness).
FALLBACK_PERIOD = 0.005
# Native timers per engine (see Ticker._start_timers).
_FANOUT = 8
# How long after the last timed call's deadline could have passed the ticker stays armed. A
# call that outlives its deadline in a host function must find its epoch deadline passed when
# it gets back to wasm, so the timer must have ticked all its ticks by then; this covers
# scheduling hiccups many times over, and costs one extra half second of ticking per burst.
MARGIN = 0.5
# How often the reaper looks at armed tickers (while any is armed) ...
QUICK = 0.05
# ... and, once a ticker has been busy (armed, with timed calls running) for BUSY seconds, how
# often it looks at that one. Each look is a glibc thread taking the GIL with a fresh thread
# state (~0.4 ms of CPU): at QUICK that was about 1 % of a core, as much as a quarter of the
# ticker's cost while armed. A ticker busy for a while is likely to stay busy; the cost is up to
# SLOW of extra ticking after its last call.
SLOW = 0.25
BUSY = 1.0
# A ticker armed by a call of the plugsafe call path (one that watches its locks) starts ticking
# only LEAD before the shortest timeout in use could end (no deadline can come sooner), when that
# is at least MIN_DELAY away: a burst of calls shorter than their timeouts never ticks at all.
# Calls arming their deadlines before the first tick count their ticks from it (Ticker.deadline).
LEAD = 0.03
MIN_DELAY = 0.02
# How long before a deadline the store's guard first looks (see "Prompt returns" below): the
# epoch deadline comes AHEAD early, the guard makes the interpreter switch threads promptly
# and extends it to the deadline itself. LEAD leaves two periods to spare for the ticks.
AHEAD = 0.025
# The GIL switch interval while a deadline is due (Python's default is 5 ms), and how long after
# a call's deadline its thread keeps it at most when the call returned without being stopped.
PROMPT_INTERVAL = 0.0002
PROMPT_GRACE = 0.1
# Ticks added to every deadline: one because the first tick after arming can come at once,
# one because a call may reuse a deadline armed up to one period before it started (see
# Ticker.ticks). With them the guard's wall-clock check (see guard) passes the first time
# unless ticks came in a burst.
_SLACK_TICKS = 2
# The furthest ahead, in ticks, any store's epoch deadline is set (2 s natively): a deadline
# further off is set this far, and the guard extends it by the wall clock when it comes (one
# look every 2 s of a long call). An interrupt (a cancelled call) must move the epoch past the
# store's deadline: with deadlines up to a whole timeout's ticks ahead, a cancelled call of an
# hour's timeout owed 1.8 M increments and ended 16 s after its cancel (attack11).
MAX_DEADLINE_TICKS = 1000

_CLOCK_MONOTONIC = 1
_SIGEV_THREAD = 2


def _glibc() -> bool:
    """Whether the C library is glibc (``platform.libc_ver()[0] == "glibc"`` where glibc
    answers confstr; elsewhere, musl for one, it does not, and the answer is no)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc ")
    except (AttributeError, ValueError, OSError):
        return False


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _Sigevent(ctypes.Structure):
    # glibc's struct sigevent on LP64 (x86_64, aarch64): 64 bytes.
    _fields_ = [
        ("sigev_value", ctypes.c_void_p),
        ("sigev_signo", ctypes.c_int),
        ("sigev_notify", ctypes.c_int),
        ("sigev_notify_function", ctypes.c_void_p),
        ("sigev_notify_attributes", ctypes.c_void_p),
        ("_pad", ctypes.c_byte * 32),
    ]


class _Native:
    """The libc and libwasmtime entry points a native timer needs (None if unavailable)."""

    def __init__(self) -> None:
        self.timer_create: Any = None
        self.timer_settime: Any = None
        self.increment: int = 0  # address of wasmtime_engine_increment_epoch
        self.why_not = ""
        self._probe()

    def _probe(self) -> None:
        if os.environ.get("PLUGSAFE_TICKER", "").lower() == "python":
            self.why_not = "PLUGSAFE_TICKER=python"
            return
        if not sys.platform.startswith("linux"):
            self.why_not = f"no POSIX timers with SIGEV_THREAD on {sys.platform}"
            return
        # os.uname() and confstr, what platform.machine() and platform.libc_ver() read: the
        # platform module imports subprocess (and signal, selectors) at its top on Python
        # 3.10, a cold-start cost for two strings.
        machine = os.uname().machine
        if machine not in ("x86_64", "aarch64") or ctypes.sizeof(ctypes.c_void_p) != 8:
            # struct sigevent's layout below is glibc's on LP64.
            self.why_not = f"struct sigevent layout unchecked on {machine}"
            return
        if not _glibc():
            self.why_not = "not glibc"
            return
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if not hasattr(libc, "timer_create"):  # glibc < 2.34 keeps them in librt
                # Imported here: ctypes.util imports subprocess, shutil, tempfile (issue 14).
                from ctypes.util import find_library

                libc = ctypes.CDLL(find_library("rt") or "librt.so.1", use_errno=True)
            create = libc.timer_create
            create.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
            create.restype = ctypes.c_int
            settime = libc.timer_settime
            settime.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
            settime.restype = ctypes.c_int
            increment = ctypes.cast(_lib.dll.wasmtime_engine_increment_epoch, ctypes.c_void_p)
        except (OSError, AttributeError, ImportError) as exc:
            self.why_not = f"probe failed: {exc}"
            return
        if not increment.value:
            self.why_not = "wasmtime_engine_increment_epoch not found"
            return
        self.timer_create, self.timer_settime = create, settime
        self.increment = increment.value

    def create(self, function: int, value: int) -> ctypes.c_void_p | None:
        """A new (disarmed) timer calling ``function(value)`` on a glibc thread at each expiry;
        None if the system refused one."""
        event = _Sigevent()
        event.sigev_value = value
        event.sigev_notify = _SIGEV_THREAD
        event.sigev_notify_function = function
        timer = ctypes.c_void_p()
        if self.timer_create(_CLOCK_MONOTONIC, ctypes.byref(event), ctypes.byref(timer)) != 0:
            return None
        return timer

    def set(self, timer: ctypes.c_void_p, period: float, first: float = 0.0) -> bool:
        """Arm ``timer`` to expire first after ``first`` seconds (default: ``period``), then
        every ``period`` seconds; period 0 disarms it. Whether it worked."""
        its = _Itimerspec(_timespec(period), _timespec(first or period))
        return bool(self.timer_settime(timer, 0, ctypes.byref(its), None) == 0)


def _timespec(seconds: float) -> _Timespec:
    ns = round(seconds * 1e9)
    return _Timespec(ns // 1_000_000_000, ns % 1_000_000_000)


_NATIVE = _Native()


def native_available() -> bool:
    """Whether epochs tick from POSIX timers here (else a Python thread ticks them)."""
    return _NATIVE.increment != 0 and not _state["forked_from_native"]


def _increment_fn() -> Any:
    """wasmtime_engine_increment_epoch taking the engine as a plain address."""
    address = ctypes.cast(_lib.dll.wasmtime_engine_increment_epoch, ctypes.c_void_p).value
    return ctypes.CFUNCTYPE(None, ctypes.c_void_p)(address or 0)


# -- process-wide state -------------------------------------------------------------------------
# One lock orders arming against disarming (see Ticker.arm and _reap_once). Replaced, never
# waited for, in a forked child. Re-entrant: a Python signal handler that makes a timed call
# while the main thread is in arm() would otherwise wait for it for ever (attack finding).
_lock = threading.RLock()
# Wakes the Python thread (fallback ticking and reaping) from its idle wait.
_wake = threading.Event()
_state: dict[str, Any] = {
    # The Python thread (see _python_thread) has been started in this process.
    "thread": False,
    # The native reaper's one-shot timer (see _reap_native), and whether it is set.
    "reap_timer": None,
    "reap_pending": False,
    # A native timer was created in this process: glibc's timer helper thread exists.
    "native_used": False,
    # This process was forked from one whose timer helper thread existed (see the at-fork
    # handler): it must not create native timers.
    "forked_from_native": False,
}
_TICKERS: list[Ticker] = []
# Threads whose running asynchronous call was cancelled: thread ident -> that call's token
# (CallToken, which sets it while the call runs on the thread and drops it when the call ends).
# Every guard running on such a thread traps: the calls of other plugins that the cancelled
# call's host functions make on its thread (nested in it) stop too, instead of running to their
# own timeouts (attack12). Only calls nested in the cancelled one run on that thread meanwhile.
CANCELLED: dict[int, object] = {}
# A bumper with nothing owed waits this long for another request before it stops: an interrupt
# owes at most MAX_DEADLINE_TICKS + 2 increments (a millisecond or two), and a storm's cancels
# come an event-loop turn apart, so a helper that stopped at once was started again for nearly
# each of them (attack11).
_BUMP_LINGER = 0.2
# Engines kept alive for the rest of the process: never freed while a timer may tick them, not
# even while the interpreter tears modules down at exit (each also holds an extra reference).
_KEEP: list[object] = []


class Ticker:
    """Advances one engine's epoch while timed calls may run on it.

    Process-wide and never freed (it keeps its engine alive). The call path's protocol, for a
    call with a timeout (the order matters, see :meth:`arm`)::

        ticker.last = start            # the call's start, time.perf_counter()
        if not ticker.armed:
            ticker.arm()
        if start - arming[0] > ticker.period:   # armed over a period ago: arm afresh
            arming[0] = start
            set_epoch_deadline(ticker.deadline(start, ticks))   # ticks = ticker.ticks(timeout)

    where ``arming`` is the store's one-item list given to :func:`guard`. A deadline then never
    fires before ``timeout`` has passed since ``start`` (the guard checks the wall clock), and
    fires within about three periods after it, plus delays in getting the GIL back.
    ``Plugin.invoke``'s short path may skip the last line while the epoch deadline it set last
    is less than half its ticks old (issue 14: many plugins called in turn re-armed on every
    call): the store's epoch deadline is then *earlier* than this protocol's, the guard finds
    the arming stamped and extends it, so no call is stopped early.

    When does it tick? A ticker that :meth:`watch`\\ es locks (the call path's) starts ticking
    ``LEAD`` before the shortest timeout used on it could end after the arm (if that is at least
    ``MIN_DELAY`` away): no deadline can come sooner, and a burst of calls shorter than their
    timeouts never ticks. :meth:`deadline` counts a deadline armed before the first tick from
    that tick.

    When is it disarmed? The reaper looks every ``QUICK`` seconds while it is armed (every
    ``SLOW`` seconds once it has been armed for ``BUSY`` seconds). A ticker
    that :meth:`watch`\\ es the locks its timed calls hold is disarmed as soon as none of them
    is held (and no call armed a deadline in the last period); any ticker once ``last`` + the
    longest timeout used + ``MARGIN`` has passed.
    """

    def __init__(self, engine: Any, *, native: bool | None = None) -> None:
        """Tick ``engine`` (an object whose ``ptr()`` is a ``wasm_engine_t *`` with
        ``epoch_interruption`` on: a ``wasmtime.Engine``, or ``_engine``'s own handle).

        ``native`` forces the POSIX-timer ticker (True; raises OSError if unavailable) or the
        Python fallback (False); None picks the native one where it works.
        """
        # Kept for the rest of the process: see _KEEP.
        _KEEP.append(engine)
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(engine))
        self._ptr: int = ctypes.cast(engine.ptr(), ctypes.c_void_p).value or 0
        use_native = native_available() if native is None else native
        if use_native and not native_available():
            why = _NATIVE.why_not or "forked from a process whose native timers ran"
            raise OSError(f"no native epoch ticker: {why}")
        self.native = use_native
        #: Seconds per tick.
        self.period = NATIVE_PERIOD if use_native else FALLBACK_PERIOD
        #: Whether the epoch is ticking now (read on every timed call: keep it a plain attribute).
        self.armed = False
        #: perf_counter() start time of the latest timed call (written on every timed call).
        self.last = -math.inf
        # The largest timeout used with this ticker: it stays armed that long after ``last``;
        # and the smallest: no deadline comes sooner after an arm (see LEAD).
        self._longest = 0.0
        self._shortest = math.inf
        #: perf_counter() time of the first tick of this armed spell (read when a deadline is
        #: set: see deadline()); -inf while it ticks from the start.
        self.start = -math.inf
        # When it was last armed (the reaper looks less often at a ticker busy for long).
        self._since = 0.0
        # Locks held by every timed call on this ticker, from before it stamps ``last`` until it
        # ends (the Plugins' call locks): while none is held, no timed call runs.
        self._watched: weakref.WeakSet[Any] = weakref.WeakSet()
        # The POSIX timers (created on first arm; forgotten in a forked child).
        self._timers: list[ctypes.c_void_p] = []
        # Fallback bookkeeping: when ticking (re)started and how many ticks were given since.
        self._base = 0.0
        self._done = 0
        self._increment = _increment_fn()
        # Interrupts' epoch increments still owed, and the helper thread that makes them (see
        # bump; its lock orders the two, held only to read and write ``_owed``).
        self._owed = 0
        self._bumper = Daemon("plugsafe-interrupt", self._bump_owed, self._forget_owed)
        with _lock:
            _TICKERS.append(self)

    # -- per call --------------------------------------------------------------------------

    def ticks(self, timeout: float) -> int:
        """The epoch deadline (in ticks) for ``timeout`` seconds.

        ``(timeout - ahead) / period`` rounded up, plus two: the first tick after arming may
        come at once, and a call may reuse a deadline armed up to one period before it started.
        The guard first looks ``ahead`` early (see "Prompt returns"): AHEAD, or half a timeout
        shorter than twice that (so short calls well within their timeout never make it look).
        """
        # (_ahead, inline: a fresh_instance call computes its deadline's ticks every time.)
        half = timeout / 2
        return math.ceil((timeout - (AHEAD if half > AHEAD else half)) / self.period) + _SLACK_TICKS

    def deadline_within(self, now: float, left: float) -> int:
        """``deadline(now, ticks(left))`` in one frame: the epoch deadline to set at ``now``
        for a deadline ``left`` seconds away (a new instance made for a call that started
        earlier: every ``fresh_instance`` call; issue 14, goal 6)."""
        if left < 0.0:
            left = 0.0
        half = left / 2
        period = self.period
        ticks = math.ceil((left - (AHEAD if half > AHEAD else half)) / period) + _SLACK_TICKS
        start = self.start
        if now >= start:
            return ticks if ticks < MAX_DEADLINE_TICKS else MAX_DEADLINE_TICKS
        skipped = int((start - now) / period)
        if ticks - skipped >= _SLACK_TICKS:
            ticks -= skipped
            return ticks if ticks < MAX_DEADLINE_TICKS else MAX_DEADLINE_TICKS
        return self.deadline(now, ticks)  # (it starts the ticking now)

    def deadline(self, now: float, ticks: int) -> int:
        """The epoch deadline to set at ``now`` for a deadline of ``ticks`` (:meth:`ticks`).

        ``ticks`` as such while the ticker ticks; fewer while its first tick is still to come
        (at :attr:`start`, then one a period): the ticks that will not be given before it.
        With ``k`` dropped, the deadline's last tick comes at ``start + (ticks - k - 1) *
        period``, at least ``now + timeout - AHEAD + period`` (where the guard first looks) and
        at most three periods later. A deadline that would come before the first tick starts the
        ticking now (a timeout shorter than any noted when the ticker was armed). At most
        MAX_DEADLINE_TICKS in every case: the guard extends a deadline set nearer.
        """
        start = self.start
        if now >= start:
            return ticks if ticks < MAX_DEADLINE_TICKS else MAX_DEADLINE_TICKS
        skipped = int((start - now) / self.period)
        if ticks - skipped >= _SLACK_TICKS:
            ticks -= skipped
            return ticks if ticks < MAX_DEADLINE_TICKS else MAX_DEADLINE_TICKS
        self._hurry()
        return ticks if ticks < MAX_DEADLINE_TICKS else MAX_DEADLINE_TICKS

    def _hurry(self) -> None:
        """Start ticking now (a deadline comes before the delayed first tick)."""
        with _lock:
            if not self.armed or time.perf_counter() >= self.start:
                return
            self._start_ticking(time.perf_counter(), 0.0)

    def bump(self, n: int) -> None:
        """Advance the epoch ``n`` times soon, on a helper thread (``Instance.interrupt`` of a
        store with a longer timeout: ``n`` is its ticks, at most MAX_DEADLINE_TICKS + 2).

        Requests coalesce: one helper runs per engine, and a request made while it runs raises
        what it still owes to at least ``n`` (only increments made after a request count for
        it). A storm of interrupts costs one timeout's ticks instead of one each: 200 cancelled
        calls of 60 s plugins made 200 threads of 30,000 ctypes calls, each taking the GIL,
        and kept the two cores busy for a minute (tests/test_tidy10.py's storm)."""

        def owe() -> None:
            if self._owed < n:
                self._owed = n

        self._bumper.request(owe)

    def _forget_owed(self) -> None:
        self._owed = 0  # (a forked child: what its parent owed is not its own)

    def _bump_owed(self) -> None:
        increment, ptr, bumper = self._increment, self._ptr, self._bumper
        lock = bumper.lock()
        lingered = False
        while True:
            with lock:
                take = min(self._owed, 1024)
                if take == 0:
                    if not lingered:
                        # (Daemon.request notifies the condition: a new request wakes it.)
                        lingered = True
                        lock.wait(_BUMP_LINGER)
                        continue
                    bumper.stopping()
                    return
                lingered = False
                self._owed -= take
            for _ in range(take):
                increment(ptr)

    def use_timeout(self, timeout: float) -> None:
        """Note that calls with ``timeout`` run on this engine (without watched locks, the
        ticker stays armed that long after the last of them started)."""
        if timeout > self._longest:
            self._longest = timeout
        if timeout < self._shortest:
            self._shortest = timeout

    def watch(self, lock: Any) -> None:
        """Every timed call on this ticker holds ``lock`` (or another watched one) from before
        it stamps ``last`` until it ends: the ticker may stop as soon as none is held. Only
        for tickers *all* of whose timed calls hold a watched lock. Weakly held."""
        with _lock:
            self._watched.add(lock)

    def arm(self) -> None:
        """Start ticking (if not already), and the reaper. Idempotent.

        Callers stamp ``last`` *before* checking ``armed``: the reaper clears ``armed`` before
        it reads ``last`` or the watched locks and disarms only under the lock, so a call
        either sees ``armed`` still set and is seen by the reaper, or sees it cleared and comes
        here, where it waits for the reaper's decision and re-arms if needed.
        """
        with _lock:
            if self.armed:
                return
            now = time.perf_counter()
            delay = 0.0
            if self._watched:
                # Every call arming a deadline on this ticker goes through deadline() (the call
                # path's protocol), and none reuses an arming made before the ticker was last
                # disarmed (see _idle): the ticks may start later.
                delay = self._shortest - LEAD
                if delay < MIN_DELAY:
                    delay = 0.0
            self._start_ticking(now, delay)
            self.armed = True
            self._since = time.perf_counter()
            if self.native and _schedule_native_reap(QUICK):
                return
            # The Python thread ticks fallback tickers and reaps what the native reaper cannot.
            if not _state["thread"]:
                _start(_python_thread)
                _state["thread"] = True
            _wake.set()

    # -- reaper side (lock held) ----------------------------------------------------------------

    def _start_ticking(self, now: float, delay: float) -> None:
        """(Lock held.) Tick from ``now + delay`` (its first tick one period later)."""
        if self.native and not self._start_timers(delay):
            # The system refused a timer (say, RLIMIT_SIGPENDING): tick from Python, in ticks
            # of the same period (instances already count their deadlines in them).
            self._stop_timers()
            self.native = False
        if not self.native:
            self._base = now + delay
            self._done = 0
        self.start = now + delay + self.period if delay else -math.inf

    def _idle(self, now: float) -> bool:
        """Whether no timed call can be running (``armed`` must be clear: see :meth:`arm`)."""
        watched = self._watched
        if watched:
            # Exact: a timed call holds one of these from before its stamp until it ends. (A
            # call outliving its deadline, say in a host function, keeps the ticker armed.)
            # And no call armed a deadline in the last period: a call reusing an arming (see
            # the class docstring) never reuses one made before the ticks were (re)started.
            return now - self.last > self.period and not any(lock.locked() for lock in watched)
        return now >= self.last + self._longest + MARGIN

    def _disarm(self) -> None:
        self.armed = False
        if self.native:
            self._stop_timers()

    def _start_timers(self, delay: float = 0.0) -> bool:
        # FANOUT timers, each every FANOUT periods, staggered one period apart. The kernel
        # merges expiries of one timer whose signal glibc's helper thread has not taken yet
        # (an overrun): on a loaded machine a single 2 ms timer lost 40% of its ticks. Each
        # timer has its own pending signal, so ticks are lost only when the helper thread
        # waits longer than FANOUT periods; the number of expiries (the CPU cost) is the same.
        if not self._timers:
            _state["native_used"] = True
            for _ in range(_FANOUT):
                timer = _NATIVE.create(_NATIVE.increment, self._ptr)
                if timer is None:
                    return False
                self._timers.append(timer)
        every = self.period * _FANOUT
        return all(
            _NATIVE.set(timer, every, delay + self.period * (i + 1))
            for i, timer in enumerate(self._timers)
        )

    def _stop_timers(self) -> None:
        for timer in self._timers:
            _NATIVE.set(timer, 0.0)

    def _catch_up(self, now: float) -> None:
        """Fallback: give the ticks the wall clock says are due."""
        due = max(int((now - self._base) / self.period), 0)  # none before a delayed start
        increment, ptr = self._increment, self._ptr
        for _ in range(due - self._done):
            increment(ptr)
        self._done = due


def _reap_once(native_only: bool) -> float | None:
    """(Lock held.) Disarm the tickers no timed call can still be using; seconds until the next
    look at those left armed, or None if none is. ``native_only``: look at native ones only."""
    now = time.perf_counter()
    wait: float | None = None
    for tk in _TICKERS:
        if not tk.armed or (native_only and not tk.native):
            continue
        if not tk.native:
            # First the ticks the wall clock says are due: this thread also ticks, and when it
            # was starved past a call's horizon, disarming without them left that call's epoch
            # short of its deadline for ever (a loaded py3.10 run hung in a spinning call).
            tk._catch_up(now)
        # Clear first, then look at the stamp and the locks (see Ticker.arm for why).
        tk.armed = False
        if tk._idle(now):
            tk._disarm()
        else:
            tk.armed = True
            # Look again within QUICK (SLOW once busy for BUSY seconds) even if the horizon is
            # far: a lock may be watched or released meanwhile.
            often = QUICK if now - tk._since < BUSY else SLOW
            look = max(min(tk.last + tk._longest + MARGIN - now, often), 0.001)
            wait = look if wait is None else min(wait, look)
    prompt_due(now, everything=not any(tk.armed for tk in _TICKERS))
    if wait is not None and _PROMPTS:
        # Look again when the next lowered switch interval is due back.
        wait = min(wait, max(min(_PROMPTS.values(), default=now) - now, 0.001))
    return wait


# -- the native reaper: a one-shot POSIX timer whose notify function is Python ------------------
# No thread of ours sleeps: glibc runs _reap_native on a thread of its own when the timer
# expires (a ctypes callback takes the GIL there), and it sets the timer again only while
# something is still armed. Idle: no timer set, no wake-ups.

_ReapFunction = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _reap_native(_value: Any) -> None:
    try:
        with _lock:
            _state["reap_pending"] = False
            wait = _reap_once(native_only=True)
            if wait is not None:
                _schedule_native_reap(wait)
    except BaseException:  # nothing may cross into glibc
        # Look again later: with no reap pending, the armed tickers would tick, and a lowered
        # switch interval stay, for the rest of the process (arm() returns at once while a
        # ticker is armed, so no later call would schedule one).
        with contextlib.suppress(BaseException), _lock:
            _schedule_native_reap(QUICK)


_REAP_CALLBACK = _ReapFunction(_reap_native)


def _schedule_native_reap(wait: float) -> bool:
    """(Lock held.) Make sure the native reaper looks within ``wait`` seconds; False if there
    is no native reaper (the Python thread must reap)."""
    if _state["reap_pending"]:
        return True
    timer = _state["reap_timer"]
    if timer is None:
        address = ctypes.cast(_REAP_CALLBACK, ctypes.c_void_p).value or 0
        timer = _state["reap_timer"] = _NATIVE.create(address, 0)
        if timer is None:
            return False
    if not _NATIVE.set(timer, 0.0, wait):
        return False
    _state["reap_pending"] = True
    return True


def _start(target: Any) -> None:
    # A bare thread (daemon by nature): threading.Thread.start() waits until the thread runs,
    # which a first timed call should not pay for; and nothing must join it at exit.
    _thread.start_new_thread(target, ())


def _python_thread() -> None:
    """Ticks armed fallback tickers (catching up with the wall clock) and reaps every ticker
    the native reaper does not; waits on ``_wake``, with no timeout, while none is armed."""
    next_reap = 0.0
    while True:
        try:
            next_reap = _python_turn(next_reap)
        except BaseException:
            # This thread must not die: fallback tickers would stop ticking (their deadlines
            # never fire) and nothing would start it again (_state["thread"] stays set).
            with contextlib.suppress(BaseException):
                time.sleep(FALLBACK_PERIOD)
            next_reap = 0.0


def _python_turn(next_reap: float) -> float:
    """One turn of :func:`_python_thread`; the time of its next reap."""
    with _lock:
        now = time.perf_counter()
        mine = [tk for tk in _TICKERS if tk.armed and not (tk.native and _state["reap_pending"])]
        if now >= next_reap and mine:
            wait = _reap_once(native_only=False)
            next_reap = now + (QUICK if wait is None else wait)
            mine = [tk for tk in mine if tk.armed]
        ticking = [tk for tk in mine if not tk.native]
        if not mine:
            _wake.clear()  # under the lock: an arm after this sets it again
    if not mine:
        _wake.wait()
        return 0.0
    time.sleep(FALLBACK_PERIOD if ticking else max(next_reap - now, 0.001))
    now = time.perf_counter()
    for tk in ticking:
        if tk.armed:
            tk._catch_up(now)
    return next_reap


# -- the wall-clock guard -------------------------------------------------------------------

_DeadlineCallback = ctypes.CFUNCTYPE(
    ctypes.c_size_t,  # wasmtime_error_t*: NULL to continue
    ctypes.c_void_p,  # wasmtime_context_t*
    ctypes.c_void_p,  # env: our key
    ctypes.POINTER(ctypes.c_uint64),  # the epoch deadline delta to continue with
    ctypes.POINTER(ctypes.c_uint8),  # wasmtime_update_deadline_kind_t (stays CONTINUE)
)
_TRAP_CODE_INTERRUPT = 10
# Each guarded store's (arming, timeout, ticker) by key.
_GUARDS: dict[int, tuple[list[float], float, Ticker]] = {}
_next_key = iter(range(1, 1 << 62)).__next__


def _unguard(key: int, _ref: object = None) -> None:
    """The callback of the weak reference to a guarded store's owner (bound to its key with
    ``functools.partial``: no closure made per store): drops its entries."""
    _GUARDS.pop(key, None)
    _GUARD_REFS.pop(key, None)


_GUARD_REFS: dict[int, weakref.ref[object]] = {}
_partial = functools.partial


def _deadline_reached(_ctx: int, key: int, delta: Any, _kind: Any) -> int:
    """A store's epoch deadline came: go on (too early by the wall clock) or interrupt."""
    try:
        arming, timeout, tk = _GUARDS[key]
        period = tk.period
        armed = arming[0]
        if CANCELLED and _thread.get_ident() in CANCELLED:
            armed = -math.inf  # inside a cancelled call (see CANCELLED): stop
        # Limited to one call's end (armed is +inf, see limit): that call started before the
        # arming (it waited for the plugin, or instantiated it first), and no other call sees
        # the limit (it is lifted before the plugin's lock is released). Otherwise the store's
        # deadline was armed at arming[0] by a call that started then, and calls starting up
        # to one period later reuse it: none of them is due before ``end``.
        end = arming[2] if armed == math.inf else armed + timeout + period
        left = end - time.perf_counter()
        if left > 0:
            ahead = _ahead(timeout)
            if left > ahead + period:
                # Too early even to get ready (ticks came in a burst): look again ``ahead``
                # before the deadline.
                delta[0] = min(math.ceil((left - ahead) / period), MAX_DEADLINE_TICKS)
            else:
                delta[0] = math.ceil(left / period) or 1
                # The deadline is near: see "Prompt returns". Best effort: a failure here must
                # not turn into an early stop.
                with contextlib.suppress(BaseException):
                    _prompt_on(end)
            # An interrupt that came while this ran (the GIL can pass to another thread
            # between any two lines) made its increments towards the deadline this replaces:
            # look again, last, so it is not lost. (One between here and wasmtime applying
            # ``delta`` is the re-sender's to repeat: see CallToken._resend_due.)
            if arming[0] != -math.inf:
                return 0
        else:
            _prompt_on(end)
    except BaseException:  # nothing may cross into wasmtime: interrupt instead
        pass
    # wasmtime's own trap: the call fails exactly as an epoch interruption without a callback
    # does (a wasm_trap_t is returned as the wasmtime_error_t: both are one boxed error, and
    # wasmtime reports a returned trap as that trap).
    return int(_NATIVE_API.trap_new_code(_TRAP_CODE_INTERRUPT) or 0)


class _Api:
    """The two wasmtime C functions the guard uses, declared here with the prototypes it needs
    (ctypes on ``_lib.dll``: the callback type is a ctypes one)."""

    def __init__(self) -> None:
        def address(name: str) -> int:
            return ctypes.cast(getattr(_lib.dll, name), ctypes.c_void_p).value or 0

        self.trap_new_code = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint8)(
            address("wasmtime_trap_new_code")
        )
        self.set_callback = ctypes.CFUNCTYPE(
            None, ctypes.c_void_p, _DeadlineCallback, ctypes.c_void_p, ctypes.c_void_p
        )(address("wasmtime_store_epoch_deadline_callback"))


_NATIVE_API = _Api()
# Kept for the life of the process (wasmtime holds its address).
_CALLBACK = _DeadlineCallback(_deadline_reached)


def guard(owner: object, store_ptr: int, arming: list[float], timeout: float, tk: Ticker) -> None:
    """Make the store at ``store_ptr`` (a ``wasmtime_store_t*``) check the wall clock when its
    epoch deadline comes, as the deadline of a call with ``timeout`` armed at ``arming[0]``.

    ``arming`` is the store's one-item list of the ``perf_counter()`` time its deadline was
    last armed (see :class:`Ticker`); ``owner`` is the object whose life the store shares (the
    bookkeeping goes with it). The check runs only when the epoch deadline comes (Python, with
    the GIL): never on a call that ends in time.
    """
    key = _next_key()
    _GUARDS[key] = (arming, timeout, tk)
    # A weak reference whose callback drops the entry when ``owner`` goes (kept alive by
    # _GUARD_REFS until then): what weakref.finalize did, at a third of its cost per store
    # (issue 14: a store per load and per fresh instance).
    _GUARD_REFS[key] = weakref.ref(owner, _partial(_unguard, key))
    _NATIVE_API.set_callback(store_ptr, _CALLBACK, key, None)


def bump_armed(n: int, but: Ticker | None = None) -> None:
    """Advance the epoch of every armed ticker's engine but ``but``'s ``n`` times soon (see
    Ticker.bump): the guards of the calls nested in a cancelled one run, whatever their
    engine (see CANCELLED); every other store's guard finds its deadline early and goes on."""
    for tk in list(_TICKERS):
        if tk.armed and tk is not but:
            tk.bump(n)


def limit(arming: list[float], now: float, end: float) -> None:
    """Make a store's deadline, armed at ``now``, the deadline of one call ending at ``end``
    (``perf_counter`` seconds), until :func:`unlimit`; the caller sets the store's epoch
    deadline ``ticks(end - now)`` away.

    ``arming`` is the store's list given to :func:`guard`, of three items: ``[armed at, armed
    at while limited, the limit]``. While limited, ``arming[0]`` is +inf: the call path's
    "re-arm when the last arming is over a period old" never fires (a re-arm would give the
    call a whole timeout from then), and the guard reads the limit. The call path lifts the
    limit before it releases the plugin's lock, so no other call ever runs under it.
    """
    arming[1] = now
    arming[2] = end
    arming[0] = math.inf


def unlimit(arming: list[float]) -> None:
    """Lift the limit :func:`limit` set (the call it was for has ended); no-op if none."""
    if arming[0] == math.inf:
        # Armed then, for ``ticks(end - now)``: a call reusing this arming within a period
        # gets an early epoch deadline, which the guard extends (never early).
        arming[0] = arming[1]


# -- prompt returns -------------------------------------------------------------------------------
# A stopped call must take the GIL back twice: to run the guard (Python) and to return. With
# busy Python threads each wait lasts until the holder is asked to drop the GIL (after the switch
# interval, 5 ms by default) and then until the scheduler picks this thread among the waiters:
# medians of 20-50 ms were measured with 2-4 busy threads. So while a deadline is due, the
# interpreter's switch interval is lowered to PROMPT_INTERVAL: the guard first looks AHEAD
# before the deadline (Ticker.ticks), lowers it, and the stopped call's failure (or, for a call
# that ended in time, the reaper PROMPT_GRACE after its deadline) puts the previous value back.
# Keyed by thread: the guard runs, and the failure is made, on the calling thread. A value the
# app set meanwhile is left alone.

# Re-entrant: a Python signal handler runs on the main thread between any two bytecodes, also
# while that thread holds this lock (prompt_off after a stopped call, or the guard itself); a
# handler that makes a timed call reaching its deadline comes back here on the same thread,
# and a plain lock hung it for ever inside wasm (attack finding). Each step below leaves the
# state consistent for such a nested use (see _prompt_on).
_prompt_lock = threading.RLock()


def _ahead(timeout: float) -> float:
    """How long before the deadline of a call with ``timeout`` its guard first looks: AHEAD,
    or half a timeout shorter than twice that (short calls well within their timeout never make
    it look)."""
    return min(AHEAD, timeout / 2)


# thread ident -> the perf_counter time after which its entry may be dropped.
_PROMPTS: dict[int, float] = {}
# [the switch interval to restore, or None while not lowered by us]
_prompt_saved: list[float | None] = [None]


def _prompt_on(end: float) -> None:
    """(The guard, on the calling thread.) Keep the switch interval low for this thread's call,
    whose deadline is ``end``, until :func:`prompt_off` or ``end + PROMPT_GRACE``."""
    with _prompt_lock:
        if not _PROMPTS and _prompt_saved[0] is None:
            current = sys.getswitchinterval()
            if current > PROMPT_INTERVAL:
                # Lowered before the value to restore is saved: a nested use in between sees
                # it lowered already and saves nothing, so the one restore is this save's.
                sys.setswitchinterval(PROMPT_INTERVAL)
                _prompt_saved[0] = current
        _PROMPTS[_thread.get_ident()] = end + PROMPT_GRACE


def _prompt_restore() -> None:
    """(``_prompt_lock`` held, no entries left.) Put the app's switch interval back, unless the
    app changed it meanwhile."""
    saved = _prompt_saved[0]
    _prompt_saved[0] = None
    if saved is not None and abs(sys.getswitchinterval() - PROMPT_INTERVAL) < 1e-7:
        sys.setswitchinterval(saved)


def prompt_off() -> None:
    """The calling thread's stopped call is back (its failure is being made): end its entry."""
    if not _PROMPTS:  # the usual case, without the lock: nothing was lowered
        return
    with _prompt_lock:
        if _PROMPTS.pop(_thread.get_ident(), None) is not None and not _PROMPTS:
            _prompt_restore()


def prompt_due(now: float, everything: bool = False) -> None:
    """(The reaper.) Drop the entries of calls that ended in time (past their grace), or all of
    them when ``everything`` (no ticker is armed: no timed call runs)."""
    if not _PROMPTS and _prompt_saved[0] is None:
        return
    with _prompt_lock:
        # (With no entry but a saved value: a prompt_off interrupted between its two steps by
        # an exception, a KeyboardInterrupt, left the interval lowered; put back here.)
        for ident, until in list(_PROMPTS.items()):
            if everything or until <= now:
                del _PROMPTS[ident]
        if not _PROMPTS:
            _prompt_restore()


_BY_ENGINE: dict[int, Ticker] = {}


def ticker_for(engine: Any) -> Ticker:
    """The process-wide ticker of ``engine`` (created on first use; keeps the engine alive)."""
    key = id(engine)
    tk = _BY_ENGINE.get(key)
    if tk is None:
        tk = _BY_ENGINE[key] = Ticker(engine)
    return tk


def reaper_pending() -> bool:
    """Whether a reaper will look at the armed tickers (for tests)."""
    return bool(_state["reap_pending"] or _state["thread"])


def _after_fork_in_child() -> None:
    # Only this thread survived the fork: the Python thread and every POSIX timer are gone,
    # and the lock may have been held by one of them. Forget them all; the next timed call
    # re-creates what it needs. Nothing here may block.
    global _lock, _wake, _prompt_lock
    _lock = threading.RLock()
    _wake = threading.Event()
    # (Each ticker's bumper makes its lock anew in a child by itself: _daemon.Daemon.)
    # The calls that lowered the switch interval ran on threads that are gone here.
    _prompt_lock = threading.RLock()
    _PROMPTS.clear()
    CANCELLED.clear()  # (the cancelled calls ran on threads gone here)
    if _prompt_saved[0] is not None:
        _prompt_restore()
    _state["thread"] = _state["reap_pending"] = False
    _state["reap_timer"] = None
    # glibc's SIGEV_THREAD helper thread takes an internal lock for every expiry and glibc does
    # not reset it in the child: forked while it was held, the child's first timer_create
    # blocks forever (measured: 1 fork in 5 with armed timers; a ProcessPoolExecutor worker
    # hung on its first timed call). A child of a process that used native timers therefore
    # ticks from Python (still counted in wall-clock time).
    if _state["native_used"]:
        _state["forked_from_native"] = True
    for tk in _TICKERS:
        tk.armed = False
        tk._timers = []  # the parent's; glibc's bookkeeping for them is leaked, harmlessly
        if tk.native and _state["forked_from_native"]:
            # The same period: stores armed in the parent count their deadlines in its ticks
            # (the Python thread gives ticks of any period, catching up every FALLBACK_PERIOD).
            tk.native = False


def _disarm_all_at_exit() -> None:
    # Engines are never freed (see _KEEP), so this is belt and braces: no ticks while the
    # interpreter finalizes. No lock: the reaper may hold it, and exit must not wait.
    for tk in list(_TICKERS):
        if tk.native:
            tk.armed = False
            tk._stop_timers()
    timer = _state["reap_timer"]
    if timer is not None:
        _NATIVE.set(timer, 0.0)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_disarm_all_at_exit)
