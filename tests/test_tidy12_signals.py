"""tidy12: a signal handler's exception inside a constructor leaves no noise and no leak.

CPython runs a signal handler as a call returns (and as a Python function is entered), so a
handler that raises (SIGINT's KeyboardInterrupt, a SIGALRM timeout's exception) can interrupt
``Owned.__init__``, ``HostRecord.__init__`` or ``Store.__init__`` half way; the object's
``__del__`` then ran on what was built and printed ``Exception ignored in: ... AttributeError:
'Owned' object has no attribute '_pid'`` (or ``'raw'``, ``'leak'``, ``'ptr'``): in 6 s of SIGALRM
every 0.3 ms, ~140 such reports. Worse, the ``Owned`` whose ``_pid`` was missing held its pointer
and never freed it (its close failed on the missing attribute), and one whose ``close()`` was
interrupted between forgetting its pointer and freeing it lost the pointer too.

The handler's own exception, raised inside a finalizer, is still reported (CPython cannot pass
it on; ``Store.__del__`` re-raises it on purpose, once its work is done): only those may show.
Two windows no Python code can close are left (see tidy12's report): an exception raised as a
``__del__`` is entered (its object is never freed) and one raised as the C call that made a
pointer returns, before anything holds it. Under this storm, with a pooling allocator of 16
slots, they lost 1-3 slots in 4 s.
"""

from __future__ import annotations

import dis
import gc
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from types import CodeType, FrameType
from typing import Any

import pytest

from plugsafe._runtime._backend import HostRecord
from plugsafe._runtime._forksafe import Owned

from helpers import signal_storm_output

# Opcodes after which CPython runs pending signal handlers (3.11+: a call returned, a loop's
# backward jump); a function's entry (RESUME) is the other such point.
_WINDOWS = {dis.opmap[n] for n in ("CALL", "CALL_FUNCTION_EX", "JUMP_BACKWARD") if n in dis.opmap}


@contextmanager
def _handler_raises(k: int, codes: set[CodeType]) -> Iterator[list[int]]:
    """Raise KeyboardInterrupt, as a signal handler would, at the ``k``-th point (1-based) where
    CPython may run one inside a function of ``codes`` (right after a call returns or a loop
    jumps back; not on entry: see the tests). Yields [points passed]."""
    seen = [0]
    previous: dict[int, int | None] = {}

    def local(frame: FrameType, event: str, _arg: object) -> Any:
        if event == "opcode":
            before = previous.get(id(frame))
            previous[id(frame)] = frame.f_code.co_code[frame.f_lasti]
            if before in _WINDOWS:
                seen[0] += 1
                if seen[0] == k:
                    raise KeyboardInterrupt  # (a trace function's exception also unsets it)
        return local

    def calls(frame: FrameType, event: str, _arg: object) -> Any:
        if event == "call" and frame.f_code in codes:
            previous[id(frame)] = None
            frame.f_trace_opcodes = True
            return local
        return None

    old = sys.gettrace()
    sys.settrace(calls)
    try:
        yield seen
    finally:
        sys.settrace(old)


@contextmanager
def _unraisable() -> Iterator[list[BaseException | None]]:
    """The exceptions finalizers could not raise (CPython reports them as "Exception
    ignored")."""
    got: list[BaseException | None] = []
    old = sys.unraisablehook
    sys.unraisablehook = lambda u: got.append(u.exc_value)
    try:
        yield got
    finally:
        sys.unraisablehook = old


def _each_point(run: Callable[[int], list[int]]) -> int:
    """Call ``run(k)`` for k = 1, 2, ... until it passed fewer than k points; how many."""
    k = 0
    while True:
        k += 1
        if run(k)[0] < k:
            return k - 1


# The points above are those of CPython 3.11 and 3.12 (CALL, JUMP_BACKWARD): 3.10 runs handlers
# after any instruction, and 3.13's opcodes, as a trace function sees them, are not this model's
# (the tests then find no point at all); the storm test below covers the code on every version.
_MODEL = pytest.mark.skipif(
    not (3, 11) <= sys.version_info < (3, 13),
    reason="the model of where a signal handler runs is CPython 3.11-3.12's",
)


_PTR = "a pointer"  # (Owned only asks whether its pointer is true)
_OWNED = {Owned.__init__.__code__, Owned.close.__code__, Owned.__del__.__code__}


