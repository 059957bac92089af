"""Hostile arguments from the app, built by hypothesis: ``invoke(name, *args)`` and
``call(name, data)`` given objects that lie or raise.

Arguments: ints, floats and bools at every edge (huge and negative ints, NaN payloads), and
objects (plain, or ``int``/``float``/``str`` subclasses) whose ``__index__``, ``__float__`` and
``__int__`` each return an int, a float, another type or an int subclass, raise any exception
(``TypeError`` and ``ValueError`` but also ``RecursionError``, ``MemoryError``, an exception whose
text cannot be made, a ``PlugsafeError``, ``KeyboardInterrupt``, ``SystemExit``, an app's own
``BaseException``), raise only the first time, or call the plugin back (its own ``invoke``,
``call`` or ``close``, or another plugin) before answering; objects whose ``__class__`` lies or
whose attribute lookups raise; wrong argument counts. Function names: plain, ``str`` subclasses
whose ``__eq__``/``__hash__``/``__str__`` lie or raise, and things that are no str at all. Data:
bytes, bytearrays, strs (lone surrogates too), their subclasses with lying ``__len__`` or
``__bytes__``, memoryviews of every format, strided, multi-dimensional, read-only or released.

The rule, checked after every operation: the outcome is a value, a ``PlugsafeError``, or the
very ``BaseException`` (not an ``Exception``) an argument raised (docs/errors.md, "Arguments from
the app"); the plugin's lock is free and no thread owns it; an ``echo`` answers the data's own
bytes; and at the end the plugin still works, with its instance (a counter in the guest's
global) kept throughout unless the plugin was closed.

In process (nothing here crashes the host any more: tests/test_fuzz9_args.py has the cases
found). The default run tries :data:`QUICK_EXAMPLES` sequences, the same every time (a few
seconds); ``PLUGSAFE_FUZZ=N`` tries N and lets hypothesis explore. Run it under each call path:
``PLUGSAFE_SPEEDUPS=0`` (cffi without the compiled call) and ``PLUGSAFE_BACKEND=ctypes``.
"""

from __future__ import annotations

import array
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import plugsafe

from .conftest import fuzz_budget

