"""plugsafe's dataclasses are made without the ``dataclasses`` module, and are the same classes.

Issue 14 (cold start): ``import dataclasses`` imports ``inspect``, ``ast``, ``dis`` and
``tokenize`` (8 % of a cold start). ``plugsafe._dataclass_code.dataclass`` writes the methods
``dataclasses`` writes and leaves the real ``Field`` objects to be made on first use. Each test
here describes every plugsafe dataclass (and what its instances do) in two fresh processes, one
with plugsafe's decorator and one where ``dataclasses`` makes every class
(``PLUGSAFE_STDLIB_DATACLASSES=1``), and compares the two descriptions.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import typing  # a module global: how dataclasses recognises "typing.ClassVar"
from pathlib import Path

import pytest

import plugsafe
from plugsafe import _dataclass_code

PACKAGE = Path(plugsafe.__file__).parent

# Prints a description of every dataclass plugsafe defines (classes, fields, methods,
# signatures), then what instances of the public ones do: ==, hash, repr, frozen, pickle, copy,
# replace, asdict/astuple, match. Takes the order "classes first" / "instances first" as argv
# (the real Fields are made on first use: either order must give the same).
_PROBE = r"""
import copy, importlib, inspect, json, pickle, pkgutil, sys
order = sys.argv[1]
import plugsafe
native = "dataclasses" not in sys.modules
# Every module that defines dataclasses (the lazily imported ones too).
for info in pkgutil.walk_packages(plugsafe.__path__, "plugsafe."):
    if info.name.split(".")[-1] in ("__main__", "_pytest_plugin", "_cdef"):
        continue
    importlib.import_module(info.name)
import dataclasses

classes = {}
for name, module in sorted(sys.modules.items()):
    if not name.startswith("plugsafe"):
        continue
    for value in vars(module).values():
        if isinstance(value, type) and "__dataclass_fields__" in vars(value):
            classes[f"{value.__module__}.{value.__qualname__}"] = value

def methods(cls):
    out = {}
    for key in ("__init__", "__repr__", "__eq__", "__hash__", "__setattr__", "__delattr__",
                "__lt__", "__match_args__", "__post_init__"):
        if key in vars(cls):
            v = vars(cls)[key]
            out[key] = getattr(v, "__qualname__", repr(v))
    return out

def describe(cls):
    init = cls.__init__
    return {
        "doc": cls.__doc__,
        "mro": [c.__qualname__ for c in cls.__mro__],
        "signature": str(inspect.signature(cls)),
        "init_signature": str(inspect.signature(init)),
        "init_annotations": repr(getattr(init, "__annotations__", None)),
        "init_defaults": repr((init.__defaults__, init.__kwdefaults__)),
        "methods": methods(cls),
        "match_args": repr(getattr(cls, "__match_args__", None)),
        "hash_is_none": cls.__hash__ is None,
        "attrs": {k: repr(vars(cls).get(k, "<absent>")) for k in cls.__annotations__},
        "annotations": repr(cls.__dict__.get("__annotations__")),
        "is_dataclass": dataclasses.is_dataclass(cls),
        "params": repr(cls.__dataclass_params__),
        "fields": [
            [f.name, repr(f.type), repr(f.default), repr(f.default_factory), f.init, f.repr,
             f.hash, f.compare, repr(f.metadata), f.kw_only, repr(f._field_type)]
            for f in dataclasses.fields(cls)
        ],
        "all_fields": sorted(cls.__dataclass_fields__),
    }

P = plugsafe
def examples():
    return {
        "Policy": [P.Policy(fuel=5, allow={"log"}), P.Policy(fuel=5, allow=["log"])],
        "Wasi": [P.Wasi(args=["a"], env={"K": "V"}), P.Wasi(args=("a",), env={"K": "V"})],
        "Preopen": [P.Preopen("/tmp", "/data"), P.Preopen("/tmp", "/data", writable=True)],
        "Pooling": [P.Pooling(instances=3, memory_size=1 << 20),
                    P.Pooling(instances=3, memory_size="1MiB")],
        "CallStats": [P.CallStats(1, 0.5, 65536, 0, "p", "f"),
                      P.CallStats(1, 0.5, 65536, 0, "p", "f", context=object())],
        "ExportInfo": [P.ExportInfo("f", "func", ("i32",), ("i64",)), P.ExportInfo("f", "func")],
        "ImportInfo": [P.ImportInfo("f", "func", module="m"),
                       P.ImportInfo("f", "func", module="m")],
        "ImportProblem": [P.ImportProblem("m", "f", "unknown", "d"),
                          P.ImportProblem("m", "f", "unknown", "e")],
        "RunResult": [P.RunResult(0, b"o", b"e"), P.RunResult(0, b"o", b"e", True)],
        "CallInfo": [P.CallInfo(None, "f"), P.CallInfo(None, "f", context=1)],
    }

