"""attack2: host functions' native widths and per-call context, attacked.

Each test names the finding it guards: what a hostile plugin or a careless app could do before
the fix, and what must hold now.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

import plugsafe
from plugsafe import Policy

# "gi"/"gf" return what host functions ri/rf return, at the width named in the test.
WIDTHS_WAT = """(module (import "plugsafe" "ri" (func $ri (result {i})))
 (import "plugsafe" "rf" (func $rf (result {f})))
 (func (export "gi") (result {i}) (call $ri))
 (func (export "gf") (result {f}) (call $rf)))"""


class _LyingInt(int):
    """An int whose conversions and comparisons say something else than its value."""

    def __int__(self) -> int:
        return 2**40

    def __index__(self) -> int:
        return 2**40

    def __ge__(self, other: object) -> bool:
        return True

    def __le__(self, other: object) -> bool:
        return True


class _HonestInt(int):
    pass


class _HonestFloat(float):
    pass


class _LyingFloat(float):
    def __float__(self) -> float:
        return 1e300


@pytest.mark.parametrize(("i", "f"), [("i32", "f32"), ("i64", "f64")])
def test_an_int_or_float_subclass_result_reaches_the_guest_as_its_own_value(
    host: plugsafe.Host, i: str, f: str
) -> None:
    """Finding: an int subclass result passed the range check with its value, then was stored
    through its ``__int__`` (2**40 reached an i64 guest; the ctypes fallback truncated it to 0
    for an i32 one) and a float subclass through its ``__float__``: values the host function
    never returned. Now such a result is a HostFunctionError, and a subclass that converts
    to its own value reaches the guest as that value."""
    vals: dict[str, Any] = {}

    @host.function
    def ri() -> int:
        return vals["ri"]  # type: ignore[no-any-return]

    @host.function
    def rf() -> float:
        return vals["rf"]  # type: ignore[no-any-return]

    p = host.load(WIDTHS_WAT.format(i=i, f=f).encode(), policy=Policy(allow={"ri", "rf"}))
    for name, value in (("ri", _LyingInt(5)), ("rf", _LyingFloat(1.5)), ("rf", _LyingInt(3))):
        vals[name] = value
        with pytest.raises(plugsafe.HostFunctionError) as info:
            p.invoke("g" + name[1])
        assert "differs from its value" in str(info.value)
    # A subclass that converts to its own value is that value.
    vals["ri"] = _HonestInt(5)
    assert p.invoke("gi") == 5
    vals["rf"] = _HonestFloat(1.5)
    assert p.invoke("gf") == 1.5
    # And at the edges, only what fits (a typed error for the rest).
    lo, hi = (-(2**31), 2**31 - 1) if i == "i32" else (-(2**63), 2**63 - 1)
    for edge in (lo, hi, 0, -1):
        vals["ri"] = edge
        assert p.invoke("gi") == edge
    bad: object
    for bad in (lo - 1, hi + 1, 10**400, True, 1.0):
        vals["ri"] = bad
        with pytest.raises(plugsafe.HostFunctionError):
            p.invoke("gi")
    for fedge in (math.inf, -math.inf, -0.0):
        vals["rf"] = fedge
        got = p.invoke("gf")
        assert got == fedge and math.copysign(1.0, got) == math.copysign(1.0, fedge)
    vals["rf"] = math.nan
    assert math.isnan(p.invoke("gf"))
    for bad in (10**400, True, "1"):
        vals["rf"] = bad
        with pytest.raises(plugsafe.HostFunctionError):
            p.invoke("gf")


START_WAT = """(module (import "plugsafe" "tick" (func $tick))
  (func $s (call $tick)) (start $s)
  (func (export "trap") unreachable)
  (func (export "noop") (call $tick)))"""


@pytest.mark.parametrize("fresh", [False, True])
def test_a_start_function_rerun_for_a_call_never_sees_that_calls_context(
    host: plugsafe.Host, fresh: bool
) -> None:
    """Finding: docs/host-functions.md promises a start function never sees the context of
    the call that triggered it, but a re-instantiation after a trap (or a fresh_instance
    call) ran the start function with the calling tenant's context as current_call().context.
    """
    seen: list[tuple[str, object]] = []

    @host.function
    def tick() -> None:
        info = plugsafe.current_call()
        assert info is not None
        seen.append((info.function, info.context))

    p = host.load(START_WAT.encode(), policy=Policy(allow={"tick"}, fresh_instance=fresh))
    assert seen == [("(start)", None)]
    seen.clear()
    with pytest.raises(plugsafe.PluginTrap):
        p.invoke("trap", context="tenant-a")
    seen.clear()
    p.invoke("noop", context="tenant-b")
    assert seen == [("(start)", None), ("noop", "tenant-b")]
    seen.clear()
    p.invoke("noop")
    assert ("noop", None) in seen and all(c is None for _, c in seen)
    assert plugsafe.current_call() is None
