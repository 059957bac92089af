"""attack2: hostile components against plugsafe's lifting of their results.

wasmtime checks every pointer, length and UTF-8 string a component returns (tested here too),
but once it has lifted a result, plugsafe turns it into Python values with no bound: a few bytes
of guest memory per element become a 32-byte value struct in wasmtime and a Python object each,
and none of it counts against the policy's ``max_output`` or its ``timeout``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import component_wat
import pytest

import plugsafe
from plugsafe import Policy

from child import run_child

# One core function returns (ptr=0, len=n) after growing memory to hold n bytes: lifted as a
# list<u8>, a list of one-byte records, or a string (the bytes are zero: valid UTF-8). Another
# returns any (ptr, len) the caller asks for; a third returns invalid UTF-8 as a string.
HOSTILE = r"""(component
  (core module $m
    (memory (export "memory") 1)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 8192))
    (func (export "big") (param $n i32) (result i32)
      (drop (memory.grow (i32.add (i32.shr_u (local.get $n) (i32.const 16)) (i32.const 1))))
      (i32.store (i32.const 64) (i32.const 0))
      (i32.store (i32.const 68) (local.get $n))
      (i32.const 64))
    (func (export "any") (param $p i32) (param $n i32) (result i32)
      (i32.store (i32.const 64) (local.get $p))
      (i32.store (i32.const 68) (local.get $n))
      (i32.const 64))
    (func (export "badutf") (result i32)
      (i32.store (i32.const 0) (i32.const 0xfffefdfc))
      (i32.store (i32.const 64) (i32.const 0))
      (i32.store (i32.const 68) (i32.const 4))
      (i32.const 64)))
  (core instance $i (instantiate $m))
  (type $r-def (record (field "a" u8)))
  (export $r "r" (type $r-def))
  {funcs}
)"""
_FUNCS = [
    ("big", '(param "n" u32) (result (list u8))', "bytes"),
    ("big", '(param "n" u32) (result (list $r))', "records"),
    ("big", '(param "n" u32) (result string)', "text"),
    ("any", '(param "p" u32) (param "n" u32) (result (list u8))', "any-bytes"),
    ("any", '(param "p" u32) (param "n" u32) (result string)', "any-text"),
    ("any", '(param "p" u32) (param "n" u32) (result (list u64))', "any-u64s"),
    ("badutf", "(result string)", "bad-utf8"),
]
WAT = HOSTILE.format(
    funcs="\n".join(
        f'(func ${name} {sig} (canon lift (core func $i "{core}") '
        '(memory (core memory $i "memory")) (realloc (core func $i "realloc"))))'
        f'(export "{name}" (func ${name}))'
        for core, sig, name in _FUNCS
    )
)


@pytest.fixture(scope="module")
def chost() -> Iterator[plugsafe.Host]:
    with plugsafe.Host() as h:
        yield h


@pytest.mark.parametrize(
    ("function", "args"),
    [
        ("any-bytes", (0xFFFF_FFF0, 100)),
        ("any-bytes", (0, 0xFFFF_FFFF)),
        ("any-bytes", (65_000, 1000)),
        ("any-text", (0xFFFF_FFFF, 2)),
        ("any-u64s", (8, 0x2000_0001)),  # 8 * len wraps 32 bits to 8
        ("any-u64s", (8, 0x4000_0000)),
        ("bad-utf8", ()),
    ],
)
def test_results_outside_memory_or_not_utf8_are_traps(
    chost: plugsafe.Host, function: str, args: tuple[int, ...]
) -> None:
    """Attack: a list/string result pointing outside memory, wrapping 32 bits, or invalid
    UTF-8: a typed trap, and the next call is served."""
    with chost.load(WAT.encode(), name="hostile") as p:
        with pytest.raises(plugsafe.PluginTrap):
            p.invoke(function, *args)
        assert p.invoke("bytes", 3) == b"\0\0\0"


@pytest.mark.parametrize("function", ["bytes", "records", "text"])
def test_a_lifted_result_over_max_output_is_refused(chost: plugsafe.Host, function: str) -> None:
    """Finding: ``max_output`` bounds a core plugin's output, but a component's result of any
    size is lifted into Python objects. 20,000 guest bytes here, with max_output=1000: the
    lifted result must be refused with a typed error (an AbiError, as for a core plugin's
    output) before plugsafe builds Python values for it."""
    p = chost.load(WAT.encode(), policy=Policy(max_output=1000), name="big")
    with p, pytest.raises(plugsafe.PlugsafeError):
        p.invoke(function, 20_000)


def test_max_output_counts_lifted_values_not_guest_bytes(chost: plugsafe.Host) -> None:
    """Finding (the bound a fix needs): 20,000 one-byte records are 20,000 guest bytes, under
    this max_output of 100,000, but over 640,000 bytes of wasmtime value structs alone before
    plugsafe makes a Record object of each; counting guest bytes would let a plugin make the
    host hold ~700x its output cap."""
    p = chost.load(WAT.encode(), policy=Policy(max_output=100_000), name="records")
    with p, pytest.raises(plugsafe.AbiError):
        p.invoke("records", 20_000)


def test_lifting_a_result_is_within_the_calls_timeout(chost: plugsafe.Host) -> None:
    """Finding: the timeout covers the wasm call, not plugsafe's lifting of its result, which
    costs ~14 us a record here (~14 s for 1 MB of one-byte records): a plugin with a 1 s
    timeout held the calling thread for 14 s. 50,000 records take ~20x the timeout here;
    a lift that checks the deadline stops with DeadlineExceeded."""
    p = chost.load(WAT.encode(), policy=Policy(timeout=0.05, fuel=None), name="slow-lift")
    with p, pytest.raises(plugsafe.DeadlineExceeded):
        p.invoke("records", 50_000)


def test_a_components_first_timed_call_is_not_late() -> None:
    """Finding: in a fresh process (or after the ticker went idle) a component call with a
    2 s timeout spinning forever stopped after ~4 s (0.3 s: ~0.6 s); later calls were on
    time. Core instances arm through ``Ticker.deadline(now, ticks)``, which accounts for the
    delayed first tick; the component path sets ``_ticks`` as such. Run in a child, where no
    other call has armed the ticker; the bound has over a second of margin."""
    child = run_child(
        """
        from component_wat import WORLD
        with plugsafe.Host() as host:
            comp = host.load(WORLD.encode(), policy=plugsafe.Policy(timeout=2.0, fuel=None))
            t = time.perf_counter()
            outcome(comp.invoke, "spin")
            print("ELAPSED", time.perf_counter() - t)
        """,
        timeout=60,
    )
    child.assert_clean()
    assert child.outcomes()[0].startswith("TYPED DeadlineExceeded"), child.describe()
    elapsed = float(next(ln for ln in child.lines if ln.startswith("ELAPSED")).split()[1])
    assert 2.0 <= elapsed < 3.2, child.describe()


COMPONENT_CALLER_WAT = """(module (import "plugsafe" "via" (func $v (param i32) (result i32)))
 (func (export "f") (param i32) (result i32) (call $v (local.get 0))))"""


def test_waiting_for_a_busy_component_ends_at_the_outer_calls_deadline() -> None:
    """Finding (issue 12, class 4/5): a core plugin's lock wait is bounded by the deadlines of
    the calls the thread is inside (``CallPath.acquire``), a component's is not. A module
    with a 0.2 s timeout whose host function calls a component that another thread keeps busy
    (spinning to its own 2 s timeout) returned successfully after ~2 s, ten times its
    timeout. The wait must end with the outer call's DeadlineExceeded."""
    with plugsafe.Host() as host:
        comp = host.load(
            component_wat.WORLD.encode(), policy=Policy(timeout=2.0, fuel=None), name="comp"
        )
        comp.invoke("add", 1, 2)  # the ticker armed: no first-call lateness mixed in

        @host.function
        def via(x: int) -> int:
            out: int = comp.invoke("add", x, 1)
            return out

        mod = host.load(
            COMPONENT_CALLER_WAT.encode(), policy=Policy(allow={"via"}, timeout=0.2), name="mod"
        )
        busy = threading.Event()

        def hog() -> None:
            busy.set()
            with contextlib.suppress(plugsafe.DeadlineExceeded):
                comp.invoke("spin")

        t = threading.Thread(target=hog)
        t.start()
        busy.wait()
        # The hog holds the component now: waited for, not slept for (a fixed 0.2 s was a
        # guess a loaded machine can beat, and then via's call found the component free).
        give_up = time.monotonic() + 30
        while not comp._lock.locked():
            assert time.monotonic() < give_up, "the hog never took the component"
            time.sleep(0.001)
        try:
            with pytest.raises(plugsafe.DeadlineExceeded):
                mod.invoke("f", 1)
        finally:
            t.join()
