"""Errors that travel: every plugsafe error pickles to the same type, message and attributes.

Each class of the public error tree (enumerated from ``plugsafe.__all__``, so a new class
cannot be forgotten) is raised here by real behaviour where plugsafe can be made to raise it,
then sent through pickle, copy and a real ``ProcessPoolExecutor`` worker.
"""

from __future__ import annotations

import copy
import multiprocessing
import pickle
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import errors_worker
import pytest

import plugsafe

from wat import ECHO, abi_module

ERROR_CLASSES = sorted(
    (
        obj
        for obj in (getattr(plugsafe, name) for name in plugsafe.__all__)
        if isinstance(obj, type) and issubclass(obj, BaseException)
    ),
    key=lambda cls: cls.__name__,
)

WASI_EXIT = """
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "quit") (call $exit (i32.const 3))))
"""
LOGS = abi_module(
    """
  (func (export "chat") (param $p i32) (param $n i32) (result i64)
    (call $log (i32.const 2) (local.get $p) (local.get $n))
    (call $ok (local.get $p) (local.get $n)))
""",
    imports='(import "plugsafe" "log" (func $log (param i32 i32 i32)))',
)


def _raised(fn: Callable[[], object]) -> plugsafe.PlugsafeError:
    try:
        fn()
    except plugsafe.PlugsafeError as exc:
        return exc
    raise AssertionError(f"{fn} raised nothing")


def _in_small_thread(host: plugsafe.Host) -> plugsafe.PlugsafeError:
    # A thread with less native stack than the Host's max_stack refuses every call.
    plugin = host.load(b'(module (func (export "five") (result i32) i32.const 5))', name="five")
    out: list[plugsafe.PlugsafeError] = []

    def run() -> None:
        out.append(_raised(lambda: plugin.invoke("five")))

    old = threading.stack_size(256 * 1024)
    try:
        t = threading.Thread(target=run)
        t.start()
        t.join()
    finally:
        threading.stack_size(old)
    return out[0]


def _host_function_error(host: plugsafe.Host) -> plugsafe.PlugsafeError:
    def lookup(key: int) -> int:
        raise KeyError(f"no key {key}")

    host.function(lookup)
    plugin = host.load(
        errors_worker.ASKS.encode(), policy=plugsafe.Policy(allow={"lookup"}), name="asker"
    )
    return _raised(lambda: plugin.call("ask", b""))


def _closed(host: plugsafe.Host) -> plugsafe.PlugsafeError:
    plugin = host.load(ECHO.encode(), name="gone")
    plugin.close()
    return _raised(lambda: plugin.call("echo", b""))


def _memory_access(host: plugsafe.Host) -> plugsafe.PlugsafeError:
    plugin = host.load(ECHO.encode(), name="mem")
    return _raised(lambda: plugin.memory.read(2**20, 4))


def examples(host: plugsafe.Host) -> dict[type[BaseException], plugsafe.PlugsafeError]:
    """One error of each class, each raised by plugsafe itself except where noted."""
    echo = host.load(ECHO.encode(), name="echo")
    fueled = host.load(ECHO.encode(), policy=plugsafe.Policy(fuel=5000), name="fueled")
    # Not 0.02 s: the load's own ABI check runs under the timeout too, and a loaded machine
    # stopped 1 of 2000 such loads at 20 ms. Any timeout serves: only the error is wanted.
    timed = host.load(ECHO.encode(), policy=plugsafe.Policy(timeout=0.1), name="timed")
    quiet = host.load(
        LOGS.encode(), policy=plugsafe.Policy(allow={"log"}, max_host_calls=0), name="quiet"
    )
    found: list[plugsafe.PlugsafeError] = [
        _raised(lambda: plugsafe.Policy.from_dict({"limits": {"fuel": -5}})),
        _raised(lambda: host.load(b"", name="empty")),
        _raised(lambda: host.load(b'(module (import "env" "f" (func)))', name="imp")),
        _raised(
            lambda: host.load(
                b'(module (func (export "plugsafe_abi_version") (result i32) i32.const 99))',
                name="future",
            )
        ),
        _raised(lambda: echo.invoke("trap")),
        _host_function_error(host),
        _raised(lambda: echo.invoke("nope")),
        _raised(lambda: echo.invoke("add", "1", 2)),
        _raised(lambda: echo.call("fail", b"it broke")),
        _memory_access(host),
        _raised(lambda: fueled.invoke("spin")),
        _raised(lambda: timed.invoke("spin")),
        _raised(lambda: host.load(ECHO.encode(), policy=plugsafe.Policy(memory=0), name="toobig")),
        _raised(lambda: quiet.call("chat", b"hi")),
        _in_small_thread(host),
        _closed(host),
        _pool_exhausted(),
        _raised(
            lambda: host.load(
                WASI_EXIT.encode(), policy=plugsafe.Policy(wasi=plugsafe.Wasi()), name="quits"
            ).invoke("quit")
        ),
        _raised(
            lambda: host.load(
                ECHO.encode(), policy=plugsafe.Policy(max_input=4), name="small"
            ).call("echo", b"too long")
        ),
    ]
    by_class = {type(e): e for e in found}
    # Base classes plugsafe never raises bare from a plugin's behaviour: made by hand.
    by_class.setdefault(plugsafe.PlugsafeError, plugsafe.PlugsafeError("base"))
    by_class.setdefault(
        plugsafe.PluginLoadError, plugsafe.PluginLoadError("plugin 'x': could not load")
    )
    by_class.setdefault(
        plugsafe.PluginCallError, plugsafe.PluginCallError("plugin 'x' in 'f': failed")
    )
    by_class.setdefault(
        plugsafe.LimitExceeded,
        plugsafe.LimitExceeded("over", limit="fuel", value=10, phase="load"),
    )
    return by_class


