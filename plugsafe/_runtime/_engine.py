"""Engines, the epoch ticker that enforces deadlines, and compiling text and binaries.

The EpochTicker is self-contained here on purpose: it is due to be replaced, and nothing else in
``_runtime`` depends on more than its ``count`` attribute.
"""

from __future__ import annotations

import _thread
import functools
import os
import threading
import weakref
from collections.abc import Sequence

import wasmtime
from wasmtime import _ffi as wf

from ._backend import WasmFailure
from ._module import Module

__all__ = [
    "Engine",
    "EpochTicker",
    "NO_DEADLINE_TICKS",
    "TICK_SECONDS",
    "library_fingerprint",
    "wasmtime_version",
    "wat_to_wasm",
]

# Epoch ticker period. A deadline is enforced to within about one tick.
TICK_SECONDS = 0.005
# "No deadline": wasmtime traps at once if none is set, so unlimited calls get a far-off one.
NO_DEADLINE_TICKS = 1 << 62


@functools.lru_cache(maxsize=1)
def wasmtime_version() -> str:
    """The installed wasmtime-py version."""
    from importlib.metadata import version

    return version("wasmtime")


@functools.lru_cache(maxsize=1)
def library_fingerprint() -> str:
    """Identifies the installed libwasmtime, for compiled-artifact cache keys.

    Cheaper than asking importlib.metadata (which alone costs a fresh process ~20 ms): any other
    wasmtime install is another file, or the same path with another size or modification time.
    """
    st = os.stat(wf.filename)
    return f"{wf.filename}:{st.st_size}:{st.st_mtime_ns}"


def wat_to_wasm(text: str) -> bytes:
    """Translate WebAssembly text to binary; raises WasmFailure with wasmtime's message."""
    try:
        return bytes(wasmtime.wat2wasm(text))
    except wasmtime.WasmtimeError as exc:
        raise WasmFailure(str(exc)) from None


class Engine:
    """A wasmtime engine configured for untrusted code.

    Fuel metering is engine-wide in wasmtime, and it slows all code down, so a host keeps one
    metered and one unmetered engine and compiles each plugin for the one its policy needs.
    """

    def __init__(self, *, metered: bool, max_stack: int) -> None:
        # The native stack one call may use (plugsafe counts it per thread: _nesting).
        self.max_stack = max_stack
        cfg = wasmtime.Config()
        cfg.consume_fuel = metered
        cfg.epoch_interruption = True
        cfg.max_wasm_stack = max_stack
        # Features that widen the attack surface or break the 32-bit pointer model are off.
        cfg.wasm_threads = False
        cfg.shared_memory = False
        cfg.wasm_memory64 = False
        cfg.wasm_gc = False
        cfg.wasm_component_model = False
        cfg.wasm_multi_memory = True
        # A linear memory never moves once created (growth past the reservation, 4 GiB on 64-bit
        # hosts, fails instead): an Instance may then keep a window on its memory across calls
        # rather than asking wasmtime for the base address on every access.
        cfg.memory_may_move = False
        self.metered = metered
        # Everything that changes compiled code: part of the on-disk cache key.
        self.settings = (
            f"fuel={metered};stack={max_stack};epoch;nothreads;no64;nogc;multimem;nomove"
        )
        self._engine = wasmtime.Engine(cfg)
        self._ptr = self._engine.ptr()

    def increment_epoch(self) -> None:
        """Advance the epoch; safe from any thread."""
        wf.wasmtime_engine_increment_epoch(self._ptr)

    def compile(self, wasm: bytes) -> Module:
        """Compile and validate a wasm binary (the GIL is released while wasmtime compiles)."""
        try:
            return Module(wasmtime.Module(self._engine, wasm))
        except wasmtime.WasmtimeError as exc:
            raise WasmFailure(str(exc)) from None

    def deserialize(self, artifact: bytes, description: bytes | None = None) -> Module:
        """Load an artifact that ``Module.serialize`` of *this plugsafe* produced.

        ``description`` is what ``Module.describe`` gave for it (asked of wasmtime if None).
        Never call this on bytes from anywhere else: a crafted artifact runs arbitrary code.
        """
        try:
            return Module(wasmtime.Module.deserialize(self._engine, artifact), description)
        except wasmtime.WasmtimeError as exc:
            raise WasmFailure(str(exc)) from None


class EpochTicker:
    """One background thread per Host that advances its engines' epochs every TICK_SECONDS.

    Deadlines are per store (``set_epoch_deadline``), so one plugin running out of time never
    interrupts another. The thread holds no reference to the Host; it stops on ``stop()`` or when
    the Host is garbage-collected. A child made by ``os.fork()`` starts a ticker thread of its
    own (only the forking thread survives a fork, and without a ticker no deadline would pass).
    """

    def __init__(self, engines: Sequence[Engine], owner: object) -> None:
        self._engines = list(engines)
        # Ticks so far; bumped after the engines' epochs (Instance._arm relies on that order).
        self.count = 0
        self._stop = threading.Event()
        # Held by the running thread, released when it ends (stop() waits on it).
        self._running: _thread.LockType | None = None
        self._lock = threading.Lock()
        weakref.finalize(owner, self._halt)
        _TICKERS.add(self)

    def _halt(self) -> None:
        self._stop.set()

    def add(self, engine: Engine) -> None:
        """Tick ``engine`` too from now on."""
        with self._lock:
            if engine not in self._engines:
                self._engines = [*self._engines, engine]

    def ensure_running(self) -> None:
        """Start the thread if it is not running yet (idempotent)."""
        if self._running is not None:
            return
        with self._lock:
            if self._running is None and not self._stop.is_set():
                # A bare thread rather than threading.Thread: Thread.start() waits until the new
                # thread has run, which costs a fresh process more than the rest of a cached
                # load. Nothing needs that wait: the first tick is due a full period later.
                running = _thread.allocate_lock()
                running.acquire()
                _thread.start_new_thread(self._run, (self._stop, self, running))
                self._running = running

    @staticmethod
    def _run(stop: threading.Event, ticker: EpochTicker, running: _thread.LockType) -> None:
        try:
            while not stop.wait(TICK_SECONDS):
                for engine in ticker._engines:
                    engine.increment_epoch()
                ticker.count += 1
        finally:
            running.release()

    @property
    def running(self) -> bool:
        """Whether the ticker thread has been started and has not ended."""
        running = self._running
        return running is not None and running.locked()

    def stop(self) -> None:
        """Stop the thread and wait (up to a second) for it to end."""
        self._stop.set()
        running = self._running
        if running is not None and running.acquire(timeout=1.0):
            running.release()

    def _after_fork(self) -> None:
        # In the child: the parent's thread is gone, and it may have held these locks when the
        # fork happened. Fresh ones, the same stop state, and a thread of our own if one ran.
        stopped = self._stop.is_set()
        self._stop = threading.Event()
        if stopped:
            self._stop.set()
        self._lock = threading.Lock()
        started = self._running is not None
        self._running = None
        if started:
            self.ensure_running()


_TICKERS: weakref.WeakSet[EpochTicker] = weakref.WeakSet()


def _restart_tickers_in_child() -> None:
    for ticker in list(_TICKERS):
        ticker._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_tickers_in_child)
