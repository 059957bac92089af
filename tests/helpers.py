"""Set-ups the attack tests share: a script in a fresh interpreter, and the re-entry plugin.

A scenario that may abort the process (a Rust panic, a SIGSEGV) or hang runs in a child
Python, so it fails one test rather than the run. ``run_script`` starts it the one way the
tests did each in a copy of their own (``tests/`` on its path, so ``from wat import ...``
works; no bytecode written), and ``run_ok`` also asserts it exited 0 and returns its stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "REENTRY_PLUGIN",
    "TESTS",
    "last_json",
    "run_ok",
    "run_script",
    "signal_storm",
    "signal_storm_output",
]

TESTS = Path(__file__).resolve().parent


def run_script(
    script: str,
    *,
    timeout: float = 180,
    env: dict[str, str] | None = None,
    data_limit: int | None = None,
    hang: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (dedented) with ``python -c`` in a fresh interpreter.

    Args:
        timeout: seconds before the child is killed.
        env: variables set on top of this process's environment.
        data_limit: the child's ``RLIMIT_DATA`` in bytes, set before anything else runs (it
            counts what malloc and private writable mappings take, not wasmtime's reserved,
            inaccessible address space: a runaway allocation fails instead of bloating).
        hang: if given, a timeout fails the test with this message rather than raising.
    """
    code = textwrap.dedent(script)
    if data_limit is not None:
        code = (
            "import resource\n"
            f"resource.setrlimit(resource.RLIMIT_DATA, ({data_limit}, {data_limit}))\n" + code
        )
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    try:
        return subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": path, **(env or {})},
        )
    except subprocess.TimeoutExpired:
        if hang is None:
            raise
        pytest.fail(hang)


def run_ok(script: str, **kwargs: object) -> str:
    """``run_script``, asserting that the child exited 0; its stdout."""
    done = run_script(script, **kwargs)  # type: ignore[arg-type]
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    return done.stdout


def last_json(stdout: str) -> dict[str, object]:
    """The JSON object a child printed on its last line."""
    report = json.loads(stdout.strip().splitlines()[-1])
    assert isinstance(report, dict)
    return report


# What every signal storm's scenario starts with (see signal_storm).
_STORM_PRELUDE = """
import faulthandler, json, os, signal, sys, threading, time
faulthandler.dump_traceback_later(100, exit=True)

armed = [False]


def _handler(signum, frame):
    if armed[0]:
        armed[0] = False
        raise KeyboardInterrupt


def storm_start():
    signal.signal(signal.SIGALRM, _handler)
    signal.setitimer(signal.ITIMER_REAL, INTERVAL, INTERVAL)


def storm_stop():
    signal.setitimer(signal.ITIMER_REAL, 0, 0)


# Whether a storm loop that began at end - SECONDS goes on, given what it counted so far: for
# SECONDS, and then, while a count named in AT_LEAST is not yet above its bound, up to four times
# longer. On a loaded machine a call takes longer, so fewer of them fit between two signals (in
# CI 69 calls in 4 s where a quiet run counts 1,000): the storm blows until it has tried enough.
def storm_going(end, **counts):
    now = time.monotonic()
    if now < end:
        return True
    return now < end + 4 * SECONDS and any(counts[k] <= v for k, v in AT_LEAST.items())


# Blow the storm for SECONDS while step(n) runs over and over (n = 1, 2, ...), the handler
# armed around each step; then stop it. A step that returns is a call; a KeyboardInterrupt (the
# handler's) an interrupt, after which after_interrupt() runs, unarmed, and stops the loop if it
# returns true; an exception of `tolerated` is counted, the loop stopping after max_tolerated of
# them; anything else (a wrong result, an undocumented error) is kept in escaped and stops the
# loop. Returns dict(interrupts=, calls=, escaped=, tolerated=).
def storm_loop(step, *, tolerated=(), max_tolerated=50, after_interrupt=None):
    interrupts, calls, escaped, counted, n = 0, 0, [], 0, 0
    storm_start()
    end = time.monotonic() + SECONDS
    while storm_going(end, interrupts=interrupts, calls=calls):
        n += 1
        try:
            armed[0] = True
            step(n)
            armed[0] = False
            calls += 1
        except KeyboardInterrupt:
            armed[0] = False
            interrupts += 1
            if after_interrupt is not None and after_interrupt():
                break
        except tolerated:
            armed[0] = False
            counted += 1
            if counted > max_tolerated:
                break
        except BaseException as exc:
            armed[0] = False
            escaped.append(repr(exc))
            break
    storm_stop()
    armed[0] = False
    return dict(interrupts=interrupts, calls=calls, escaped=escaped, tolerated=counted)


def report(**fields):
    print(json.dumps(fields), flush=True)
    os._exit(0)  # (a hung thread of the scenario's must not hold up the exit)
"""


