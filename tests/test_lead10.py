"""The lead's checks of session 10's interrupt changes: the locks an interrupt takes on the
caller's thread are re-entrant, so a signal handler that cancels a call (or a task) while the
main thread is inside one of them does not hang it (attack9's class of hang)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import plugsafe
from plugsafe._callpath import CallToken
from plugsafe._runtime import _ticker

from wat import ECHO


def _finishes(work: Callable[[], None], within: float = 10.0) -> bool:
    done = threading.Event()

    def run() -> None:
        work()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(within)


def test_a_bump_requested_while_its_lock_is_held_by_the_same_thread_does_not_hang() -> None:
    with plugsafe.Host() as host:
        host.load(ECHO.encode(), policy=plugsafe.Policy(timeout=30))
        ticker = next(t for t in _ticker._TICKERS if t._ptr)

        def nested() -> None:
            with ticker._bumper.lock():  # as if a signal handler ran inside bump()
                ticker.bump(5_000)

        assert _finishes(nested)


def test_a_cancel_while_the_resenders_lock_is_held_by_the_same_thread_does_not_hang() -> None:
    CallToken._insist(CallToken())  # (the process's re-sender state exists from here)

    def nested() -> None:
        with CallToken._resender.lock():  # as if a signal handler ran inside _insist()
            CallToken._insist(CallToken())

    assert _finishes(nested)