@_MODEL
@pytest.mark.parametrize("closed", [True, False], ids=["closed", "collected"])
def test_an_owned_interrupted_anywhere_frees_its_pointer_once_and_quietly(closed: bool) -> None:
    def run(k: int) -> list[int]:
        freed: list[object] = []
        released: list[int] = []
        made = None
        with _unraisable() as ignored:
            with _handler_raises(k, _OWNED) as seen:
                try:
                    made = Owned(_PTR, freed.append)
                    made.also = lambda: released.append(1)
                    if closed:
                        made.close()
                    made = None  # (collected here: __del__)
                except KeyboardInterrupt:
                    made = None
            gc.collect()
        assert all(type(e) is KeyboardInterrupt for e in ignored), (k, ignored)
        assert freed == [_PTR], k  # freed: exactly once, even by an interrupted __init__
        assert len(released) <= 1, k
        return seen

    assert _each_point(run) >= 3


@_MODEL
def test_an_owned_made_whole_releases_also_once_whatever_interrupts_its_close() -> None:
    def run(k: int) -> list[int]:
        freed: list[object] = []
        released: list[int] = []
        owned = Owned(_PTR, freed.append)
        owned.also = lambda: released.append(1)
        with _unraisable() as ignored:
            with _handler_raises(k, _OWNED) as seen:
                with suppress(KeyboardInterrupt):
                    owned.close()
                del owned
            gc.collect()
        assert all(type(e) is KeyboardInterrupt for e in ignored), (k, ignored)
        assert (freed, released) == ([_PTR], [1]), k
        return seen

    assert _each_point(run) >= 2


_RECORD = {HostRecord.__init__.__code__, HostRecord.__del__.__code__}


@_MODEL
def test_a_host_record_interrupted_anywhere_frees_each_spare_at_most_once_and_quietly() -> None:
    # Spares 0, 2 and 3 are still its own (1 went to wasmtime); an interrupted __del__ may leave
    # the one spare it was freeing unfreed (never freed twice), and goes on with the others.
    def run(k: int) -> list[int]:
        freed: list[object] = []
        with _unraisable() as ignored:
            with _handler_raises(k, _RECORD) as seen:
                try:
                    record = HostRecord(freed.append)
                    record.spares = ["s0", "s1", "s2", "s3"]
                    record.used = {1}
                except KeyboardInterrupt:
                    pass
                record = None  # type: ignore[assignment]
            gc.collect()
        assert all(type(e) is KeyboardInterrupt for e in ignored), (k, ignored)
        assert len(freed) == len(set(freed)) and "s1" not in freed, (k, freed)
        assert len(freed) >= 2 or len(ignored) == 0, (k, freed)  # (none: built interrupted)
        return seen

    assert _each_point(run) >= 3


# (A scenario for helpers.signal_storm: ``storm_loop``, ``report`` are its.)
_STORM = """
    import gc
    import plugsafe
    from plugsafe import Policy, Wasi
    from plugsafe._runtime import Instance
    from plugsafe._runtime._store import Store
    from wat import ECHO, WASI_WRITER, abi_module

    HOOKED = abi_module(
        '(func (export "h") (param i32) (result i32) (call $hook (local.get 0)))',
        imports='(import "plugsafe" "hook" (func $hook (param i32) (result i32)))')
    host = plugsafe.Host()

    @host.function
    def hook(x: int) -> int:
        return x

    def live(cls):
        gc.collect()
        return sum(1 for o in gc.get_objects() if type(o) is cls)

    def step(n):
        # Each load makes a Linker (an Owned, a HostRecord) unless one is free to reuse, an
        # instance-pre, stores; a WASI call a configuration (an Owned) per instance.
        k = n % 3
        if k == 0:
            with host.load(HOOKED.encode(), policy=Policy(allow={"hook"})) as p:
                assert p.invoke("h", 5) == 5
        elif k == 1:
            policy = Policy(wasi=Wasi(), fresh_instance=True)
            with host.load(WASI_WRITER, policy=policy) as p:
                assert p.invoke("write") == 0
        else:
            with host.load(ECHO.encode(), policy=Policy(fresh_instance=True)) as p:
                assert p.call("echo", b"x") == b"x"

    for n in range(3):
        step(n)
    before = (live(Store), live(Instance))
    got = storm_loop(step)
    after = (live(Store), live(Instance))
    report(**got, before=before, after=after)
"""


@pytest.mark.skipif(
    sys.version_info < (3, 11), reason="CPython 3.10 runs signal handlers after any instruction"
)
def test_a_signal_storm_over_loads_prints_only_the_handlers_own_exception() -> None:
    got, stderr = signal_storm_output(
        _STORM, seconds=4.0, interval=0.0003, at_least={"interrupts": 100, "calls": 30}
    )
    assert got["escaped"] == [], got
    assert got["after"] == got["before"], got  # no Store, no Instance left alive
    reports = stderr.split("Exception ignored")[1:]
    others = [r for r in reports if not r.rstrip().endswith("KeyboardInterrupt:")]
    assert others == [], "".join(others[:3])
