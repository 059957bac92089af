"""Run attack code in a child Python process, so a crash or a hang fails one test, not the suite.

The child gets ``plugsafe``, the WAT helpers of ``tests/wat.py`` and ``outcome(fn)``, which runs
``fn`` and prints one line saying how it ended:

- ``OK <repr of the result>``
- ``TYPED <error class> phase=<phase> limit=<limit>`` for a PlugsafeError
- ``UNTYPED <exception class>`` for anything else

A child that aborts (SIGABRT, SIGSEGV, SIGILL) has a negative exit code; one that hangs is killed
after ``timeout`` seconds and reported with ``timed_out``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent

PRELUDE = f"""
import sys, os, threading, time
sys.path.insert(0, {str(TESTS)!r})
sys.path.insert(0, {str(TESTS / "security")!r})
import plugsafe
from wat import abi_module, ECHO, ABI_PRELUDE

_said = threading.Lock()
# A fork child starts with a fresh lock (another thread may hold this one at the fork).
os.register_at_fork(after_in_child=lambda: globals().__setitem__("_said", threading.Lock()))

def _say(*parts):
    # One whole line per outcome, even when several threads report at once.
    with _said:
        sys.stdout.write(" ".join(parts) + "\\n")
        sys.stdout.flush()

def outcome(fn, *args, **kwargs):
    try:
        r = fn(*args, **kwargs)
    except plugsafe.PlugsafeError as e:
        _say("TYPED", type(e).__name__, "phase=%s" % getattr(e, "phase", None),
             "limit=%s" % getattr(e, "limit", None))
        return e
    except BaseException as e:
        _say("UNTYPED", type(e).__name__, str(e)[:200].replace("\\n", " "))
        return e
    _say("OK", repr(r)[:200])
    return r
"""


@dataclasses.dataclass
class Child:
    """How a child process ended."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def outcomes(self) -> list[str]:
        """The lines printed by ``outcome``, in order."""
        return [ln for ln in self.lines if ln.split(" ", 1)[0] in ("OK", "TYPED", "UNTYPED")]

    def describe(self) -> str:
        how = "timed out" if self.timed_out else f"exit code {self.returncode}"
        return (
            f"child {how} after {self.seconds:.1f} s\n"
            f"stdout:\n{self.stdout}\nstderr:\n{self.stderr[-3000:]}"
        )

    def assert_clean(self) -> None:
        """The child ended by itself with exit code 0 and printed no untyped error."""
        assert not self.timed_out and self.returncode == 0, self.describe()
        assert not any(ln.startswith("UNTYPED") for ln in self.lines), self.describe()


class Pending:
    """A child process started by :func:`start_child`; :meth:`finish` waits for it."""

    def __init__(self, code: str, env: dict[str, str] | None = None) -> None:
        full = PRELUDE + textwrap.dedent(code)
        child_env = dict(os.environ)
        child_env.setdefault("PYTHONFAULTHANDLER", "1")
        if env:
            child_env.update(env)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", full],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env,
            start_new_session=True,  # so a hung child and whatever it forked die together
        )

    def finish(self, timeout: float) -> Child:
        """Wait up to ``timeout`` seconds from the child's start, then kill it if still running."""
        proc = self.proc
        left = max(timeout - (time.monotonic() - self.started), 0.1)
        try:
            out, err = proc.communicate(timeout=left)
            timed_out = False
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
            out, err = proc.communicate()
            timed_out = True
        return Child(proc.returncode, out, err, timed_out, time.monotonic() - self.started)


def start_child(code: str, env: dict[str, str] | None = None) -> Pending:
    """Start ``PRELUDE + code`` in a fresh interpreter without waiting (run many at once)."""
    return Pending(code, env)


def run_child(code: str, timeout: float = 60.0, env: dict[str, str] | None = None) -> Child:
    """Run ``PRELUDE + code`` in a fresh interpreter; never raises for a crash or a hang."""
    return start_child(code, env).finish(timeout)
