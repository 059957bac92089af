"""attack9: a Host whose lock is taken again by the thread that holds it must not hang.

``Host.load`` held the Host's lock (a plain ``threading.Lock``) while it closed a plugin that
loaded after the host was closed, and closing a plugin takes that lock again (the host forgets
it): a host function that closes the host from the plugin's start function, or another thread
closing the host while a plugin loads, hung the load for ever. A signal handler that closes a
plugin (documented: it closes as the interrupted call ends) while its thread is inside
``Host.load`` or ``Host.close`` hung the same way. Each case runs in a child process with a
time limit, so a hang fails the test instead of the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A plugin whose start function calls the host function ``bye``.
_PRELUDE = """
    import faulthandler, os, signal, sys, threading, weakref
    faulthandler.dump_traceback_later(20, exit=True)
    import plugsafe
    START = (b'(module (import "plugsafe" "bye" (func $bye)) (func $s (call $bye)) (start $s)'
             b' (func (export "f") (result i32) (i32.const 7)))')
    PLAIN = b'(module (func (export "f") (result i32) (i32.const 7)))'
"""


def _run(code: str) -> str:
    """Run ``code`` in a child process; its stdout (it must exit 0 within the time limit)."""
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_PRELUDE) + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_a_start_function_that_closes_its_host_fails_the_load_instead_of_hanging() -> None:
    out = _run(
        """
        host = plugsafe.Host()

        @host.function
        def bye() -> None:
            host.close()

        try:
            host.load(START, policy=plugsafe.Policy(allow={"bye"}))
        except plugsafe.PluginClosedError as exc:
            print("refused:", exc)
        """
    )
    assert "refused: this Host was closed while the plugin loaded" in out


def test_a_host_closed_by_another_thread_during_a_load_fails_the_load_instead_of_hanging() -> None:
    out = _run(
        """
        host = plugsafe.Host()
        other = host.load(PLAIN)

        @host.function
        def bye() -> None:
            closer = threading.Thread(target=host.close)
            closer.start()
            closer.join()

        try:
            host.load(START, policy=plugsafe.Policy(allow={"bye"}))
        except plugsafe.PluginClosedError as exc:
            print("refused:", exc)
        print("other closed:", other.closed)
        """
    )
    assert "refused: this Host was closed while the plugin loaded" in out
    assert "other closed: True" in out


def test_a_signal_handler_closing_a_plugin_while_its_thread_loads_one_does_not_hang() -> None:
    # The handler runs while the main thread holds the Host's lock (in load, adding the new
    # plugin to the host's set): the set's add raises the signal, so the handler runs inside.
    out = _run(
        """
        host = plugsafe.Host()
        victim = host.load(PLAIN)

        def handler(signum, frame):
            victim.close()

        signal.signal(signal.SIGUSR1, handler)

        class Noisy(weakref.WeakSet):
            armed = False

            def add(self, item):
                if self.armed:
                    signal.raise_signal(signal.SIGUSR1)  # the handler runs before add returns
                super().add(item)

        host._plugins = Noisy(host._plugins)
        host._plugins.armed = True
        plugin = host.load(PLAIN)
        print("loaded:", plugin.invoke("f"), "victim closed:", victim.closed)
        host.close()
        print("closed:", plugin.closed)
        """
    )
    assert "loaded: 7 victim closed: True" in out
    assert "closed: True" in out


def test_a_signal_handler_closing_a_plugin_while_its_thread_closes_the_host_does_not_hang() -> None:
    # Host.close lists its plugins under its lock; the handler closes one of them meanwhile.
    out = _run(
        """
        host = plugsafe.Host()
        plugins = [host.load(PLAIN) for _ in range(4)]

        def handler(signum, frame):
            plugins[2].close()

        signal.signal(signal.SIGUSR1, handler)

        class Noisy(weakref.WeakSet):
            def __iter__(self):
                for i, item in enumerate(super().__iter__()):
                    if i == 1:
                        signal.raise_signal(signal.SIGUSR1)
                    yield item

        host._plugins = Noisy(host._plugins)
        host.close()
        print("all closed:", all(p.closed for p in plugins))
        """
    )
    assert "all closed: True" in out


def test_a_signal_handler_closing_a_plugin_while_its_thread_starts_its_async_worker() -> None:
    # Plugin.close() takes the lock under which the first call_async makes the plugin's worker
    # (importing concurrent.futures, the first time): a handler closing the plugin then (as
    # a SIGTERM handler's shutdown would) waited for its own thread for ever.
    out = _run(
        """
        import asyncio
        from plugsafe import _plugin

        host = plugsafe.Host()
        plugin = host.load(PLAIN)

        def handler(signum, frame):
            plugin.close()

        signal.signal(signal.SIGUSR1, handler)
        real = _plugin.import_now

        def import_now(name):
            signal.raise_signal(signal.SIGUSR1)  # the handler runs before this returns
            return real(name)

        _plugin.import_now = import_now

        async def main():
            try:
                await plugin.invoke_async("f")
            except plugsafe.PluginClosedError as exc:
                print("refused:", exc)

        asyncio.run(main())
        print("closed:", plugin.closed)
        """
    )
    assert "closed: True" in out
    assert "refused:" in out
