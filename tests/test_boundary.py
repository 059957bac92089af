"""Nothing crosses the C boundary, nesting is bounded, lock waits respect deadlines (issue 12).

- Class 2: a host callback that Python cannot run (the recursion limit) still traps the guest,
  on both backends, and never hands it a value the host did not produce; a spare trap that was
  used is detected and the plugin's Linker rebuilt.
- Class 3: nested plugin calls are counted per thread (depth and stack) and refused, typed.
- Class 4: a wait for a plugin busy in another thread ends by the caller's deadline.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import plugsafe
from plugsafe import _nesting
from plugsafe import _runtime as rt
from plugsafe._runtime._backend import Backend, HostCallbackFailed
from plugsafe._runtime._ctypes import CtypesBackend


def _backends() -> list[Any]:
    out: list[Any] = [pytest.param(CtypesBackend(), id="ctypes")]
    try:
        from plugsafe._runtime._cffi import CffiBackend

        out.append(pytest.param(CffiBackend(), id="cffi"))
    except Exception as exc:  # cffi's declarations refused here: the ctypes case still runs
        out.append(pytest.param(None, id="cffi", marks=pytest.mark.skip(reason=str(exc))))
    return out


# ``check(uid)`` asks is_admin(uid) and touch(uid) (the host always answers 0) and traps with
# ``unreachable`` if it sees anything else: a forged answer can only come from a host callback
# that "succeeded" without running.
ADMIN = """(module
  (import "env" "is_admin" (func $is_admin (param i64) (result i64)))
  (import "env" "touch" (func $touch (param i64) (result i64)))
  (memory (export "memory") 1)
  (func (export "check") (param i64) (result i64) (local $r i64)
    (local.set $r (call $is_admin (local.get 0)))
    (i64.store (i32.const 0) (i64.or (i64.load (i32.const 0)) (local.get $r)))
    (if (i64.ne (local.get $r) (i64.const 0)) (then unreachable))
    (local.set $r (call $touch (local.get 0)))
    (i64.store (i32.const 0) (i64.or (i64.load (i32.const 0)) (local.get $r)))
    (if (i64.ne (local.get $r) (i64.const 0)) (then unreachable))
    (i64.const 0)))"""


def _depth() -> int:
    frame, n = sys._getframe(), 0
    while frame is not None:
        frame, n = frame.f_back, n + 1  # type: ignore[assignment]
    return n


@contextmanager
def _recursion_limit(limit: int) -> Iterator[None]:
    old = sys.getrecursionlimit()
    # Near the recursion limit, wasmtime-py's finalizers of the trap objects plugsafe converts
    # can fail in turn (that trap is leaked, and Python reports an unraisable exception, which
    # pytest's own hook cannot even format at that depth).
    old_hook = sys.unraisablehook
    sys.unraisablehook = lambda _u: None
    sys.setrecursionlimit(limit)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)
        sys.unraisablehook = old_hook


def _at_depth(n: int, fn: Any) -> Any:
    if n <= 0:
        return fn()
    return _at_depth(n - 1, fn)


class _Rig:
    """One engine and module; a Linker (rebuilt once a spare was used) and its instance."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.seen: list[BaseException] = []
        self.engine = rt.Engine(metered=False, max_stack=512 * 1024)
        self.module = self.engine.compile(rt.wat_to_wasm(ADMIN))
        self.rebuilt = 0
        self.linker = self._linker()
        self.instance = self._instance()

    def _sink(self, exc: BaseException) -> str:
        self.seen.append(exc)
        return f"recorded {type(exc).__name__}"

    def _linker(self) -> rt.Linker:
        linker = rt.Linker(self.engine, self.backend)
        linker.define_numeric("env", "is_admin", ["i64"], "i64", lambda _uid: 0, self._sink)
        linker.define_func("env", "touch", ["i64"], ["i64"], lambda _c, _a: [0], self._sink)
        return linker

    def _instance(self) -> rt.Instance:
        if self.linker.spent:
            self.linker = self._linker()
            self.rebuilt += 1
        return rt.Instance(
            self.engine, self.linker, self.module, memory_size=65536, memories=1,
            table_elements=10, tables=1, fuel=None, deadline_ticks=1 << 40,
        )  # fmt: skip

    def check(self) -> tuple[Any, ...]:
        ref = self.instance.func("check")
        assert ref is not None
        return self.instance.invoke(ref, (7,))