def signal_storm(
    scenario: str,
    *,
    seconds: float,
    interval: float = 0.0002,
    timeout: float = 180,
    at_least: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Run ``scenario`` (dedented) in a fresh interpreter while SIGALRM fires every
    ``interval`` seconds, and return the JSON object it reports.

    The scenario finds ``SECONDS``, ``INTERVAL`` and ``AT_LEAST`` set, and the prelude's names:
    its loop is ``storm_loop(step, ...)`` (the storm around ``step(n)`` called over and over,
    what it raised counted: see the prelude), or one of its own, ``while storm_going(end,
    **counts)``, that sets ``armed[0] = True`` where a handler may raise (the handler raises
    KeyboardInterrupt at the next signal and disarms) between ``storm_start()`` and
    ``storm_stop()``; it ends with ``report(**fields)`` (prints them as JSON and exits 0). A
    hang dumps the tracebacks after 100 s (faulthandler) and fails.

    ``at_least`` names counts the report must have above a bound (the storm did what the test
    is about that many times): the loop goes on past ``seconds`` (up to five times as long)
    until they are, and this asserts that they are.
    """
    return signal_storm_output(
        scenario, seconds=seconds, interval=interval, timeout=timeout, at_least=at_least
    )[0]


def signal_storm_output(
    scenario: str,
    *,
    seconds: float,
    interval: float = 0.0002,
    timeout: float = 180,
    at_least: dict[str, int] | None = None,
) -> tuple[dict[str, Any], str]:
    """``signal_storm``, and what the child wrote to stderr."""
    bounds = dict(at_least or {})
    code = (
        f"SECONDS = {seconds!r}\nINTERVAL = {interval!r}\nAT_LEAST = {bounds!r}\n"
        + _STORM_PRELUDE
        + textwrap.dedent(scenario)
    )
    done = run_script(code, timeout=timeout, env={"PYTHONFAULTHANDLER": "1"})
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(report, dict)
    for name, bound in bounds.items():
        assert report[name] > bound, (name, report)
    return report, done.stderr


# A script's set-up of a plugin to re-enter (``{imports!r}``: with or without a host function
# import, formatted in by the test; use ``{{``/``}}`` for braces after it): ``p``, whose
# ``busy(x)`` spins ~30 M iterations then returns x, ``quiet()`` returns 7 and ``one(x)``
# returns x; ``busy`` and ``one`` have each been called twice, so the next call of either
# takes the short path with the plugin's lock and no owner (attack6, attack7).
REENTRY_PLUGIN = """
import functools, json, signal, sys
import plugsafe
from wat import abi_module
body = '''
  (func (export "busy") (param i32) (result i32) (local $i i32)
    (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 30000000)))) (local.get 0))
  (func (export "quiet") (result i32) (i32.const 7))
  (func (export "one") (param i32) (result i32) (local.get 0))'''
imports = {imports!r}
wat = abi_module(body, imports='(import "plugsafe" "hook" (func (param i32) (result i32)))'
                 ) if imports else "(module " + body + ")"
host = plugsafe.Host()
@host.function
def hook(x: int) -> int:
    return x
p = host.load(wat.encode(), policy=plugsafe.Policy(allow={{"hook"}} if imports else set(),
                                                  timeout=None))
for _ in range(2):  # the short path, aimed
    p.invoke("busy", 1)
    p.invoke("one", 1)
"""