def behave(name, a, b):
    out = {"repr": repr(a), "eq": [a == b, a != b, a == a, a.__eq__(object())is NotImplemented]}
    try:
        out["hash"] = [hash(a) == hash(copy.copy(a)), hash(a) == hash(b)]
    except TypeError as exc:
        out["hash"] = f"TypeError: {exc}"
    first = next(iter(a.__match_args__), None) or dataclasses.fields(a)[0].name
    for action, do in (("set", lambda: setattr(a, first, 1)), ("del", lambda: delattr(a, first)),
                       ("set_other", lambda: setattr(a, "not_a_field", 1))):
        try:
            do()
            out[action] = "no error"
        except Exception as exc:
            out[action] = [type(exc).__module__, type(exc).__qualname__, str(exc),
                           isinstance(exc, AttributeError)]
    if name != "CallInfo":  # holds a Plugin (None here) as a live reference: not pickled
        out["pickle"] = pickle.loads(pickle.dumps(b)) == b
    out["copy"] = [copy.copy(b) == b, copy.deepcopy(b) == b]
    field = dataclasses.fields(b)[-1]
    if field.init:
        out["replace"] = repr(dataclasses.replace(b, **{field.name: getattr(b, field.name)}))
    out["asdict"] = repr(dataclasses.asdict(b))
    out["astuple"] = repr(dataclasses.astuple(b))
    C = type(b)
    if C.__match_args__:
        match b:
            case C(x):
                out["match"] = repr(x)
    else:
        match b:
            case C():
                out["match"] = "no positional sub-patterns"
    return out

result = {"native": native}
if order == "instances-first":
    result["behaviour"] = {k: behave(k, *v) for k, v in examples().items()}
result["classes"] = {name: describe(cls) for name, cls in sorted(classes.items())}
if order == "classes-first":
    result["behaviour"] = {k: behave(k, *v) for k, v in examples().items()}
