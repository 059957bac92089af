"""Shared by the pool attack tests (test_sec_pool_*.py): a Host whose one host function runs
what each test scripts, threads joined with a hard bound, and what a refused wait looks like."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import plugsafe
from plugsafe import _nesting

# A hang regression fails after this; the healthy outcome of every case takes well under 2 s.
BOUND = 20.0

# ``go(k)`` calls host function ``hook(k)``, which runs the test's ``ACTIONS[k]()``.
HOOKED = """(module
  (import "plugsafe" "hook" (func $hook (param i64) (result i64)))
  (memory (export "memory") 1)
  (func (export "go") (param i64) (result i64) (call $hook (local.get 0)))
  (func (export "five") (result i32) i32.const 5)
  (func (export "spin") (loop $l (br $l))))"""


class Rig:
    """A Host whose ``hook(k)`` runs ``actions[k]()``, and threads joined with a bound."""

    def __init__(self) -> None:
        self.host = plugsafe.Host()
        self.actions: dict[int, Callable[[], object]] = {}
        self.results: dict[str, object] = {}
        self.threads: list[threading.Thread] = []
        self.closing: list[Any] = []

        @self.host.function
        def hook(k: int) -> int:
            out = self.actions[k]()
            return out if isinstance(out, int) else 0

    def policy(self, timeout: float | None = None) -> plugsafe.Policy:
        return plugsafe.Policy(allow={"hook"}, timeout=timeout)

    def pool(self, name: str, size: int, timeout: float | None = None) -> plugsafe.PluginPool:
        pool = plugsafe.PluginPool(
            HOOKED.encode(), self.policy(timeout), size=size, host=self.host, name=name
        )
        self.closing.append(pool)
        return pool

    def plugin(self, name: str, timeout: float | None = None) -> plugsafe.Plugin:
        plugin = self.host.load(HOOKED.encode(), policy=self.policy(timeout), name=name)
        self.closing.append(plugin)
        return plugin

    def start(self, key: str, fn: Callable[..., object], *args: object) -> None:
        def run() -> None:
            try:
                self.results[key] = fn(*args)
            except BaseException as exc:  # recorded, asserted by the test
                self.results[key] = exc

        t = threading.Thread(target=run, daemon=True, name=f"rig-{key}")
        self.threads.append(t)
        t.start()

    def join(self) -> None:
        end = time.monotonic() + BOUND
        for t in self.threads:
            t.join(max(end - time.monotonic(), 0.1))
        hung = [t.name for t in self.threads if t.is_alive()]
        assert not hung, f"threads still running after {BOUND} s (a deadlock): {hung}"


def rig_lifetime() -> Iterator[Rig]:
    """A Rig for one test (the body of each test module's ``rig`` fixture)."""
    r = Rig()
    yield r
    # Only once every thread ended (a hung one would make close() wait for its call).
    if not any(t.is_alive() for t in r.threads):
        for thing in r.closing:
            thing.close()
        r.host.close()


def refused_as_deadlock(exc: object) -> plugsafe.PluginCallError:
    """``exc`` is a host function's failure caused by a refused (deadlocking) wait."""
    assert isinstance(exc, plugsafe.HostFunctionError), repr(exc)
    cause = exc.__cause__
    assert isinstance(cause, plugsafe.PluginCallError), repr(cause)
    assert "would deadlock" in str(cause), cause
    return cause


def wait_until(cond: Callable[[], bool], what: str) -> None:
    """Poll ``cond`` (a state another thread reaches) for up to BOUND / 2 seconds."""
    end = time.monotonic() + BOUND / 2
    while not cond():
        assert time.monotonic() < end, f"never reached: {what}"
        time.sleep(0.005)


def waiting() -> int:
    """How many threads are registered as waiting for a plugin or pool (_nesting)."""
    return len(_nesting._WAITING)
