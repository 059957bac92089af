"""The optional compiled call into wasm (``plugsafe._speedups``, issue 14 goal 5).

Where it was built (a C compiler at install: CI, this machine) every per-call C call of the
cffi backend goes through it; where it was not, or with ``PLUGSAFE_SPEEDUPS=0``, through cffi's
ABI-mode call as before. The behaviour tests here run on whichever the process uses (each says
which it checked), and ``.ci/run`` runs this file again with ``PLUGSAFE_SPEEDUPS=0``;
``tests/test_backend_parity.py`` runs every runtime case on both in one process. Under
``PLUGSAFE_REQUIRE_TOOLCHAINS=1`` (CI) an extension that was not built fails, not skips.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import plugsafe
from plugsafe import Policy
from plugsafe import _runtime as rt

from toolchains import REQUIRE_ENV, required
from wat import abi_module

ROOT = Path(__file__).resolve().parents[1]

NUMERIC = """
(module
  (import "plugsafe" "inc" (func $inc (param i64) (result i64)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "spin") (loop $l (br $l)))
  (func (export "wait") (param i32) (result i32)
    (if (i32.lt_s (local.get 0) (i32.const 0)) (then (loop $l (br $l))))
    (local.get 0))
  (func (export "boom") (param i32) (result i32)
    (if (local.get 0) (then unreachable)) (local.get 0))
  (func (export "div") (param i32 i32) (result i32) (i32.div_s (local.get 0) (local.get 1)))
  (func (export "oob") (param i32) (result i32) (i32.load (local.get 0)))
  (func (export "quit") (param i32) (result i32)
    (if (local.get 0) (then (call $exit (i32.const 3)))) (local.get 0))
  (func (export "run") (param i32) (result i64) (local i64)
    (block (loop
      (br_if 1 (i32.eqz (local.get 0)))
      (local.set 1 (call $inc (local.get 1)))
      (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
      (br 0)))
    (local.get 1)))
"""
ECHO = abi_module(
    """
  (func (export "echo") (param $p i32) (param $n i32) (result i64)
    (call $ok (local.get $p) (local.get $n)))
"""
)


def _speedups() -> ModuleType:
    """The built extension; skipped where it was not built (failed where it must be)."""
    try:
        from plugsafe import _speedups
    except ImportError as exc:
        problem = f"plugsafe._speedups was not built ({exc}): no C compiler at install?"
        if required():
            pytest.fail(f"{problem}, but {REQUIRE_ENV} (or CI) says it must be here")
        pytest.skip(problem)
    return _speedups


def _host() -> plugsafe.Host:
    host = plugsafe.Host()

    @host.function
    def inc(x: int) -> int:
        if x == 7:
            raise ValueError("seven")
        return x + 1

    return host


def _policy(**kw: Any) -> Policy:
    return Policy(allow={"inc"}, wasi=plugsafe.Wasi(), **kw)


def _path(plugin: plugsafe.Plugin) -> Any:
    return plugin.invoke.__self__  # type: ignore[attr-defined]


def _bound_call(plugin: plugsafe.Plugin, function: str) -> object:
    """The bound C call the plugin's current instance makes for ``function``."""
    return _path(plugin).instance.funcs[function].call


def _assert_compiled_if_in_use(call: object) -> None:
    if rt.SPEEDUPS:
        assert type(call).__name__ == "RawCall"
        assert type(call).__module__ == "plugsafe._speedups"
    else:
        assert isinstance(call, functools.partial)


def _aim(plugin: plugsafe.Plugin, function: str, *args: int) -> None:
    """Call ``function`` twice: the second call (and every later one on this instance) takes
    the short path, which makes the C call compiled where it is in use (Instance.fast_call)."""
    plugin.invoke(function, *args)
    plugin.invoke(function, *args)
    path = _path(plugin)
    assert path._fn == function
    _assert_compiled_if_in_use(path._raw)
    assert path._raw is _bound_call(plugin, function)


# -- which call is in use ---------------------------------------------------------------------


def test_the_compiled_call_is_built_and_used() -> None:
    sp = _speedups()
    if os.environ.get("PLUGSAFE_SPEEDUPS", "").strip() == "0" or rt.BACKEND != "cffi":
        pytest.skip("turned off here (PLUGSAFE_SPEEDUPS=0 or the ctypes backend)")
    assert rt.SPEEDUPS is True
    with _host() as host:
        plugin = host.load(NUMERIC.encode(), policy=_policy())
        assert plugin.invoke("add", 1, 2) == 3
        # Bound at the first call on an instance is cffi's call (binding the compiled one
        # costs more than one call saves: fresh_instance, first calls) ...
        assert isinstance(_bound_call(plugin, "add"), functools.partial)
        # ... and the short path (from the second call) makes it the compiled one.
        assert plugin.invoke("add", 2, 2) == 4
        assert isinstance(_path(plugin)._raw, sp.RawCall)
        assert isinstance(_bound_call(plugin, "add"), sp.RawCall)
        # And the ABI path's calls too, the allocator's with them.
        echo = host.load(ECHO.encode())
        assert echo.call("echo", b"hello") == b"hello"
        # Not at its first call on the instance either (a fresh instance's only call) ...
        assert isinstance(_bound_call(echo, "echo"), functools.partial)
        assert echo.call("echo", b"hello") == b"hello"
        assert isinstance(_bound_call(echo, "echo"), sp.RawCall)
        assert isinstance(_bound_call(echo, "plugsafe_alloc"), sp.RawCall)


def _run_child(code: str, **env: str) -> dict[str, Any]:
    full = {**os.environ, **env}
    full.pop("PLUGSAFE_BACKEND", None)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, env=full, cwd=ROOT / "tests", check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


_CHILD_CALL = """
    import functools, json
    import plugsafe
    from plugsafe import _runtime as rt
    with plugsafe.Host() as host:
        p = host.load(b'(module (func (export "add") (param i32 i32) (result i32)'
                      b' (i32.add (local.get 0) (local.get 1))))')
        out = p.invoke("add", 20, 22)
        call = p.invoke.__self__.instance.funcs["add"].call
    print(json.dumps({"speedups": rt.SPEEDUPS, "backend": rt.BACKEND, "out": out,
                      "partial": isinstance(call, functools.partial)}))
"""


def test_plugsafe_speedups_0_turns_it_off() -> None:
    got = _run_child(_CHILD_CALL, PLUGSAFE_SPEEDUPS="0")
    assert got == {"speedups": False, "backend": "cffi", "out": 42, "partial": True}


def test_without_the_extension_the_cffi_call_is_used() -> None:
    # As on a machine where it could not be built: the import fails, nothing else does.
    blocked = "import sys; sys.modules['plugsafe._speedups'] = None\n"
    got = _run_child(blocked + textwrap.dedent(_CHILD_CALL))
    assert got == {"speedups": False, "backend": "cffi", "out": 42, "partial": True}


def test_the_ctypes_backend_is_unaffected() -> None:
    from plugsafe._runtime._ctypes import CtypesBackend

    assert CtypesBackend.compiled is False


# -- the extension's own checks ---------------------------------------------------------------


def test_bind_checks_its_arguments() -> None:
    sp = _speedups()
    good = (0x1000, 0x2000, 0x3000, 0x4000, 2, 0x5000, None)
    assert isinstance(sp.bind(*good), sp.RawCall)
    with pytest.raises(TypeError, match="7 arguments"):
        sp.bind(*good[:6])
    with pytest.raises(TypeError, match="7 arguments"):
        sp.bind(*good, None)
    with pytest.raises(TypeError):
        sp.bind(*good[:6], keep=None)
    for i in (0, 1, 2, 3, 5):  # every address: an exact int, not 0, not negative, fits
        for bad, error in (
            (0, ValueError), (-1, OverflowError), (1 << 64, OverflowError),
            (1.0, TypeError), (True, TypeError), ("1", TypeError), (None, TypeError),
        ):  # fmt: skip
            args = list(good)
            args[i] = bad
            with pytest.raises(error):
                sp.bind(*args)
    for bad, error in ((-1, OverflowError), (2.0, TypeError), (1 << 64, OverflowError)):
        args = list(good)
        args[4] = bad
        with pytest.raises(error):
            sp.bind(*args)


def test_a_raw_call_is_made_by_bind_only_and_takes_no_arguments() -> None:
    sp = _speedups()
    with pytest.raises(TypeError):
        sp.RawCall()
    with pytest.raises(TypeError):

        class Sub(sp.RawCall):  # type: ignore[misc,name-defined]
            pass

    call = sp.bind(0x1000, 0x2000, 0x3000, 0x4000, 2, 0x5000, None)
    with pytest.raises(TypeError, match="no arguments"):
        call(1)
    with pytest.raises(TypeError, match="no arguments"):
        call(x=1)


def test_a_raw_call_keeps_what_owns_its_memory() -> None:
    sp = _speedups()

    class Owner:
        pass

    owner = Owner()
    seen = weakref.ref(owner)
    call = sp.bind(0x1000, 0x2000, 0x3000, 0x4000, 2, 0x5000, (owner,))
    del owner
    gc.collect()
    assert seen() is not None
    del call
    gc.collect()
    assert seen() is None


# -- behaviour through the call in use --------------------------------------------------------


def test_results_and_host_callbacks() -> None:
    with _host() as host:
        plugin = host.load(NUMERIC.encode(), policy=_policy())
        assert plugin.invoke("add", 2**31 - 1, 1) == -(2**31)
        _aim(plugin, "run", 1)
        assert plugin.invoke("run", 5) == 5  # five host calls, each back into Python
        assert plugin.last_call is not None and plugin.last_call.host_calls == 5
        with pytest.raises(plugsafe.HostFunctionError) as info:
            plugin.invoke("run", 8)  # the eighth host call raises ValueError("seven")
        assert isinstance(info.value.__cause__, ValueError)
        assert str(info.value.__cause__) == "seven"
        assert plugin.invoke("run", 6) == 6  # and the plugin goes on
        _aim(plugin, "run", 1)
        assert plugin.invoke("run", 4) == 4


def test_a_deadline_interrupts_a_guest_loop() -> None:
    with _host() as host:
        plugin = host.load(NUMERIC.encode(), policy=_policy(timeout=0.2))
        for _ in range(2):  # the failure drops the instance: again on a new one
            _aim(plugin, "wait", 0)
            t = time.monotonic()
            with pytest.raises(plugsafe.DeadlineExceeded):
                plugin.invoke("wait", -1)  # forever
            assert time.monotonic() - t < 30  # generous: a shared machine
        assert plugin.invoke("add", 1, 2) == 3


def test_fuel_runs_out_in_a_guest_loop() -> None:
    with _host() as host:
        plugin = host.load(NUMERIC.encode(), policy=_policy(fuel=100_000))
        for _ in range(2):
            _aim(plugin, "wait", 0)
            with pytest.raises(plugsafe.FuelExhausted):
                plugin.invoke("wait", -1)
        assert plugin.invoke("add", 1, 2) == 3


def test_other_threads_run_while_a_guest_runs() -> None:
    # The wasm call runs with the GIL released: a Python thread keeps going during it.
    with _host() as host:
        plugin = host.load(NUMERIC.encode(), policy=_policy(timeout=1.0))
        plugin.invoke("add", 1, 2)
        ticks: list[float] = []
        stop = threading.Event()

        def count() -> None:
            while not stop.is_set():
                ticks.append(time.monotonic())
                time.sleep(0.001)

        thread = threading.Thread(target=count)
        thread.start()
        try:
            for _ in range(2):
                _aim(plugin, "wait", 0)
                began = time.monotonic()
                with pytest.raises(plugsafe.DeadlineExceeded):
                    plugin.invoke("wait", -1)
                ended = time.monotonic()
                inside = [t for t in ticks if began + 0.2 < t < ended - 0.2]
                assert len(inside) > 10, (began, ended, len(ticks))
        finally:
            stop.set()
            thread.join()


_FAILURES = """
    import json
    import plugsafe
    from plugsafe import _runtime as rt
    from test_speedups import NUMERIC, _host, _policy

    def outcome(fn):
        try:
            return ["ok", repr(fn())]
        except plugsafe.PlugsafeError as exc:
            return [type(exc).__name__, str(exc), getattr(exc, "trap_code", None),
                    getattr(exc, "exit_code", None)]

    with _host() as host:
        plugin = host.load(NUMERIC.encode(), policy=_policy(), name="failing")
        path = plugin.invoke.__self__
        got, calls = [], []
        # Each function called well twice first (the second call aims the short path at it,
        # which makes its C call the compiled one where that is in use), then badly: a
        # failure drops the instance, so the next case starts on a new one.
        for fn, good, bad in (
            ("boom", (0,), (1,)), ("div", (7, 2), (1, 0)), ("oob", (0,), (0x7FFFFFFF,)),
            ("quit", (0,), (1,)), ("div", (7, 2), (-2**31, -1)),
        ):
            plugin.invoke(fn, *good)
            plugin.invoke(fn, *good)
            calls.append(type(path._raw).__name__)
            got.append(outcome(lambda: plugin.invoke(fn, *bad)))
        got.append(outcome(lambda: plugin.invoke("div", 7, 2)))
    print(json.dumps({"speedups": rt.SPEEDUPS, "got": got, "calls": calls}))
"""


def test_traps_and_errors_are_the_same_on_both_calls() -> None:
    # A trap comes back through the trap slot, a WASI exit as the returned error: each must
    # make the same documented error, with the same text, on the compiled call and cffi's.
    compiled = _run_child(_FAILURES)
    plain = _run_child(_FAILURES, PLUGSAFE_SPEEDUPS="0")
    assert plain["speedups"] is False
    assert plain["calls"] == ["partial"] * 5
    if compiled["speedups"]:
        assert compiled["calls"] == ["RawCall"] * 5
    assert compiled["got"] == plain["got"]
    names = [g[0] for g in compiled["got"]]
    assert names == ["PluginTrap"] * 3 + ["PluginExitError", "PluginTrap", "ok"]
    assert compiled["got"][0][2] == "UNREACHABLE"
    assert compiled["got"][1][2] == "INTEGER_DIVISION_BY_ZERO"
    assert compiled["got"][2][2] == "MEMORY_OUT_OF_BOUNDS"
    assert compiled["got"][3][3] == 3  # the exit code
    assert compiled["got"][4][2] == "INTEGER_OVERFLOW"
    assert compiled["got"][5] == ["ok", "3"]