print(json.dumps(result, default=repr))
"""


def _describe(order: str, *, stdlib: bool) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "PLUGSAFE_STDLIB_DATACLASSES"}
    if stdlib:
        env["PLUGSAFE_STDLIB_DATACLASSES"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, order], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    # Object addresses differ from process to process.
    result: dict[str, object] = json.loads(re.sub(r" at 0x[0-9a-f]+", " at 0x", done.stdout))
    return result


@pytest.mark.skipif(not _dataclass_code._NATIVE, reason="dataclasses makes them on this Python")
@pytest.mark.parametrize("order", ["classes-first", "instances-first"])
def test_every_dataclass_is_the_one_dataclasses_makes(order: str) -> None:
    ours = _describe(order, stdlib=False)
    theirs = _describe(order, stdlib=True)
    assert ours.pop("native") is True and theirs.pop("native") is False
    ours_classes, theirs_classes = ours["classes"], theirs["classes"]
    assert isinstance(ours_classes, dict) and isinstance(theirs_classes, dict)
    assert sorted(ours_classes) == sorted(theirs_classes)
    assert "plugsafe.Policy" in ours_classes and len(ours_classes) >= 25
    for name in theirs_classes:
        assert ours_classes[name] == theirs_classes[name], name
    assert ours["behaviour"] == theirs["behaviour"]


def test_import_plugsafe_does_not_import_dataclasses() -> None:
    code = (
        "import sys, plugsafe; "
        "print(sorted({'dataclasses', 'inspect', 'ast', 'dis', 'tokenize'} & set(sys.modules)), "
        "type(vars(plugsafe.Policy)['__dataclass_fields__']).__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    if not _dataclass_code._NATIVE:
        assert "'dataclasses'" in out, out
    else:
        assert out.split() == ["[]", "_Lazy"], out


def test_a_field_needs_an_annotation_and_one_default() -> None:
    from plugsafe._dataclass_code import dataclass, field

    with pytest.raises(ValueError, match="both default and default_factory"):
        field(default=1, default_factory=list)
    with pytest.raises(TypeError, match="'x' is a field but has no type annotation"):

        @dataclass
        class NoAnnotation:
            """A field without an annotation."""

            x = field(default=1)

    with pytest.raises(ValueError, match="mutable default <class 'list'> for field y"):

        @dataclass
        class Mutable:
            """A mutable default."""

            y: list[int] = []  # noqa: RUF012

    with pytest.raises(TypeError, match="non-default argument 'b' follows default argument"):

        @dataclass
        class Order:
            """A default first."""

            a: int = 1
            b: int  # type: ignore[misc]


def test_frozen_and_plain_classes_do_not_mix_by_inheritance() -> None:
    from plugsafe._dataclass_code import dataclass

    @dataclass(frozen=True)
    class Frozen:
        """Frozen."""

        a: int

    @dataclass
    class Plain:
        """Plain."""

        a: int

    with pytest.raises(TypeError, match="cannot inherit non-frozen dataclass from a frozen one"):
        dataclass(type("Sub", (Frozen,), {"__doc__": "x"}))
    with pytest.raises(TypeError, match="cannot inherit frozen dataclass from a non-frozen one"):
        dataclass(frozen=True)(type("Sub2", (Plain,), {"__doc__": "x"}))


def _outcome(make: typing.Callable[[], object]) -> object:
    """What ``make()`` gives, or the exception it raises (its type and message)."""
    try:
        return make()
    except Exception as exc:
        return (type(exc).__name__, str(exc))


@pytest.mark.skipif(not _dataclass_code._NATIVE, reason="dataclasses makes them on this Python")
def test_what_changed_between_pythons_is_this_python_s() -> None:
    # Where dataclasses itself differs from one Python to the next (3.13: __eq__ true for the
    # same object, field by field; __replace__; a frozen class with any non-frozen dataclass
    # base; the default argument named in the order error), plugsafe's classes do what the
    # running Python's dataclasses does: the same classes made by each, the outcomes compared.
    import copy
    import dataclasses

    from plugsafe._dataclass_code import dataclass

    def behaviour(deco: typing.Any) -> dict[str, object]:
        @deco(frozen=True)
        class Point:
            """A point."""

            x: float
            y: float = 0.0

        @deco
        class Plain:
            """Plain."""

            z: int = 0

        nan = Point(math.nan)
        out: dict[str, object] = {
            "same_nan": nan == nan,
            "equal_nans": nan == Point(math.nan),
            "eq": [Point(1.0) == Point(1.0), Point(1.0) == Point(2.0), Point(1.0) == (1.0, 0.0)],
            "has_replace": "__replace__" in vars(Point),
            "mixed": _outcome(
                lambda: deco(frozen=True)(type("M", (Point, Plain), {"__doc__": "m"}))
            ),
            "order": _outcome(
                lambda: deco(
                    type(
                        "O",
                        (),
                        {"__doc__": "o", "__annotations__": {"a": "int", "b": "int"}, "a": 1},
                    )
                )
            ),
        }
        if sys.version_info >= (3, 13):
            replace = copy.replace  # type: ignore[attr-defined]
            out["copy.replace"] = _outcome(lambda: repr(replace(Point(1.0), y=2.0)))
            out["replace_unknown"] = _outcome(lambda: replace(Point(1.0), w=1))
        return out

    ours = behaviour(dataclass)
    theirs = behaviour(dataclasses.dataclass)
    assert isinstance(ours["mixed"], tuple) == isinstance(theirs["mixed"], tuple)
    if not isinstance(theirs["mixed"], tuple):  # classes: compare what they are
        ours["mixed"] = theirs["mixed"] = "a class"
    assert ours == theirs


def test_what_it_does_not_make_goes_to_dataclasses() -> None:
    import dataclasses

    from plugsafe._dataclass_code import dataclass, field

    @dataclass(order=True)
    class Ordered:
        """Ordered (not one of plugsafe's options)."""

        a: int
        b: list[int] = field(default_factory=list)

    assert Ordered(1) < Ordered(2) and Ordered(1).b == []
    assert isinstance(vars(Ordered)["__dataclass_fields__"], dict)  # made by dataclasses

    @dataclass
    class WithClassVar:
        """A ClassVar is no field."""

        a: int
        b: typing.ClassVar[int] = 3

    assert [f.name for f in dataclasses.fields(WithClassVar)] == ["a"]
    assert isinstance(vars(WithClassVar)["__dataclass_fields__"], dict)


def test_the_real_fields_are_made_once_and_then_are_plain() -> None:
    import dataclasses

    from plugsafe._dataclass_code import dataclass, field, field_names

    @dataclass(frozen=True)
    class Base:
        """Base."""

        a: int
        b: tuple[int, ...] = ()

    @dataclass(frozen=True)
    class Child(Base):
        """Child."""

        c: dict[str, int] = field(default_factory=dict, compare=False)

    assert field_names(Child) == ("a", "b", "c")  # without making the real ones
    assert type(vars(Child)["__dataclass_fields__"]).__name__ == "_Lazy"
    child = Child(1, (2,), {"x": 3})
    fields = dataclasses.fields(child)
    assert [f.name for f in fields] == ["a", "b", "c"]
    assert vars(Child)["__dataclass_fields__"] is Child.__dataclass_fields__
    assert isinstance(vars(Child)["__dataclass_fields__"], dict)
    assert Child.__dataclass_params__.frozen is True
    assert fields[2].compare is False and fields[2].default_factory is dict
    assert child == Child(1, (2,), {}) and hash(child) == hash(Child(1, (2,)))
    assert dataclasses.replace(child, a=5) == Child(5, (2,))
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'a'"):
        child.a = 2  # type: ignore[misc]
    assert field_names(Child) == ("a", "b", "c")


def test_namedtuples_compile_once_and_the_hook_is_gone(tmp_path: Path) -> None:
    # typing.NamedTuple classes compile their __new__ from a text (collections.namedtuple's
    # eval): plugsafe's are cached with the dataclass methods; the hook is gone after import.
    import collections

    assert "eval" not in vars(collections)
    code = """
import marshal, plugsafe
from plugsafe import _dataclass_code
from plugsafe._runtime._engine import PoolLimits
with open(_dataclass_code._PATH, "rb") as f:
    codes = marshal.loads(f.read()[4:])
print(sum("lambda _cls" in key for key in codes), PoolLimits._fields[0])
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(tmp_path)
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        ).stdout.split()
    assert int(out[0]) >= 3 and out[1] == "instances"