@pytest.mark.parametrize("backend", _backends())
def test_recursion_limit_at_the_c_boundary_traps_and_never_forges(backend: Backend) -> None:
    rig = _Rig(backend)
    assert rig.check() == (0,)
    outcomes: set[str] = set()
    base = _depth()
    # The guest ORs every answer it got into memory[0..8]: the host always answers 0.
    for n in range(0, 80):
        rig.seen.clear()
        rig.instance.write(0, bytes(8))
        try:
            with _recursion_limit(base + 40):
                out = _at_depth(n, rig.check)
            assert out == (0,)
            outcomes.add("ok")
        except (RecursionError, ctypes.ArgumentError):
            # Python's own recursion, before the guest ran or in converting its trap: what
            # plugsafe's call path does then (see rt.HostRecord.leak).
            rig.linker.record.distrust()
            outcomes.add("python")
        except rt.WasmFailure as failure:
            # Never the guest's own check (unreachable): a host callback that failed trapped.
            assert failure.trap_code is None, (n, failure.message)
            assert len(rig.seen) == 1 and failure.message.startswith("recorded ")
            outcomes.add("trap")
        assert rig.instance.read(0, 8) == bytes(8), f"the guest saw a forged answer at {n}"
        if outcomes != {"ok"}:
            rig.instance = rig._instance()
    assert {"ok", "python"} <= outcomes, outcomes
    # Every Linker whose spares may have been used was replaced; the plugin works again.
    rig.instance = rig._instance()
    assert not rig.linker.spent
    assert rig.check() == (0,)


@pytest.mark.parametrize("backend", _backends())
def test_a_spare_trap_is_recorded_as_host_callback_failed(backend: Backend) -> None:
    rig = _Rig(backend)
    base = _depth()
    spares = 0
    for n in range(0, 80):
        rig.seen.clear()
        try:
            with _recursion_limit(base + 40):
                _at_depth(n, rig.check)
        except (RecursionError, ctypes.ArgumentError):
            rig.linker.record.distrust()
            rig.instance = rig._instance()
            continue
        except rt.WasmFailure:
            if rig.linker.spent and not rig.linker.record.leak:
                spares += 1
                # Nothing could record what failed: the sink hears HostCallbackFailed.
                assert rig.seen and isinstance(rig.seen[0], (HostCallbackFailed, RecursionError))
            rig.instance = rig._instance()
    assert rig.rebuilt >= spares


def _admin_plugin(host: plugsafe.Host) -> plugsafe.Plugin:
    @host.function
    def is_admin(uid: int) -> int:
        return 0

    @host.function
    def name_of(uid: int) -> str:
        return "nobody"

    wat = """(module
      (import "plugsafe" "is_admin" (func $is_admin (param i64) (result i64)))
      (import "plugsafe" "name_of" (func $name_of (param i64) (result i64)))
      (memory (export "memory") 1)
      (func (export "plugsafe_abi_version") (result i32) i32.const 1)
      (func (export "plugsafe_alloc") (param i32) (result i32) i32.const 1024)
      (func (export "check") (param i64) (result i64)
        (if (i64.ne (call $is_admin (local.get 0)) (i64.const 0)) (then unreachable))
        (drop (call $name_of (local.get 0)))
        (i64.const 0)))"""
    return host.load(wat.encode(), policy=plugsafe.Policy(allow={"is_admin", "name_of"}))


