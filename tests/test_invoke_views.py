"""``invoke``'s short path packs and reads through typed views: every signature still gets
exactly what the general path gives it.

Up to three parameters of one type among i32, i64 and f64 are stored by item assignment into a
typed memoryview of the call's slots, and a single result is read as item 0 of a view of its
type (issue 14, goal 5: no packing partial, no results tuple). Everything else (mixed
parameter types, f32 parameters, four or more) keeps the ``struct`` packer. These tests call
each shape on the short path (the second and later calls of a function) and through the
general path (the first), with values at the edges of each type, and with arguments the
conversion must refuse, changing nothing.
"""

from __future__ import annotations

import threading

import pytest

import plugsafe

from conftest import LoadFn

SHAPES = """(module
  (func (export "p0") (result i32) i32.const 7)
  (func (export "i1") (param i32) (result i32) local.get 0)
  (func (export "i2") (param i32 i32) (result i32) (i32.sub (local.get 0) (local.get 1)))
  (func (export "i3") (param i32 i32 i32) (result i32)
    (i32.mul (i32.sub (local.get 0) (local.get 1)) (local.get 2)))
  (func (export "i4") (param i32 i32 i32 i32) (result i32)
    (i32.sub (i32.sub (i32.sub (local.get 0) (local.get 1)) (local.get 2)) (local.get 3)))
  (func (export "q1") (param i64) (result i64) local.get 0)
  (func (export "q2") (param i64 i64) (result i64) (i64.sub (local.get 0) (local.get 1)))
  (func (export "q3") (param i64 i64 i64) (result i64)
    (i64.sub (i64.sub (local.get 0) (local.get 1)) (local.get 2)))
  (func (export "d2") (param f64 f64) (result f64) (f64.sub (local.get 0) (local.get 1)))
  (func (export "f1") (param f32) (result f32) local.get 0)
  (func (export "mixed") (param i32 i64) (result i64)
    (i64.sub (i64.extend_i32_s (local.get 0)) (local.get 1)))
  (func (export "tof") (param i32) (result f64) (f64.convert_i32_s (local.get 0)))
  (func (export "none") (param i32))
  (func (export "two") (param i64) (result i64 i32) local.get 0 i32.const 7))"""

# (function, arguments, result): every shape, with values at the edges of its type.
CASES: list[tuple[str, tuple[object, ...], object]] = [
    ("p0", (), 7),
    ("i1", (-(2**31),), -(2**31)),
    ("i1", (2**31 - 1,), 2**31 - 1),
    ("i1", (2**32 - 1,), -1),  # unsigned in: converted, as the general path does
    ("i1", (True,), 1),
    ("i2", (5, 7), -2),
    ("i2", (2**31, 0), -(2**31)),
    ("i3", (10, 4, 3), 18),
    ("i3", (0, 1, -5), 5),
    ("i4", (10, 1, 2, 3), 4),
    ("q1", (-(2**63),), -(2**63)),
    ("q1", (2**64 - 1,), -1),
    ("q2", (2**62, 1), 2**62 - 1),
    ("q3", (100, 1, 2), 97),
    ("d2", (1.5, 0.25), 1.25),
    ("d2", (3, 1), 2.0),  # ints are real numbers
    ("f1", (1.5,), 1.5),
    ("mixed", (-3, 2**40), -3 - 2**40),
    ("tof", (-9,), -9.0),
    ("none", (1,), None),
    ("two", (2**40,), (2**40, 7)),
]


class Index:
    """An integer that is not an int (numpy's are such): what operator.index accepts."""

    def __init__(self, v: int) -> None:
        self.v = v

    def __index__(self) -> int:
        return self.v


class Real:
    """A real number that is not a float: what struct packs as a double."""

    def __float__(self) -> float:
        return 2.5