QUICK_EXAMPLES = 120
# An argument's __index__ or __float__ answering a subclass is its own (deprecated) doing.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__index__ returned non-int:DeprecationWarning",
    "ignore:__float__ returned non-float:DeprecationWarning",
    "ignore:__int__ returned non-int:DeprecationWarning",
)
FUZZ = settings(
    max_examples=fuzz_budget() or QUICK_EXAMPLES,
    deadline=None,
    derandomize=fuzz_budget() is None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

# Numeric functions of every packing shape (one typed view for up to three i32/i64/f64
# parameters of one type, struct for the rest), an ABI echo, and a counter that shows whether
# the instance was kept. ``hooked`` imports a host function (a plugin with imports has an
# owner while it runs: re-entry is refused by another check).
BODY = """
  (global $n (mut i32) (i32.const 0))
  (func (export "bump") (result i32)
    (global.set $n (i32.add (global.get $n) (i32.const 1))) (global.get $n))
  (func (export "i32x2") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "i64") (param i64) (result i64) (local.get 0))
  (func (export "f32") (param f32) (result f32) (local.get 0))
  (func (export "f64x3") (param f64 f64 f64) (result f64) (local.get 2))
  (func (export "mixed") (param i32 i64 f32 f64) (result f64 i64)
    (local.get 3) (local.get 1))
  (func (export "none"))
  (memory (export "memory") 2)
  (global $top (mut i32) (i32.const 1024))
  (func (export "plugsafe_abi_version") (result i32) (i32.const 1))
  (func (export "plugsafe_alloc") (param i32) (result i32) (local $p i32)
    (local.set $p (global.get $top))
    (global.set $top (i32.add (global.get $top) (local.get 0)))
    (if (i32.gt_u (global.get $top) (i32.const 100000)) (then (global.set $top (i32.const 1024))))
    (local.get $p))
  (func (export "echo") (param i32 i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get 0)) (i64.const 32))
            (i64.extend_i32_u (local.get 1))))
"""
PLAIN_WAT = f"(module {BODY})".encode()
HOOKED_WAT = (
    '(module (import "plugsafe" "hook" (func $hook (param i32) (result i32)))'
    f"{BODY}"
    '  (func (export "hooked") (param i32) (result i32) (call $hook (local.get 0))))'
).encode()
PARAMS: dict[str, tuple[str, ...]] = {
    "i32x2": ("i32", "i32"),
    "i64": ("i64",),
    "f32": ("f32",),
    "f64x3": ("f64", "f64", "f64"),
    "mixed": ("i32", "i64", "f32", "f64"),
    "none": (),
    "bump": (),
    "hooked": ("i32",),
}


class Custom(BaseException):
    """An app's own BaseException (neither Exception nor KeyboardInterrupt)."""


class Shouty(Exception):
    """An exception whose text cannot be made."""

    def __str__(self) -> str:
        raise RuntimeError("no text")


class Huge(Exception):
    """An exception with a very long text."""

    def __str__(self) -> str:
        return "x" * 100_000


EXCEPTIONS: list[Callable[[], BaseException]] = [
    TypeError,
    lambda: ValueError("v"),
    OverflowError,
    ZeroDivisionError,
    RuntimeError,
    RecursionError,
    MemoryError,
    Shouty,
    Huge,
    lambda: plugsafe.GuestError("p", "f", "from an argument"),
    KeyboardInterrupt,
    SystemExit,
    GeneratorExit,
    Custom,
]


@dataclass
class World:
    """The plugins of one example and what their arguments did."""

    plugin: plugsafe.Plugin
    other: plugsafe.Plugin
    # Every exception an argument raised during the current operation (by identity).
    raised: list[BaseException] = field(default_factory=list)
    # Bumps of the plugin's counter that ran (the instance is kept: it counts on).
    bumps: int = 0


# A behaviour of one conversion method, applied to the world at call time.
Behaviour = tuple[str, Any]


def _behave(world: World, how: Behaviour, first: list[bool]) -> Any:
    kind, arg = how
    if kind == "return":
        return arg
    if kind == "raise" or (kind == "raise_once" and first[0]):
        first[0] = False
        exc = EXCEPTIONS[arg]()
        world.raised.append(exc)
        raise exc
    if kind == "raise_once":
        return 1
    if kind == "reenter":
        # Call back into a plugin, then answer 1 (what the nested call raised counts as the
        # argument's own).
        try:
            if arg == "invoke":
                world.plugin.invoke("bump")
                world.bumps += 1
            elif arg == "call":
                world.plugin.call("echo", b"nested")
            elif arg == "close":
                world.plugin.close()
            else:
                world.other.invoke("bump")
        except BaseException as exc:
            world.raised.append(exc)
            raise
        return 1
    raise AssertionError(kind)


def _liar(world: World, base: type, hows: dict[str, Behaviour], value: Any) -> object:
    """An instance of a new class over ``base`` whose conversion methods behave as ``hows``."""
    first = [True]
    ns: dict[str, Any] = {}
    for method, how in hows.items():
        ns[method] = lambda self, how=how: _behave(world, how, first)
    if "lie_class" in hows:
        ns["__class__"] = property(lambda self: hows["lie_class"][1])
        del ns["lie_class"]
    if "getattribute" in hows:

        def getattribute(self: object, name: str) -> Any:
            exc = ValueError(f"no {name}")
            world.raised.append(exc)
            raise exc

        ns["__getattribute__"] = getattribute
        del ns["getattribute"]
    cls = type("Liar", (base,), ns)
    return cls(value) if base is not object else cls()


# -- strategies --------------------------------------------------------------------------------


def _nan(bits: int) -> float:
    return float(struct.unpack("<d", struct.pack("<Q", bits))[0])


_INT_EDGES = [0, 1, -1, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**32 - 1, 2**32, 2**63 - 1]
_INT_EDGES += [2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 10**5000, -(10**5000)]
ints = st.one_of(st.sampled_from(_INT_EDGES), st.integers(-(2**70), 2**70))
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-0.0, math.inf, -math.inf, 3.4028234663852886e38, 3.5e38, 1e-46]),
    st.integers(1, 2**52 - 1).map(lambda m: _nan(0x7FF0000000000000 | m)),
    st.integers(1, 2**52 - 1).map(lambda m: _nan(0xFFF0000000000000 | m)),
)
behaviours = st.one_of(
    st.tuples(st.just("return"), st.one_of(ints, floats, st.just("x"), st.just(None))),
    st.tuples(st.just("return"), ints.map(lambda v: type("IntSub", (int,), {})(v))),
    st.tuples(st.sampled_from(["raise", "raise_once"]), st.integers(0, len(EXCEPTIONS) - 1)),
    st.tuples(st.just("reenter"), st.sampled_from(["invoke", "call", "close", "other"])),
)