def _pool_exhausted() -> plugsafe.PlugsafeError:
    """PoolExhausted from a real pool of one slot (its own Host: pools are per set of limits)."""
    limits = plugsafe.Pooling(instances=1, memory_size=1024 * 1024)
    small = plugsafe.Policy(memory=1024 * 1024)
    with plugsafe.Host(pooling=limits) as pooled:
        # Kept referenced: the Host holds its plugins weakly, so a garbage collection between
        # the two loads would free the slot and the second load would find it.
        first = pooled.load(ECHO.encode(), policy=small, name="first")
        try:
            return _raised(lambda: pooled.load(ECHO.encode(), policy=small, name="second"))
        finally:
            first.close()


@pytest.fixture(scope="module")
def every_error() -> dict[type[BaseException], plugsafe.PlugsafeError]:
    with plugsafe.Host() as host:
        return examples(host)


def attributes(exc: BaseException) -> dict[str, Any]:
    """What an error carries: its public attributes, computed properties included."""
    names = {n for n in vars(exc) if not n.startswith("_")}
    names |= {
        n
        for n in dir(type(exc))
        if not n.startswith("_") and isinstance(getattr(type(exc), n), property)
    }
    return {n: getattr(exc, n) for n in sorted(names)}


def same(a: BaseException, b: BaseException) -> None:
    assert type(b) is type(a)
    assert str(b) == str(a)
    assert b.args == a.args
    assert attributes(b) == attributes(a)


def test_the_examples_cover_every_public_error_class(
    every_error: dict[type[BaseException], plugsafe.PlugsafeError],
) -> None:
    assert len(ERROR_CLASSES) >= 22
    missing = [cls.__name__ for cls in ERROR_CLASSES if cls not in every_error]
    assert not missing, f"add an example of {missing} to examples()"


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_each_error_pickles_to_the_same_error(
    every_error: dict[type[BaseException], plugsafe.PlugsafeError],
    cls: type[BaseException],
    protocol: int,
) -> None:
    err = every_error[cls]
    back = pickle.loads(pickle.dumps(err, protocol=protocol))
    same(err, back)
    # And again: what arrived can be sent on.
    same(err, pickle.loads(pickle.dumps(back, protocol=protocol)))
    same(err, copy.copy(err))
    same(err, copy.deepcopy(err))


def test_the_attributes_that_matter_arrive(
    every_error: dict[type[BaseException], plugsafe.PlugsafeError],
) -> None:
    def trip(cls: type[BaseException]) -> Any:
        return pickle.loads(pickle.dumps(every_error[cls]))

    fuel = trip(plugsafe.FuelExhausted)
    assert (fuel.limit, fuel.value, fuel.phase) == ("fuel", 5000, "call")
    late = trip(plugsafe.DeadlineExceeded)
    assert (late.limit, late.value, late.phase) == ("timeout", 0.1, "call")
    assert trip(plugsafe.MemoryLimitExceeded).phase == "load"
    assert trip(plugsafe.StackLimitExceeded).limit == "max_stack"
    imports = trip(plugsafe.ImportNotAllowedError)
    assert imports.imports == ("env.f",)
    assert imports.problems == every_error[plugsafe.ImportNotAllowedError].problems  # type: ignore[attr-defined]
    assert imports.problems[0].reason == "unknown"
    trap = trip(plugsafe.PluginTrap)
    assert trap.trap_code == "UNREACHABLE"
    assert "wasm backtrace" in trap.backtrace
    guest = trip(plugsafe.GuestError)
    assert (guest.plugin, guest.function, guest.message) == ("echo", "fail", "it broke")
    version = trip(plugsafe.AbiVersionError)
    assert (version.declared, version.supported) == (99, plugsafe.ABI_VERSION)
    policy = trip(plugsafe.PolicyError)
    assert (policy.field, policy.path) == ("fuel", "limits.fuel")
    assert trip(plugsafe.PluginExitError).exit_code == 3
    # The classes that are also builtin exceptions stay so.
    assert isinstance(trip(plugsafe.MemoryAccessError), IndexError)
    assert isinstance(trip(plugsafe.SignatureError), TypeError)
    assert isinstance(trip(plugsafe.ExportNotFoundError), LookupError)
    assert isinstance(policy, ValueError)


