"""attack9: components under exceptions that signal handlers raise.

Found with the signal storm of tests/test_attack9_signals.py pointed at a ComponentPlugin:

- an exception raised at the clock's call right after a call set its thread as the component's
  owner (before the ``try`` that unsets it) left the thread the owner: every later call from it
  was refused as a re-entry ("called again from one of its own host functions");
- one raised in the get_memory callback of plugsafe's component memories made it return a null
  base (the C API gives get_memory no way to fail), and wasmtime aborted the process with a
  Rust panic ("called `Option::unwrap()` on a `None` value", trampoline/memory.rs): Ctrl-C while
  a component instantiated killed the host. get_memory is now C (plugsafe._speedups).

A Python callback can fail before its first line runs (a handler runs at the frame's start), so
these are made deterministic here: the exception is raised where the handler's would be.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from component_wat import WORLD

import plugsafe

ROOT = Path(__file__).resolve().parents[1]


def test_an_exception_as_a_component_call_starts_leaves_it_callable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from plugsafe import _componentplugin

    with plugsafe.Host() as host:
        plugin = host.load(WORLD.encode(), policy=plugsafe.Policy(fuel=1_000_000))
        assert plugin.invoke("add", 2, 3) == 5
        real = _componentplugin.time.perf_counter
        raised: list[int] = []

        def clock() -> float:  # the call's first clock reading raises, as a handler would
            if not raised:
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
        pytest.skip("plugsafe._speedups was not built: get_memory is the Python callback")
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_GET_MEMORY)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT / "tests", check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert out.stdout.split("\n")[:3] == ["add 5"] * 3