@pytest.mark.parametrize(("function", "args", "expected"), CASES)
def test_every_shape_gives_the_same_on_the_short_and_the_general_path(
    load: LoadFn, function: str, args: tuple[object, ...], expected: object
) -> None:
    p = load(SHAPES)
    # The first call takes the general path; the next ones the short path, aimed at it.
    for _ in range(3):
        out = p.invoke(function, *args)
        assert out == expected
        assert type(out) is type(expected)


def test_the_typed_views_are_what_the_short_path_uses(load: LoadFn) -> None:
    # What this file is about: the shapes it means to cover do take the typed views.
    p = load(SHAPES)
    path = p.invoke.__self__  # type: ignore[attr-defined]
    for function, arity, item in [("p0", 0, "i"), ("i2", 2, "i"), ("q3", 3, "q"), ("d2", 2, "d")]:
        p.invoke(function, *([1] * arity))
        p.invoke(function, *([1] * arity))
        assert path._pn == arity
        assert path._rv is not None and path._rv.format == item
    for function, arity in [("i4", 4), ("mixed", 2), ("f1", 1)]:
        p.invoke(function, *([1] * arity))
        p.invoke(function, *([1] * arity))
        assert path._pn == -1  # the struct packer


def test_integers_that_are_not_ints_are_packed_on_the_short_path(load: LoadFn) -> None:
    p = load(SHAPES)
    for _ in range(3):
        assert p.invoke("i2", Index(9), Index(2)) == 7
        assert p.invoke("q1", Index(-(2**40))) == -(2**40)
        assert p.invoke("d2", Real(), Index(1)) == 1.5


@pytest.mark.parametrize(
    ("function", "args", "match"),
    [
        ("i1", (2**32,), "out of range"),
        ("i1", (-(2**31) - 1,), "out of range"),
        ("i2", (1, 2**40), "out of range"),
        ("i3", (1, 2, 2**33), "out of range"),
        ("q1", (2**64,), "out of range"),
        ("q2", (1, -(2**63) - 1), "out of range"),
        ("i1", (1.0,), "is i32; got float"),
        ("i2", (1, "2"), "is i32; got str"),
        ("q3", (1, 2, None), "is i64; got NoneType"),
        ("d2", (1.0, "x"), "is f64; got str"),
        ("d2", (2**2000, 1.0), "did not convert"),
        ("p0", (1,), "takes 0 argument"),
        ("i1", (), "takes 1 argument"),
        ("i2", (1,), "takes 2 argument"),
        ("i2", (1, 2, 3), "takes 2 argument"),
        ("i3", (1, 2), "takes 3 argument"),
        ("q3", (1, 2, 3, 4), "takes 3 argument"),
    ],
)
def test_refused_arguments_on_the_short_path_change_nothing(
    load: LoadFn, function: str, args: tuple[object, ...], match: str
) -> None:
    p = load(SHAPES)
    good = {"p0": (), "i1": (5,), "i2": (5, 2), "i3": (5, 2, 2), "q1": (5,), "q2": (5, 2)}
    good |= {"q3": (5, 2, 1), "d2": (5.0, 2.0)}
    want = p.invoke(function, *good[function])
    assert p.invoke(function, *good[function]) == want  # aimed
    with pytest.raises(plugsafe.SignatureError, match=match):
        p.invoke(function, *args)
    # Nothing half-packed reaches the next call, and the instance is the same.
    before = p.invoke.__self__.instance  # type: ignore[attr-defined]
    assert p.invoke(function, *good[function]) == want
    assert p.invoke.__self__.instance is before  # type: ignore[attr-defined]


def test_threads_calling_one_aimed_function_each_get_their_own_result(load: LoadFn) -> None:
    p = load(SHAPES)
    errors: list[str] = []

    def work(k: int) -> None:
        for i in range(2000):
            if p.invoke("i3", k, i, 3) != (k - i) * 3 or p.invoke("q2", k, i) != k - i:
                errors.append(f"thread {k}, call {i}")
                return

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