def test_a_host_function_errors_cause_travels(
    every_error: dict[type[BaseException], plugsafe.PlugsafeError],
) -> None:
    err = every_error[plugsafe.HostFunctionError]
    assert isinstance(err, plugsafe.HostFunctionError)
    assert (err.function, err.cause_type) == ("lookup", "KeyError")
    assert err.cause_message == "'no key 7'"
    back = pickle.loads(pickle.dumps(err))
    assert (back.function, back.cause_type, back.cause_message) == (
        "lookup",
        "KeyError",
        "'no key 7'",
    )
    # The cause itself is rebuilt when it can be.
    assert isinstance(back.__cause__, KeyError)
    assert back.__cause__.args == ("no key 7",)


def test_a_cause_that_cannot_travel_leaves_its_text() -> None:
    err = plugsafe.HostFunctionError("host function 'lookup' raised", function="lookup")
    err.__cause__ = errors_worker.StubbornError("k1", "gone")
    back = pickle.loads(pickle.dumps(err))
    assert back.__cause__ is None
    assert back.cause_type == "errors_worker.StubbornError"
    assert back.cause_message == "k1: gone"
    assert back.function == "lookup"


def test_a_cause_whose_str_raises_still_pickles() -> None:
    class Weird(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    err = plugsafe.HostFunctionError("m", function="f")
    err.__cause__ = Weird()
    back = pickle.loads(pickle.dumps(err))
    assert back.cause_message == "<Weird: str() raised>"
    assert back.cause_type is not None and back.cause_type.endswith("Weird")


class AppLimit(plugsafe.LimitExceeded):
    """An app's own subclass with a constructor of its own."""

    def __init__(self, tenant: str) -> None:
        super().__init__(f"tenant {tenant} is over quota", limit="quota", value=1, phase="call")
        self.tenant = tenant


def test_an_apps_subclass_pickles_too() -> None:
    err = AppLimit("acme")
    if sys.version_info >= (3, 11):
        err.add_note("seen at the gateway")
    else:  # no add_note before 3.11: what it does there (as the exceptiongroup backport does)
        err.__notes__ = ["seen at the gateway"]
    back = pickle.loads(pickle.dumps(err))
    same(err, back)
    assert back.__notes__ == ["seen at the gateway"]


def test_a_cause_chain_that_loops_does_not_break_pickling() -> None:
    a = plugsafe.PluginCallError("a")
    b = plugsafe.PluginCallError("b")
    a.__cause__ = b
    b.__cause__ = a
    back = pickle.loads(pickle.dumps(a))
    assert str(back) == "a"


# -- a real process pool ------------------------------------------------------------------------


@pytest.mark.slow
def test_errors_from_a_process_pool_worker_arrive_typed_and_the_pool_survives() -> None:
    # spawn: a fresh interpreter, as on macOS and Windows, so nothing is shared with this one.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        with pytest.raises(plugsafe.FuelExhausted) as fuel:
            pool.submit(errors_worker.burn_fuel).result(timeout=120)
        assert (fuel.value.limit, fuel.value.value, fuel.value.phase) == ("fuel", 10_000, "call")
        assert "'burner'" in str(fuel.value)

        with pytest.raises(plugsafe.HostFunctionError) as app:
            pool.submit(errors_worker.host_function_fails, False).result(timeout=120)
        assert app.value.function == "lookup"
        assert app.value.cause_type == "errors_worker.AppError"
        assert app.value.cause_message == "no key 7"
        assert "raised AppError: no key 7" in str(app.value)

        # An app exception pickle cannot rebuild: the error still arrives, with its text.
        with pytest.raises(plugsafe.HostFunctionError) as stubborn:
            pool.submit(errors_worker.host_function_fails, True).result(timeout=120)
        assert stubborn.value.cause_type == "errors_worker.StubbornError"
        assert stubborn.value.cause_message == "k7: not found"

        # The same worker process is still serving: the pool did not break.
        first_pid, out = pool.submit(errors_worker.echo, "still here").result(timeout=120)
        assert out == b"still here"
        assert pool.submit(errors_worker.echo, "again").result(timeout=120)[0] == first_pid
