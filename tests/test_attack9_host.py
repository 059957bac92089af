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

import textwrap

import pytest

from helpers import run_ok

# A plugin whose start function calls the host function ``bye``.
_PRELUDE = """
    import faulthandler, os, signal, sys, threading, weakref
    faulthandler.dump_traceback_later(20, exit=True)
    import plugsafe
    START = (b'(module (import "plugsafe" "bye" (func $bye)) (func $s (call $bye)) (start $s)'
             b' (func (export "f") (result i32) (i32.const 7)))')
    PLAIN = b'(module (func (export "f") (result i32) (i32.const 7)))'

    def close_on_sigusr1(plugin):  # as a SIGTERM handler's shutdown would
        signal.signal(signal.SIGUSR1, lambda signum, frame: plugin.close())
"""


def _run(code: str) -> str:
    """Run ``code`` in a child process; its stdout (it must exit 0 within the time limit)."""
    script = textwrap.dedent(_PRELUDE) + textwrap.dedent(code)
    return run_ok(script, timeout=120, env={"PYTHONFAULTHANDLER": "1"})


# How the start function's host function closes the host: itself, or by another thread (whose
# close waits for the Host's lock the load holds).
_CLOSERS = {
    "itself": "host.close()",
    "another thread": (
        "closer = threading.Thread(target=host.close); closer.start(); closer.join()"
    ),
}


@pytest.mark.parametrize("closer", list(_CLOSERS))
def test_a_host_closed_while_a_start_function_runs_fails_the_load_instead_of_hanging(
    closer: str,
) -> None:
    out = _run(
        f"""
        host = plugsafe.Host()
        other = host.load(PLAIN)

        @host.function
        def bye() -> None:
            {_CLOSERS[closer]}

        try:
            host.load(START, policy=plugsafe.Policy(allow={{"bye"}}))
        except plugsafe.PluginClosedError as exc:
            print("refused:", exc)
        print("other closed:", other.closed)
        """
    )
    assert "refused: this Host was closed while the plugin loaded" in out
    assert "other closed: True" in out


@pytest.mark.parametrize("during", ["load", "close"])
def test_a_signal_handler_closing_a_plugin_while_its_thread_holds_the_host_lock_does_not_hang(
    during: str,
) -> None:
    # The handler runs while the main thread holds the Host's lock: in load, adding the new
    # plugin to the host's set (the set's add raises the signal, so the handler runs inside),
    # or in close, listing its plugins (the listing raises it); the handler closes a plugin,
    # which takes that lock to leave the host.
    out = _run(
        f"""
        host = plugsafe.Host()
        plugins = [host.load(PLAIN) for _ in range(4)]
        close_on_sigusr1(plugins[2])
        DURING = {during!r}

        class Noisy(weakref.WeakSet):
            armed = False  # (not while the set is copied in)

            def add(self, item):
                if self.armed and DURING == "load":
                    signal.raise_signal(signal.SIGUSR1)  # the handler runs before add returns
                super().add(item)

            def __iter__(self):
                for i, item in enumerate(super().__iter__()):
                    if i == 1 and DURING == "close":
                        signal.raise_signal(signal.SIGUSR1)
                    yield item

        host._plugins = Noisy(host._plugins)
        host._plugins.armed = True
        if DURING == "load":
            plugin = host.load(PLAIN)
            print("loaded:", plugin.invoke("f"), "victim closed:", plugins[2].closed)
            plugins.append(plugin)
        host.close()
        print("all closed:", all(p.closed for p in plugins))
        """
    )
    if during == "load":
        assert "loaded: 7 victim closed: True" in out
    assert "all closed: True" in out


def test_a_signal_handler_closing_a_plugin_while_its_thread_starts_its_async_worker() -> None:
    # Plugin.close() takes the lock under which the first call_async makes the plugin's worker
    # (importing concurrent.futures, the first time): a handler closing the plugin then (as
    # a SIGTERM handler's shutdown would) waited for its own thread for ever.
    out = _run(
        """
        import asyncio
        from plugsafe import _worker

        host = plugsafe.Host()
        plugin = host.load(PLAIN)

        close_on_sigusr1(plugin)
        real = _worker.import_now

        def import_now(name):
            signal.raise_signal(signal.SIGUSR1)  # the handler runs before this returns
            return real(name)

        _worker.import_now = import_now

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