@st.composite
def hostile_value(draw: st.DrawFn, world: World) -> object:
    """One argument: plain, or a liar built for ``world``."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.one_of(ints, floats, st.booleans(), st.sampled_from([None, "1", b"1", 1j])))
    base = draw(st.sampled_from([object, int, float, str]))
    methods = draw(st.sets(st.sampled_from(["__index__", "__float__", "__int__"]), min_size=1))
    hows: dict[str, Behaviour] = {m: draw(behaviours) for m in sorted(methods)}
    extra = draw(st.sampled_from([None, None, None, "lie_class", "getattribute"]))
    if extra == "lie_class":
        hows["lie_class"] = ("return", draw(st.sampled_from([int, float, str, bytes])))
    elif extra == "getattribute":
        hows["getattribute"] = ("raise", 0)
    value = {object: None, int: draw(ints), float: draw(floats), str: "7"}[base]
    return _liar(world, base, hows, value)


class Name(str):
    """A function name whose comparisons, hash and str lie."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0

    def __str__(self) -> str:
        return "_initialize"

    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        return b"_initialize"


class NameRaises(str):
    def __eq__(self, other: object) -> bool:
        raise ValueError("eq")

    def __hash__(self) -> int:
        raise ValueError("hash")


class NotAName:
    def __hash__(self) -> int:
        raise ZeroDivisionError

    def __repr__(self) -> str:
        raise RuntimeError("repr")


class SaysStr:
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return str


def names(real: list[str]) -> st.SearchStrategy[object]:
    return st.one_of(
        st.sampled_from(real),
        st.sampled_from(real).map(Name),
        st.sampled_from(real).map(NameRaises),
        st.sampled_from(["_start", "_initialize", "memory", "nope", "", "\udc80"]),
        st.sampled_from([None, 3, b"echo"]),
        st.builds(NotAName),
        st.builds(SaysStr),
    )


class LyingBytes(bytes):
    def __len__(self) -> int:
        return 4096

    def __bytes__(self) -> bytes:
        return b"other"


class BytesRaises(bytes):
    def __bytes__(self) -> bytes:
        raise ValueError("no bytes")


class LyingBytearray(bytearray):
    def __len__(self) -> int:
        return 1 << 20


class LyingStr(str):
    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        return b"x" * 4096

    def __len__(self) -> int:
        return 0


def _released() -> memoryview:
    view = memoryview(b"abc")
    view.release()
    return view


class SaysBytes:
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return bytes


def _view(raw: bytes, fmt: Any, step: int, shape: bool) -> Any:
    """A view of ``raw`` as items of ``fmt``, every ``step``-th (or 2-D, shape 4 wide)."""
    size = struct.calcsize(fmt)
    usable = raw[: len(raw) - len(raw) % size]
    view = memoryview(usable).cast(fmt)[::step]
    if shape and fmt == "B" and len(usable) % 4 == 0 and usable:
        view = memoryview(usable).cast("B", (len(usable) // 4, 4))
    return view


raw_bytes = st.binary(max_size=300)
datas = st.one_of(
    raw_bytes,
    raw_bytes.map(bytearray),
    st.text(max_size=50),
    st.sampled_from(["\udc80", "a\ud800b", "\x00"]),
    st.builds(
        _view,
        raw_bytes,
        st.sampled_from(["B", "c", "i", "d", "f", "Q", "h"]),
        st.integers(1, 3),
        st.booleans(),
    ),
    raw_bytes.map(lambda b: memoryview(b).toreadonly()),
    raw_bytes.map(lambda b: array.array("B", b)),
    raw_bytes.map(LyingBytes),
    raw_bytes.map(BytesRaises),
    raw_bytes.map(LyingBytearray),
    st.text(max_size=20).map(LyingStr),
    st.builds(_released),
    st.builds(SaysBytes),
    st.sampled_from([None, 5, [1], 1.5]),
)


def _expected(data: object) -> bytes | None:
    """The bytes ``echo`` must answer for ``data``, where they are plainly defined."""
    cls = type(data)
    if cls is str:
        try:
            return str.encode(data, "utf-8")  # type: ignore[arg-type]
        except UnicodeEncodeError:
            return None
    if cls in (bytes, bytearray):
        return bytes(data)  # type: ignore[call-overload,no-any-return]
    if cls is memoryview:
        view: memoryview = data  # type: ignore[assignment]
        try:
            return view.tobytes()
        except ValueError:  # released
            return None
    return None


# -- the property --------------------------------------------------------------------------------


def _make_world(host: plugsafe.Host, hooked: bool, policy: plugsafe.Policy) -> World:
    wat = HOOKED_WAT if hooked else PLAIN_WAT
    other = host.load(PLAIN_WAT, name="other")
    world = World(host.load(wat, policy=policy, name="p"), other)
    return world


@st.composite
def operations(draw: st.DrawFn, world: World) -> list[tuple[str, object, tuple[object, ...]]]:
    ops: list[tuple[str, object, tuple[object, ...]]] = []
    real = sorted(PARAMS)
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 3)) == 0:
            ops.append(("call", draw(names(["echo", "echo", "i32x2"])), (draw(datas),)))
            continue
        name = draw(names(real))
        params = PARAMS.get(name if type(name) is str else "", ("i32",))
        count = len(params) + draw(st.sampled_from([0, 0, 0, 0, -1, 1]))
        args = [draw(hostile_value(world)) for _ in range(max(count, 0))]
        honest = draw(st.integers(0, 2)) == 0  # an honest call first: the short path is aimed
        if honest and type(name) is str and name in PARAMS:
            ops.append(("invoke", name, tuple(0.5 if t[0] == "f" else 1 for t in params)))
        ops.append(("invoke", name, tuple(args)))
    return ops


