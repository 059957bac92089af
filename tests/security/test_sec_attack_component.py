"""attack2: hostile components against plugsafe's lifting of their results.

wasmtime checks every pointer, length and UTF-8 string a component returns (tested here too),
but once it has lifted a result, plugsafe turns it into Python values with no bound: a few bytes
of guest memory per element become a 32-byte value struct in wasmtime and a Python object each,
and none of it counts against the policy's ``max_output`` or its ``timeout``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import plugsafe
from plugsafe import Policy

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


@pytest.mark.xfail(
    strict=True,
    reason="attack2: component results are lifted without max_output (or any bound): 1 MB of "
    "guest memory lifted as list<record{a: u8}> cost ~700 MiB and ~14 s of the host, past the "
    "call's timeout",
)
@pytest.mark.parametrize("function", ["bytes", "records", "text"])
def test_a_lifted_result_over_max_output_is_refused(chost: plugsafe.Host, function: str) -> None:
    """Finding: ``max_output`` bounds a core plugin's output, but a component's result of any
    size is lifted into Python objects. 20,000 guest bytes here, with max_output=1000: the
    lifted result must be refused with a typed error (an AbiError, as for a core plugin's
    output) before plugsafe builds Python values for it."""
    p = chost.load(WAT.encode(), policy=Policy(max_output=1000), name="big")
    with p, pytest.raises(plugsafe.PlugsafeError):
        p.invoke(function, 20_000)
