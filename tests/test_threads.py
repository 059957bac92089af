"""Sharing plugins between threads: every caller gets its own answer and its own exception."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import plugsafe
from plugsafe import Policy

from wat import abi_module

# "work" calls the host function "check" with its input; the host answers with the input
# reversed, or raises if the input starts with "bad". The plugin returns what the host gave.
CHECKED = abi_module(
    """
  (func (export "work") (param $p i32) (param $n i32) (result i64)
    (call $check (local.get $p) (local.get $n)))
  (func (export "trap_if_odd") (param $p i32) (param $n i32) (result i64)
    (if (i32.and (local.get $n) (i32.const 1)) (then unreachable))
    (call $ok (local.get $p) (local.get $n)))
""",
    imports='(import "plugsafe" "check" (func $check (param i32 i32) (result i64)))',
)


class Bad(Exception):
    """What the host function raises, carrying the caller's own input."""


def _host() -> plugsafe.Host:
    h = plugsafe.Host()

    @h.function
    def check(data: bytes) -> bytes:
        if data.startswith(b"bad"):
            raise Bad(data.decode())
        return data[::-1]

    return h


def test_one_plugin_shared_by_8_threads_with_failures_mixed_in() -> None:
    with _host() as host:
        # A call's timeout covers its wait for the plugin: with eight threads taking turns on
        # one lock (which is not fair) on a loaded machine, a waiter was passed over for the
        # whole default second (DeadlineExceeded, "all of it spent waiting"). This test is
        # about whose answer and error each thread gets, not time: a timeout far off.
        plugin = host.load(
            CHECKED.encode(), policy=Policy(allow={"check"}, timeout=30.0), name="shared"
        )

        def job(i: int) -> None:
            tag = f"{i:05d}-{threading.get_ident()}"
            if i % 3 == 0:
                with pytest.raises(plugsafe.HostFunctionError) as info:
                    plugin.call("work", f"bad{tag}")
                assert isinstance(info.value.__cause__, Bad)
                assert str(info.value.__cause__) == f"bad{tag}"  # its own exception
            elif i % 3 == 1:
                with pytest.raises(plugsafe.PluginTrap) as trap:
                    plugin.call("trap_if_odd", "odd")
                assert trap.value.trap_code == "UNREACHABLE"
            else:
                assert plugin.call("work", tag) == tag[::-1].encode()  # its own answer

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(job, range(2000)))


def test_different_plugins_in_threads_keep_their_own_host_exceptions() -> None:
    # wasmtime-py keeps host exceptions in a module-global; plugsafe must not mix them up
    # between plugins whose wasm runs at the same time.
    with _host() as host:
        plugins = [
            host.load(CHECKED.encode(), policy=Policy(allow={"check"}), name=f"p{i}")
            for i in range(4)
        ]

        def job(i: int) -> None:
            plugin = plugins[i % 4]
            tag = f"{plugin.name}-{i}"
            if i % 2:
                with pytest.raises(plugsafe.HostFunctionError) as info:
                    plugin.call("work", f"bad{tag}")
                assert str(info.value.__cause__) == f"bad{tag}"
            else:
                assert plugin.call("work", tag) == tag[::-1].encode()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(job, range(4000)))


SPIN = """(module (func (export "spin") (loop $l (br $l)))
  (func (export "one") (result i32) i32.const 1))"""


def _spin_in_thread(
    plugin: plugsafe.Plugin,
) -> tuple[threading.Thread, list[BaseException]]:
    """Start ``plugin.invoke("spin")`` on a thread; return it once the call is under way, and
    the list that will hold what the call raised."""
    started = threading.Event()
    raised: list[BaseException] = []

    def spin() -> None:
        started.set()
        try:
            plugin.invoke("spin")
        except BaseException as exc:
            raised.append(exc)

    t = threading.Thread(target=spin)
    t.start()
    started.wait()
    return t, raised


def test_wasm_runs_without_holding_the_gil() -> None:
    # While one plugin spins in wasm, this thread keeps running Python and another plugin.
    with plugsafe.Host() as host:
        spinner = host.load(SPIN.encode(), policy=Policy(timeout=2.0), name="spinner")
        other = host.load(SPIN.encode(), name="other")
        t, outcome = _spin_in_thread(spinner)
        total = sum(other.invoke("one") for _ in range(200))
        assert total == 200
        assert t.is_alive()  # the 200 calls finished while the spinner was still in wasm
        t.join()
        assert isinstance(outcome[0], plugsafe.DeadlineExceeded)


def test_close_waits_for_a_running_call() -> None:
    with plugsafe.Host() as host:
        spinner = host.load(SPIN.encode(), policy=Policy(timeout=0.3))
        t, errors = _spin_in_thread(spinner)
        spinner.close()
        t.join()
        assert spinner.closed
        assert len(errors) == 1
        assert isinstance(errors[0], (plugsafe.DeadlineExceeded, plugsafe.PluginClosedError))