POLICIES = [
    plugsafe.Policy(),
    plugsafe.Policy(fuel=10**7, timeout=None),
    plugsafe.Policy(timeout=5.0, allow={"hook"}),
    plugsafe.Policy(fresh_instance=True),
]


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[plugsafe.Host, plugsafe.Host]]:
    """A plain Host, and one with an ``on_call`` callback (calls then go through a wrapper that
    reports each one, refused ones too, with the name and context as given)."""
    reports: list[plugsafe.CallStats] = []
    with plugsafe.Host() as plain, plugsafe.Host(on_call=reports.append) as reporting:
        for h in (plain, reporting):

            @h.function
            def hook(x: int) -> int:
                return x ^ 1  # any i32 answers an i32 (one out of range would trap the guest)

        yield plain, reporting
        assert reports  # (every call was reported)


def _check_op(world: World, kind: str, name: object, args: tuple[object, ...]) -> None:
    plugin = world.plugin
    world.raised.clear()
    fn = plugin.invoke if kind == "invoke" else plugin.call
    try:
        out = fn(name, *args)  # type: ignore[arg-type]
    except plugsafe.PlugsafeError:
        out = None
    except Exception as exc:  # the bug this fuzzer looks for
        raise AssertionError(f"{kind}({_shown(name)}, ...) raised {type(exc).__name__}") from exc
    except BaseException as exc:
        # Only the very BaseException an argument raised may propagate.
        if not any(exc is r for r in world.raised):
            raise AssertionError(f"{kind} raised {type(exc).__name__}, no argument's") from exc
        out = None
    else:
        # What a name names is the str it holds (a subclass's own __eq__ and __str__ aside).
        plain = str.__str__(name) if issubclass(type(name), str) else None
        if kind == "call" and plain == "echo":
            want = _expected(args[0])
            if want is not None:
                assert out == want, (args[0], out, want)
        if plain == "bump":
            world.bumps += 1
    # Whatever happened, the plugin's lock is free and no thread owns it.
    assert not plugin._calls.lock.locked(), (kind, _shown(name))
    assert plugin._calls.owner is None


@FUZZ
@given(
    data=st.data(), hooked=st.booleans(), policy=st.sampled_from(POLICIES), reported=st.booleans()
)
def test_hostile_arguments_end_in_a_value_or_a_typed_error_and_the_plugin_survives(
    hosts: tuple[plugsafe.Host, plugsafe.Host],
    data: st.DataObject,
    hooked: bool,
    policy: plugsafe.Policy,
    reported: bool,
) -> None:
    host = hosts[reported]
    if hooked and "hook" not in policy.allow:
        policy = plugsafe.Policy(**{**_fields(policy), "allow": {"hook"}})
    world = _make_world(host, hooked, policy)
    try:
        assert world.plugin.invoke("bump") == 1
        world.bumps = 1
        for kind, name, args in data.draw(operations(world), label="ops"):
            _check_op(world, kind, name, args)
        if world.plugin.closed:
            with pytest.raises(plugsafe.PluginClosedError):
                world.plugin.invoke("bump")
            return
        # Usable, and (unless every call has a fresh instance) the same instance throughout:
        # nothing an argument did discarded it.
        after = world.plugin.invoke("bump")
        if not policy.fresh_instance:
            assert after == world.bumps + 1, (after, world.bumps)
        assert world.plugin.invoke("i32x2", 2, 3) == 5
        assert world.plugin.call("echo", b"ok") == b"ok"
        if hooked:
            assert world.plugin.invoke("hooked", 4) == 5
        assert world.other.invoke("i32x2", 1, 1) == 2
    finally:
        world.plugin.close()
        world.other.close()


def _shown(x: object) -> str:
    try:
        return repr(x)
    except Exception:
        return f"<a {type(x).__name__}>"


def _fields(policy: plugsafe.Policy) -> dict[str, Any]:
    return {f: getattr(policy, f) for f in ("fuel", "timeout", "fresh_instance", "memory")}