def test_a_plugin_hit_by_the_recursion_limit_raises_typed_and_works_again(
    host: plugsafe.Host,
) -> None:
    plugin = _admin_plugin(host)
    assert plugin.invoke("check", 1) == 0
    linkers = {id(plugin._linker)}
    kinds: set[str] = set()
    base = _depth()
    for n in range(0, 90):
        try:
            with _recursion_limit(base + 45):
                out = _at_depth(n, lambda: plugin.invoke("check", 1))
        except RecursionError:
            continue  # the app's own recursion, before plugsafe was entered
        except plugsafe.PluginTrap as exc:
            # Only the spare (Python could not even enter the callback) is a trap; the guest's
            # own ``unreachable`` never fires.
            assert exc.trap_code is None, exc
            kinds.add("PluginTrap")
        except plugsafe.PlugsafeError as exc:
            kinds.add(type(exc).__name__)
        else:
            assert out == 0
        linkers.add(id(plugin._linker))
    assert kinds <= {"HostFunctionError", "PluginTrap", "PluginCallError"}, kinds
    assert plugin.invoke("check", 1) == 0
    assert plugin.last_call is not None


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_in_a_host_function_propagate_as_themselves(
    host: plugsafe.Host, exc_type: type[BaseException]
) -> None:
    raise_it = [True]

    @host.function
    def is_admin(uid: int) -> int:
        if raise_it[0]:
            raise exc_type("stop")
        return 0

    wat = """(module (import "plugsafe" "is_admin" (func $a (param i64) (result i64)))
      (func (export "check") (param i64) (result i64) (call $a (local.get 0))))"""
    plugin = host.load(wat.encode(), policy=plugsafe.Policy(allow={"is_admin"}))
    with pytest.raises(exc_type):
        plugin.invoke("check", 1)
    raise_it[0] = False
    assert plugin.invoke("check", 1) == 0


def test_a_marshalling_failure_is_a_host_function_error_with_the_cause(
    host: plugsafe.Host,
) -> None:
    @host.function
    def label() -> str:
        return "bad \udc80 text"

    wat = """(module (import "plugsafe" "label" (func $l (result i64)))
      (memory (export "memory") 1)
      (func (export "plugsafe_alloc") (param i32) (result i32) i32.const 64)
      (func (export "go") (result i64) (call $l)))"""
    plugin = host.load(wat.encode(), policy=plugsafe.Policy(allow={"label"}))
    with pytest.raises(plugsafe.HostFunctionError) as info:
        plugin.invoke("go")
    assert info.value.function == "label"
    assert isinstance(info.value.__cause__, UnicodeEncodeError)


# -- class 3: nesting ----------------------------------------------------------------------------

CHAIN = """(module (import "plugsafe" "nxt" (func $nxt (param i64) (result i64)))
  (func (export "go") (param i64) (result i64) (call $nxt (local.get 0))))"""


def _chain(host: plugsafe.Host, levels: int) -> list[plugsafe.Plugin]:
    plugins: list[plugsafe.Plugin] = []

    def nxt(depth: int) -> int:
        if depth + 1 >= len(plugins):
            return depth + 1
        out: int = plugins[depth + 1].invoke("go", depth + 1)
        return out

    host.function(nxt, name="nxt")
    pol = plugsafe.Policy(allow={"nxt"})
    plugins += [host.load(CHAIN.encode(), policy=pol, name=f"p{i}") for i in range(levels)]
    return plugins


