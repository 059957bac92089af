"""attack9: components under exceptions that signal handlers raise.

Found with the signal storm of tests/test_attack9_signals.py pointed at a ComponentPlugin:

- an exception raised at the clock's call right after a call set its thread as the component's
  owner (before the ``try`` that unsets it) left the thread the owner: every later call from it
  was refused as a re-entry ("called again from one of its own host functions");
- one raised in the get_memory callback of plugsafe's component memories made it return a null
  base (the C API gives get_memory no way to fail), and wasmtime aborted the process with a
  Rust panic ("called `Option::unwrap()` on a `None` value", trampoline/memory.rs): Ctrl-C while
  a component instantiated killed the host; one raised at the first line of the Python
  new_memory made ctypes return 0, "done", for a memory never made ("a callback must be set",
  an abort too). get_memory is now C, and new_memory and grow_memory C trampolines that refuse
  and keep the interrupt when Python fails (plugsafe._speedups);
- one raised as the call's ``with`` released the lock (in its Python ``__exit__``) left the
  component locked.

A Python callback can fail before its first line runs (a handler runs at the frame's start), so
these are made deterministic here: the exception is raised where the handler's would be.
"""

from __future__ import annotations

import sys
import threading

import pytest
from component_wat import WORLD

import plugsafe

from helpers import run_ok, signal_storm


def test_an_exception_as_a_component_call_starts_leaves_it_callable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from plugsafe import _componentplugin

    with plugsafe.Host() as host:
        plugin = host.load(WORLD.encode(), policy=plugsafe.Policy(fuel=1_000_000))
        assert plugin.invoke("add", 2, 3) == 5
        real = _componentplugin.time.perf_counter
        raised: list[int] = []
        me = threading.get_ident()

        def clock() -> float:  # the call's first clock reading raises, as a handler would
            # (Only the component call's, on this thread: the module patched is ``time``.)
            caller = sys._getframe(1).f_globals.get("__name__")
            if not raised and threading.get_ident() == me and caller == _componentplugin.__name__:
                raised.append(1)
                raise KeyboardInterrupt
            return real()

        monkeypatch.setattr(_componentplugin.time, "perf_counter", clock)
        with pytest.raises(KeyboardInterrupt):
            plugin.invoke("add", 2, 3)
        monkeypatch.undo()
        assert raised == [1]
        # Neither locked nor owned by this thread: it goes on.
        assert plugin.invoke("add", 20, 22) == 42
        assert plugin.invoke("add", 1, 1) == 2


_GET_MEMORY = """
    import sys
    import plugsafe
    from plugsafe._runtime import _hostmem
    from component_wat import WORLD

    assert _hostmem.AVAILABLE
    slot = _hostmem._Memory.size
    raised = []

    def size(self):  # raises in get_memory, once, as a signal handler's exception would
        if not raised and sys._getframe(1).f_code.co_name == "_get_memory":
            raised.append(1)
            raise KeyboardInterrupt
        return slot.__get__(self)

    _hostmem._Memory.size = property(size, slot.__set__)
    with plugsafe.Host() as host:
        for _ in range(3):  # each load instantiates: a memory made, get_memory asked
            plugin = host.load(WORLD.encode(), policy=plugsafe.Policy(fuel=1_000_000))
            print("add", plugin.invoke("add", 2, 3), flush=True)
            plugin.close()
"""


def test_a_component_memory_never_reports_a_null_base_to_wasmtime() -> None:
    from plugsafe._runtime import _hostmem

    if not _hostmem.AVAILABLE:
        pytest.skip("no host memory creator on this platform")
    if _hostmem._C_GET is None:
        pytest.skip("no plugsafe._speedups (or PLUGSAFE_SPEEDUPS=0): get_memory is Python")
    out = run_ok(_GET_MEMORY, timeout=300, env={"PYTHONFAULTHANDLER": "1"})
    assert out.split("\n")[:3] == ["add 5"] * 3


# (A scenario for helpers.signal_storm: ``armed``, ``storm_start``, ``report`` are its.)
_STORM = """
    import plugsafe
    from component_wat import WORLD

    host = plugsafe.Host()

    def load():
        return host.load(WORLD.encode(), policy=plugsafe.Policy(timeout=2.0))

    plugin = load()
    storm_start()
    locked, escaped, interrupts, calls = 0, [], 0, 0
    end = time.monotonic() + SECONDS
    while storm_going(end, interrupts=interrupts, calls=calls):
        try:
            armed[0] = True
            assert plugin.invoke("add", 2, 3) == 5
            armed[0] = False
            calls += 1
        except KeyboardInterrupt:
            armed[0] = False
            interrupts += 1
            if plugin._lock.locked():
                locked += 1
                plugin = load()
        except BaseException as exc:  # a wrong result, or an undocumented error
            armed[0] = False
            escaped.append(repr(exc))
            plugin = load()
    storm_stop()
    report(interrupts=interrupts, calls=calls, locked=locked, escaped=escaped[:5])
"""


@pytest.mark.skipif(
    sys.version_info < (3, 11), reason="CPython 3.10 runs signal handlers after any instruction"
)
@pytest.mark.parametrize("interval", [0.002, 0.0007])
def test_a_signal_storm_never_aborts_locks_or_wedges_a_component(interval: float) -> None:
    # Each interrupted call discards its instance, so the next one instantiates: the memory
    # callbacks run again and again. Before: the process aborted (a null base from
    # get_memory, or "a callback must be set" after a new_memory whose Python failed at its
    # first line returned 0), the component stayed locked, or its thread stayed its owner.
    from plugsafe._runtime import _hostmem

    if _hostmem.AVAILABLE and _hostmem._C_GET is None:
        pytest.skip("no plugsafe._speedups (or PLUGSAFE_SPEEDUPS=0): memory callbacks in Python")
    got = signal_storm(
        _STORM, seconds=3.0, interval=interval, at_least={"interrupts": 20, "calls": 20}
    )
    assert got["locked"] == 0, got
    assert got["escaped"] == [], got