def _causes(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__


def test_nesting_deeper_than_the_cap_is_refused_typed() -> None:
    with plugsafe.Host(max_stack=64 * 1024) as host:
        plugins = _chain(host, _nesting.NESTING_CAP + 2)
        before = _nesting.thread_room().room
        with pytest.raises(plugsafe.HostFunctionError) as info:
            plugins[0].invoke("go", 0)
        refused = [e for e in _causes(info.value) if isinstance(e, plugsafe.StackLimitExceeded)]
        assert refused and refused[0].limit == "nesting" and refused[0].phase == "call"
        assert refused[0].value == _nesting.NESTING_CAP
        assert _nesting.thread_room().room == before  # every level gave its room back
        # Up to the cap, nesting works.
        assert _chain_ok(host, _nesting.NESTING_CAP)


# A start function that calls host function ``more``, which loads the same module again.
LOADER = """(module (import "plugsafe" "more" (func $more)) (func $s call $more) (start $s)
  (func (export "five") (result i32) i32.const 5))"""


@pytest.mark.parametrize("levels", [3, _nesting.NESTING_CAP + 4])
def test_loading_plugins_from_a_start_function_counts_as_nesting(levels: int) -> None:
    # Loading runs wasm (the start function) on this thread's stack, like a call: a host
    # function that loads plugins is counted in the same per-thread budget (issue 12, class 3).
    with plugsafe.Host(max_stack=64 * 1024) as host:
        depth = [0]
        loaded: list[plugsafe.Plugin] = []

        @host.function
        def more() -> None:
            if depth[0] < levels:
                depth[0] += 1
                loaded.append(host.load(LOADER.encode(), policy=pol))

        pol = plugsafe.Policy(allow={"more"})
        before = _nesting.thread_room().room
        if levels <= _nesting.NESTING_CAP - 1:
            assert host.load(LOADER.encode(), policy=pol).invoke("five") == 5
            assert len(loaded) == levels
        else:
            with pytest.raises(plugsafe.PlugsafeError) as info:
                host.load(LOADER.encode(), policy=pol)
            refused = [e for e in _causes(info.value) if isinstance(e, plugsafe.StackLimitExceeded)]
            assert refused, info.value
            assert (refused[0].limit, refused[0].phase) == ("nesting", "load")
            assert depth[0] == _nesting.NESTING_CAP  # refused at the cap, not later
        assert _nesting.thread_room().room == before  # every level gave its room back


def _chain_ok(host: plugsafe.Host, levels: int) -> bool:
    with plugsafe.Host(max_stack=64 * 1024) as h:
        plugins = _chain(h, levels)
        return bool(plugins[0].invoke("go", 0) == levels)


def test_a_thread_smaller_than_max_stack_refuses_even_the_outermost_call() -> None:
    outcome: list[BaseException | int] = []
    with plugsafe.Host(max_stack=2 * 1024 * 1024) as host:
        plugin = host.load(b'(module (func (export "five") (result i32) i32.const 5))')

        def run() -> None:
            try:
                outcome.append(plugin.invoke("five"))
            except BaseException as exc:
                outcome.append(exc)

        old = threading.stack_size(256 * 1024)
        try:
            t = threading.Thread(target=run)
            t.start()
            t.join()
        finally:
            threading.stack_size(old)
        (err,) = outcome
        assert isinstance(err, plugsafe.StackLimitExceeded), err
        assert (err.limit, err.value, err.phase) == ("max_stack", 2 * 1024 * 1024, "call")
        assert plugin.invoke("five") == 5  # the main thread has the stack


def test_the_thread_stack_size_is_known() -> None:
    assert _nesting.thread_stack_size() >= 1024 * 1024
    sizes: list[int] = []
    old = threading.stack_size(512 * 1024)
    try:
        t = threading.Thread(target=lambda: sizes.append(_nesting.thread_stack_size()))
        t.start()
        t.join()
    finally:
        threading.stack_size(old)
    assert 512 * 1024 <= sizes[0] < 1024 * 1024


# -- class 4: waits end by the deadline ------------------------------------------------------------


def test_waiting_for_a_plugin_busy_elsewhere_ends_by_the_callers_deadline(
    host: plugsafe.Host,
) -> None:
    release = threading.Event()
    entered = threading.Event()
    plugins: dict[str, plugsafe.Plugin] = {}

    @host.function
    def hold() -> None:
        entered.set()
        release.wait(10)

    @host.function
    def other() -> int:
        out: int = plugins["b"].invoke("five")
        return out

    a = host.load(
        b"""(module (import "plugsafe" "other" (func $o (result i64)))
          (func (export "go") (result i64) call $o))""",
        policy=plugsafe.Policy(allow={"other"}, timeout=0.3),
        name="a",
    )
    plugins["b"] = host.load(
        b"""(module (import "plugsafe" "hold" (func $h))
          (func (export "hold") call $h)
          (func (export "five") (result i32) i32.const 5))""",
        policy=plugsafe.Policy(allow={"hold"}),
        name="b",
    )
    busy = threading.Thread(target=plugins["b"].invoke, args=("hold",))
    busy.start()
    try:
        assert entered.wait(5)
        t0 = time.monotonic()
        with pytest.raises(plugsafe.PlugsafeError) as info:
            a.invoke("go")
        assert time.monotonic() - t0 < 3.0
        deadline = [e for e in _causes(info.value) if isinstance(e, plugsafe.DeadlineExceeded)]
        assert deadline and deadline[0].phase == "call", info.value
        assert "busy in another thread" in str(deadline[0])
    finally:
        release.set()
        busy.join()
    assert plugins["b"].invoke("five") == 5
