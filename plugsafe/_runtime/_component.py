"""WebAssembly components: compiling, describing, instantiating and calling them.

Everything here works on wasmtime-py's ``wasmtime.component`` objects and its ctypes
declarations of the component C API, and hands the rest of plugsafe plain data:

- :func:`describe` turns a compiled component's type into :class:`World` (imports and exported
  functions, each value type a :class:`VType` tree). wasmtime-py's type objects are walked once,
  at load, kind code first: a kind plugsafe does not handle is refused by its code without
  asking wasmtime-py anything more about it (some type objects abort the process when misused).
- :func:`lower` / :func:`lift` convert between checked Python values and the C API's
  ``wasmtime_component_val_t``; the checking (:func:`normalise`) happens first and entirely in
  Python, so a value that does not fit is refused before anything is allocated or run.
- :class:`ComponentInstance` is one Store holding one instance: fuel, the epoch deadline (with the
  same wall-clock guard as core instances, ``_ticker.guard``), store limits, and calls.

A trap poisons the whole Store (measured: every instance in it, new ones included), so the owner
discards the instance after any failed call.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import wasmtime
from wasmtime import _ffi as wf

from .._errors import type_name
from .._public import rehome
from . import _hostmem
from ._backend import WasmFailure, address, failure_from_addresses
from ._engine import NO_DEADLINE_TICKS, Engine
from ._forksafe import forksafe
from ._instance import Interruptible
from ._lib import error_text
from ._select import DEFAULT as _BACKEND
from ._store import give_wasi
from ._ticker import Ticker, guard, limit, prompt_off

# wasmtime-py's ``wasmtime.component`` (Component, Linker, types) is imported on first use: it
# costs tens of milliseconds, which a process that never loads a component should not pay.
#: Whether the installed wasmtime-py has it (wasmtime>=48 does).
AVAILABLE = importlib.util.find_spec("wasmtime.component") is not None


@functools.lru_cache(maxsize=1)
def _wc() -> Any:
    import wasmtime.component as wc

    return wc


__all__ = [
    "AVAILABLE",
    "COMPONENT_HEADER",
    "ComponentInstance",
    "CompiledComponent",
    "FuncDesc",
    "HostImpl",
    "ImportDesc",
    "LiftBudget",
    "LiftRefused",
    "MemoryRefused",
    "Record",
    "UnsupportedType",
    "VType",
    "ValueMismatch",
    "Variant",
    "World",
    "compile_component",
    "deserialize_component",
    "is_component",
    "normalise",
]

#: The preamble of a component binary: magic, version 0x0d, layer 1.
COMPONENT_HEADER = b"\0asm\x0d\x00\x01\x00"

_INT_RANGES = {
    "u8": (0, 0xFF),
    "u16": (0, 0xFFFF),
    "u32": (0, 0xFFFF_FFFF),
    "u64": (0, 0xFFFF_FFFF_FFFF_FFFF),
    "s8": (-0x80, 0x7F),
    "s16": (-0x8000, 0x7FFF),
    "s32": (-0x8000_0000, 0x7FFF_FFFF),
    "s64": (-0x8000_0000_0000_0000, 0x7FFF_FFFF_FFFF_FFFF),
}
_SCALARS = frozenset({"bool", "f32", "f64", "char", "string", *_INT_RANGES})
# Kinds plugsafe refuses at load (resources need handles' whole lifecycle; async types and error
# contexts need the async ABI, which the engines do not enable).
_REFUSED = {
    "own": "resources",
    "borrow": "resources",
    "future": "futures",
    "stream": "streams",
    "error-context": "error contexts",
    "map": "maps",
}


def is_component(wasm: bytes) -> bool:
    """Whether ``wasm`` starts with the component preamble (version 0x0d, layer 1)."""
    return wasm[:8] == COMPONENT_HEADER


class UnsupportedType(ValueError):
    """A function's type uses something plugsafe does not marshal (``kind`` says what)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class ValueMismatch(TypeError):
    """A Python value does not fit a component type; ``path`` locates it (``"img.width"``)."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


# -- plain descriptions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VType:
    """A component value type as plain data.

    ``kind`` is the WIT name (``"u32"``, ``"string"``, ``"list"``, ``"record"``, ...). ``names``
    are a record's fields, a variant's cases, an enum's or flags' names; ``of`` the element
    types: a list's (one), an option's payload (one), a result's ok and err (None when absent),
    a tuple's elements, a record's field types, a variant's case payloads (None for none).
    """

    kind: str
    of: tuple[VType | None, ...] = ()
    names: tuple[str, ...] = ()

    def wit(self) -> str:
        """The type as WIT text (records, variants, enums and flags spelled out structurally:
        the C API does not give their names)."""
        k = self.kind
        if k in _SCALARS:
            return k
        if k == "list":
            return f"list<{_wit(self.of[0])}>"
        if k == "option":
            return f"option<{_wit(self.of[0])}>"
        if k == "result":
            ok, err = self.of
            if ok is None and err is None:
                return "result"
            if err is None:
                return f"result<{_wit(ok)}>"
            return f"result<{'_' if ok is None else ok.wit()}, {err.wit()}>"
        if k == "tuple":
            return f"tuple<{', '.join(_wit(t) for t in self.of)}>"
        if k == "record":
            inner = ", ".join(f"{n}: {_wit(t)}" for n, t in zip(self.names, self.of, strict=True))
            return f"record {{ {inner} }}"
        if k == "variant":
            cases = ", ".join(
                n if t is None else f"{n}({t.wit()})"
                for n, t in zip(self.names, self.of, strict=True)
            )
            return f"variant {{ {cases} }}"
        if k in ("enum", "flags"):
            return f"{k} {{ {', '.join(self.names)} }}"
        return k


def _wit(t: VType | None) -> str:
    return "_" if t is None else t.wit()


@dataclass(frozen=True)
class FuncDesc:
    """One exported (or imported) function.

    ``interface`` is the exported interface's full name (``"ns:pkg/iface@1.0.0"``) or None for a
    world-level function; ``qualified`` is ``interface#name`` (or ``name``).
    """

    name: str
    interface: str | None
    params: tuple[tuple[str, VType], ...]
    result: VType | None
    #: Why the function cannot be called (a type plugsafe refuses), or None.
    unsupported: str | None = None

    @property
    def qualified(self) -> str:
        """``interface#name``, or ``name`` for a world-level function."""
        return self.name if self.interface is None else f"{self.interface}#{self.name}"

    def wit(self) -> str:
        """The signature as WIT text: ``func(a: u32, b: u32) -> u32``."""
        params = ", ".join(f"{n}: {t.wit()}" for n, t in self.params)
        return f"func({params})" + ("" if self.result is None else f" -> {self.result.wit()}")


@dataclass(frozen=True)
class ImportDesc:
    """One import: an interface instance (its functions) or a world-level function."""

    name: str
    kind: str  # "instance", "func", or what else a component may import ("resource", ...)
    functions: tuple[FuncDesc, ...] = ()


@dataclass(frozen=True)
class World:
    """What a component imports and exports (functions only; types are in the signatures)."""

    imports: tuple[ImportDesc, ...]
    exports: tuple[FuncDesc, ...]
    #: Exports that are not functions or interfaces of functions (types, resources, modules).
    other_exports: tuple[str, ...] = ()


# -- describing (load time only) ------------------------------------------------------------------

_KIND_NAMES = {
    "BOOL": "bool",
    "S8": "s8",
    "S16": "s16",
    "S32": "s32",
    "S64": "s64",
    "U8": "u8",
    "U16": "u16",
    "U32": "u32",
    "U64": "u64",
    "F32": "f32",
    "F64": "f64",
    "CHAR": "char",
    "STRING": "string",
}


# The parts (each scalar, list, field, case...) one function's types may have, and a whole
# world's: a type may name an earlier one twice (``tuple<t, t>``), so a component of a few
# hundred bytes, within wasmtime's limit on a type's size (1M), described a signature of 2^18
# leaves at ~50 us each through wasmtime-py's type objects (attack13: a load of 40 s). Real
# signatures have tens of parts, WASI's whole world a few thousand.
_MAX_FUNC_PARTS = 5_000
_MAX_WORLD_PARTS = 25_000


def _vtype(ty: Any, depth: int = 0, parts: list[int] | None = None) -> VType:
    """Describe a wasmtime-py ValType object; raises UnsupportedType for refused kinds.

    ``parts``: ``[how many more parts this function's types may have]``, counted down here
    (UnsupportedType past it)."""
    if depth > 100:
        # The component model caps type nesting far lower; a deeper one is not worth walking.
        raise UnsupportedType("a type nested over 100 levels deep", "nesting")
    if parts is not None:
        parts[0] -= 1
        if parts[0] < 0:
            raise UnsupportedType(f"types of over {_MAX_FUNC_PARTS:,} parts", "size")
    name = type(ty).__name__
    scalar = _KIND_NAMES.get(name.upper())
    if scalar is not None:
        return VType(scalar)
    d = depth + 1
    if name == "ListType":
        return VType("list", (_vtype(ty.element, d, parts),))
    if name == "OptionType":
        return VType("option", (_vtype(ty.payload, d, parts),))
    if name == "ResultType":
        ok, err = ty.ok, ty.err
        return VType(
            "result",
            (
                None if ok is None else _vtype(ok, d, parts),
                None if err is None else _vtype(err, d, parts),
            ),
        )
    if name == "TupleType":
        return VType("tuple", tuple(_vtype(t, d, parts) for t in ty.elements))
    if name == "RecordType":
        fields = ty.fields
        return VType(
            "record", tuple(_vtype(t, d, parts) for _, t in fields), tuple(n for n, _ in fields)
        )
    if name == "VariantType":
        cases = ty.cases
        return VType(
            "variant",
            tuple(None if t is None else _vtype(t, d, parts) for _, t in cases),
            tuple(n for n, _ in cases),
        )
    if name == "EnumType":
        return VType("enum", (), tuple(ty.names))
    if name == "FlagsType":
        return VType("flags", (), tuple(ty.names))
    kinds = {
        "OwnType": "own",
        "BorrowType": "borrow",
        "FutureType": "future",
        "StreamType": "stream",
        "ErrorContext": "error-context",
    }
    kind = kinds.get(name, name)
    raise UnsupportedType(f"{_REFUSED.get(kind, kind)} are not supported", kind)


def _func(name: str, interface: str | None, fty: Any, world: list[int] | None = None) -> FuncDesc:
    """``world``: ``[the parts the world's functions may still have]`` (WasmFailure past it:
    the component is refused; a function over its own share is only unsupported)."""
    parts = [_MAX_FUNC_PARTS]
    try:
        params = tuple((n, _vtype(t, 0, parts)) for n, t in fty.params)
        res = fty.result
        result = None if res is None else _vtype(res, 0, parts)
    except UnsupportedType as exc:
        return FuncDesc(name, interface, (), None, unsupported=str(exc))
    finally:
        if world is not None:
            world[0] -= _MAX_FUNC_PARTS - parts[0]
            if world[0] < 0:
                raise WasmFailure(
                    f"the component's function types have over {_MAX_WORLD_PARTS:,} parts in "
                    "all; plugsafe describes no more"
                )
    return FuncDesc(name, interface, params, result)


def _item_kind(item: Any) -> str:
    return {
        "FuncType": "func",
        "ComponentInstanceType": "instance",
        "ResourceType": "resource",
        "ComponentType": "component",
        "ModuleType": "module",
    }.get(type(item).__name__, "type")


def _item(ext: Any) -> Any:
    """The type of one import or export: wasmtime-py 50 wraps it in a ComponentExtern (its
    ``ty``), 48 gives the type itself."""
    return ext.ty if type(ext).__name__ == "ComponentExtern" else ext


# The imports and exports (an interface's functions included) a component may have: wasmtime's
# C API finds the n-th by walking to it, so listing them is quadratic in their number (attack13:
# 20,000 exports, 209 KB, took a load 8.8 s). Real worlds have tens to hundreds.
_MAX_ITEMS = 5_000


def _items(left: list[int], count: int) -> None:
    """Count ``count`` more imports or exports against ``left`` (``[how many more]``), before
    they are listed; WasmFailure past it."""
    left[0] -= count
    if left[0] < 0:
        raise WasmFailure(
            f"the component has over {_MAX_ITEMS:,} imports and exports (its interfaces' "
            "functions included); plugsafe describes no more"
        )


def describe(component: Any, engine: Engine) -> World:
    """The imports and exported functions of a compiled ``wasmtime.component.Component``."""
    eng: Any = engine._engine
    cty = component.type
    world = [_MAX_WORLD_PARTS]  # (see _func)
    left = [_MAX_ITEMS]  # (see _items)
    _items(left, wf.wasmtime_component_type_import_count(cty.ptr(), eng.ptr()))
    _items(left, wf.wasmtime_component_type_export_count(cty.ptr(), eng.ptr()))
    imports: list[ImportDesc] = []
    for name, ext in cty.imports(eng).items():
        item = _item(ext)
        kind = _item_kind(item)
        if kind == "func":
            imports.append(ImportDesc(name, "func", (_func(name, None, item, world),)))
        elif kind == "instance":
            funcs = []
            _items(left, wf.wasmtime_component_instance_type_export_count(item.ptr(), eng.ptr()))
            for fname, fext in item.exports(eng).items():
                fitem = _item(fext)
                if _item_kind(fitem) == "func":
                    funcs.append(_func(fname, name, fitem, world))
            imports.append(ImportDesc(name, "instance", tuple(funcs)))
        else:
            imports.append(ImportDesc(name, kind))
    exports: list[FuncDesc] = []
    other: list[str] = []
    for name, ext in cty.exports(eng).items():
        item = _item(ext)
        kind = _item_kind(item)
        if kind == "func":
            exports.append(_func(name, None, item, world))
        elif kind == "instance":
            _items(left, wf.wasmtime_component_instance_type_export_count(item.ptr(), eng.ptr()))
            for fname, fext in item.exports(eng).items():
                fitem = _item(fext)
                if _item_kind(fitem) == "func":
                    exports.append(_func(fname, name, fitem, world))
                else:
                    other.append(f"{name}#{fname}")
        else:
            other.append(name)
    return World(tuple(imports), tuple(exports), tuple(other))


# -- compiling ------------------------------------------------------------------------------------


@dataclass
class CompiledComponent:
    """A compiled component and its plain description."""

    component: Any  # wasmtime.component.Component
    world: World
    engine: Engine
    #: Fuel instantiation gets on top of the policy's: what copying the data segments costs
    #: (:func:`_hostmem.data_fuel`; 0 where copy-on-write initialisation is on).
    data_fuel: int = 0
    # Export indexes by qualified name, found on first use (they belong to the component, not
    # to an instance, so every instance of it reuses them).
    _indexes: dict[str, Any] = field(default_factory=dict)

    def serialize(self) -> bytes:
        """The compiled artifact (for the disk cache of *this* plugsafe only)."""
        return bytes(self.component.serialize())

    def export_index(self, func: FuncDesc) -> Any:
        """The ``ExportIndex`` of ``func`` (None if the component has no such export)."""
        key = func.qualified
        if key in self._indexes:
            return self._indexes[key]
        comp = self.component
        if func.interface is None:
            index = comp.get_export_index(func.name)
        else:
            outer = comp.get_export_index(func.interface)
            index = None if outer is None else comp.get_export_index(func.name, outer)
        self._indexes[key] = index
        return index


def _require() -> None:
    if not AVAILABLE:
        raise WasmFailure(
            f"this wasmtime-py ({wasmtime.__name__}) has no wasmtime.component API: "
            "components need wasmtime>=48 with component support"
        )


def _data_fuel(engine: Engine, wasm: bytes | None) -> int:
    return _hostmem.data_fuel(wasm) if wasm is not None and engine.host_memory else 0


def compile_component(engine: Engine, wasm: bytes) -> CompiledComponent:
    """Compile and validate a component binary; raises WasmFailure with wasmtime's message."""
    _require()
    try:
        comp = _wc().Component(engine._engine, wasm)
    except wasmtime.WasmtimeError as exc:
        raise WasmFailure(str(exc)) from None
    return CompiledComponent(comp, describe(comp, engine), engine, _data_fuel(engine, wasm))


def deserialize_component(
    engine: Engine, artifact: bytes, wasm: bytes | None = None, *, data_fuel: int | None = None
) -> CompiledComponent:
    """Load what :meth:`CompiledComponent.serialize` of this plugsafe wrote. Never call this on
    bytes from anywhere else: a crafted artifact runs arbitrary code. ``wasm``: the component it
    was compiled from (for :attr:`CompiledComponent.data_fuel`), or ``data_fuel`` itself as the
    same plugsafe counted it before (kept with the disk entry)."""
    _require()
    try:
        comp = _wc().Component.deserialize(engine._engine, artifact)
    except wasmtime.WasmtimeError as exc:
        raise WasmFailure(str(exc)) from None
    if data_fuel is None or not engine.host_memory:
        data_fuel = _data_fuel(engine, wasm)
    return CompiledComponent(comp, describe(comp, engine), engine, data_fuel)


# -- values: Python side --------------------------------------------------------------------------


class Record:
    """A WIT record returned by a component: its fields as attributes (kebab-case names in
    snake_case: ``new-width`` is ``new_width``).

    Compares equal to another Record with the same fields; ``vars(r)`` gives them as a dict.
    """

    def __init__(self, /, **fields: Any) -> None:
        # ``self`` positional-only: a field may be named ``self`` (attack13: a bare TypeError).
        self.__dict__.update(fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"Record({inner})"


@dataclass(frozen=True)
class Variant:
    """A WIT variant case: ``tag`` is the case's name, ``value`` its payload (None if none).

    Also what a ``result`` nested inside another value comes back as (tags ``"ok"``/``"err"``);
    a function's own ``result`` return value is unwrapped instead.
    """

    tag: str
    value: Any = None


def snake(name: str) -> str:
    """A WIT name as a Python attribute: ``new-width`` → ``new_width``."""
    return name.replace("-", "_")


_MISSING = object()


def _field(value: Any, name: str) -> Any:
    if isinstance(value, Mapping):
        for key in (snake(name), name):
            if key in value:
                return value[key]
        return _MISSING
    return getattr(value, snake(name), _MISSING)


def normalise(value: Any, ty: VType, path: str) -> Any:
    """Check ``value`` against ``ty`` and return the form :func:`lower` takes.

    Pure Python: raises ValueMismatch (with ``path``) before anything is allocated or run.
    Integers are range-checked here: wasmtime truncates them silently.
    """
    k = ty.kind
    if k in _INT_RANGES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueMismatch(f"expected an int ({k}), got {type_name(type(value))}", path)
        # The int it holds: a subclass's own comparisons or __int__ could take another value
        # past the range check, which wasmtime would truncate (attack7).
        value = int.__index__(value)
        lo, hi = _INT_RANGES[k]
        if not lo <= value <= hi:
            raise ValueMismatch(f"{value} is out of range for {k} ({lo} to {hi})", path)
        return value
    if k == "bool":
        if not isinstance(value, bool):
            raise ValueMismatch(f"expected a bool, got {type_name(type(value))}", path)
        return value
    if k in ("f32", "f64"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueMismatch(f"expected a float ({k}), got {type_name(type(value))}", path)
        try:
            # The number it holds, not a subclass's own __float__ (attack7).
            return (
                float.__float__(value) if isinstance(value, float) else float(int.__index__(value))
            )
        except OverflowError:
            raise ValueMismatch(f"{value} does not fit a {k}", path) from None
    if k == "char":
        if not isinstance(value, str) or len(value := str.__str__(value)) != 1:
            raise ValueMismatch("expected a str of one character", path)
        if 0xD800 <= ord(value) <= 0xDFFF:
            raise ValueMismatch("a surrogate is not a Unicode scalar value", path)
        return ord(value)
    if k == "string":
        if not isinstance(value, str):
            raise ValueMismatch(f"expected a str, got {type_name(type(value))}", path)
        try:
            # The UTF-8 of the str it holds: a subclass's own encode could answer bytes whose
            # len() lies about their buffer (attack7; the copy to wasmtime trusts len()).
            return str.encode(value, "utf-8")
        except UnicodeEncodeError:
            raise ValueMismatch("the str has lone surrogates (not valid UTF-8)", path) from None
    if k == "list":
        elem = cast(VType, ty.of[0])
        if elem.kind == "u8" and isinstance(value, (bytes, bytearray, memoryview)):
            # Plain bytes of the buffer's length (bytes() returns what a subclass's __bytes__
            # made, whose len() may lie: attack7).
            data = bytes(value)
            return data if type(data) is bytes else bytes(memoryview(data))
        if isinstance(value, (str, bytes, bytearray, memoryview, Mapping)) or not isinstance(
            value, Iterable
        ):
            want = "bytes" if elem.kind == "u8" else "a list"
            raise ValueMismatch(f"expected {want}, got {type_name(type(value))}", path)
        return [normalise(v, elem, f"{path}[{i}]") for i, v in enumerate(value)]
    if k == "option":
        if value is None:
            return None
        return (normalise(value, cast(VType, ty.of[0]), path),)
    if k == "tuple":
        if not isinstance(value, (tuple, list)) or len(value) != len(ty.of):
            raise ValueMismatch(f"expected a tuple of {len(ty.of)}", path)
        return tuple(
            normalise(v, cast(VType, t), f"{path}[{i}]")
            for i, (v, t) in enumerate(zip(value, ty.of, strict=True))
        )
    if k == "record":
        out = []
        for name, t in zip(ty.names, ty.of, strict=True):
            got = _field(value, name)
            if got is _MISSING:
                raise ValueMismatch(
                    f"the record needs a field {snake(name)!r} (a key, or an attribute)", path
                )
            out.append(normalise(got, cast(VType, t), f"{path}.{snake(name)}" if path else name))
        return tuple(out)
    if k in ("variant", "result"):
        names = ty.names if k == "variant" else ("ok", "err")
        tag = _field(value, "tag")
        payload = _field(value, "value")
        if isinstance(tag, str) and tag not in names and snake(tag) != tag:
            tag = _MISSING
        if not isinstance(tag, str) or tag not in names:
            raise ValueMismatch(
                f"expected an object with tag (one of {', '.join(names)}) and value", path
            )
        i = names.index(tag)
        pty = ty.of[i]
        if pty is None:
            if payload not in (None, _MISSING):
                raise ValueMismatch(f"case {tag!r} has no payload", path)
            return (i, None)
        if payload is _MISSING:
            raise ValueMismatch(f"case {tag!r} needs a value", path)
        return (i, normalise(payload, pty, f"{path}<{tag}>"))
    if k == "enum":
        if not isinstance(value, str) or (value := str.__str__(value)) not in ty.names:
            raise ValueMismatch(f"expected one of {', '.join(map(repr, ty.names))}", path)
        return value
    if k == "flags":
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            raise ValueMismatch("expected a set of flag names", path)
        got = set(value)
        bad = [v for v in got if not isinstance(v, str) or v not in ty.names]
        if bad:
            raise ValueMismatch(
                f"unknown flags {sorted(map(repr, bad))}; known: {', '.join(ty.names)}", path
            )
        return [n for n in ty.names if n in got]
    raise ValueMismatch(f"{k} values are not supported", path)


# -- values: C side -------------------------------------------------------------------------------

_V = wf.wasmtime_component_val_t
_K = {
    name: int(getattr(wf, f"WASMTIME_COMPONENT_{name.upper()}").value)
    for name in [
        *("bool", "s8", "u8", "s16", "u16", "s32", "u32", "s64", "u64", "f32", "f64", "char"),
        *("string", "list", "record", "tuple", "variant", "enum", "option", "result", "flags"),
    ]
}
# Kinds that lift to one Python value of fixed size: a result of one needs no budget.
_PLAIN = _SCALARS - {"string"}
_SCALAR_FIELD = {**{k: k for k in _INT_RANGES}, "f32": "f32", "f64": "f64", "bool": "boolean"}


def _name_vec(data: bytes) -> Any:
    """A wasm_name_t (byte vec) owning a copy of ``data`` (wasmtime frees it)."""
    return wf.bytes_to_capi(data)


def lower(v: Any, ty: VType, out: Any) -> None:
    """Write the normalised value ``v`` into the ``wasmtime_component_val_t`` ``out``."""
    k = ty.kind
    f = _SCALAR_FIELD.get(k)
    if f is not None:
        out.kind = _K[k]
        setattr(out.of, f, v)
        return
    if k == "char":
        out.kind = _K["char"]
        out.of.character = v
    elif k == "string":
        out.kind = _K["string"]
        out.of.string = _name_vec(v)
    elif k == "enum":
        out.kind = _K["enum"]
        out.of.enumeration = _name_vec(v.encode())
    elif k == "list":
        elem = cast(VType, ty.of[0])
        raw = wf.wasmtime_component_vallist_t()
        wf.wasmtime_component_vallist_new_uninit(ctypes.byref(raw), len(v))
        if elem.kind == "u8" and isinstance(v, bytes):
            _fill_bytes(raw.data, v)
        else:
            _fill(raw.data, v, [elem] * len(v))
        out.kind = _K["list"]
        out.of.list = raw
    elif k == "tuple":
        tup = wf.wasmtime_component_valtuple_t()
        wf.wasmtime_component_valtuple_new_uninit(ctypes.byref(tup), len(v))
        _fill(tup.data, v, list(ty.of))
        out.kind = _K["tuple"]
        out.of.tuple = tup
    elif k == "record":
        rec = wf.wasmtime_component_valrecord_t()
        wf.wasmtime_component_valrecord_new_uninit(ctypes.byref(rec), len(v))
        for i, (name, t, x) in enumerate(zip(ty.names, ty.of, v, strict=True)):
            entry = rec.data[i]
            entry.name = _name_vec(name.encode())
            lower(x, cast(VType, t), entry.val)
        out.kind = _K["record"]
        out.of.record = rec
    elif k == "option":
        out.kind = _K["option"]
        out.of.option = None if v is None else _boxed(v[0], cast(VType, ty.of[0]))
    elif k == "result":
        i, payload = v
        pty = ty.of[i]
        out.kind = _K["result"]
        out.of.result.is_ok = i == 0
        out.of.result.val = None if pty is None else _boxed(payload, pty)
    elif k == "variant":
        i, payload = v
        pty = ty.of[i]
        out.kind = _K["variant"]
        out.of.variant.discriminant = _name_vec(ty.names[i].encode())
        out.of.variant.val = None if pty is None else _boxed(payload, pty)
    elif k == "flags":
        flags = wf.wasmtime_component_valflags_t()
        wf.wasmtime_component_valflags_new_uninit(ctypes.byref(flags), len(v))
        for i, name in enumerate(v):
            flags.data[i] = _name_vec(name.encode())
        out.kind = _K["flags"]
        out.of.flags = flags
    else:  # normalise refused these already
        raise ValueMismatch(f"{k} values are not supported", "")


def _fill(data: Any, values: Sequence[Any], types: Sequence[VType | None]) -> None:
    for i, (x, t) in enumerate(zip(values, types, strict=True)):
        lower(x, cast(VType, t), data[i])


# The C API passes a list<u8> as one 32-byte value struct per byte. Building them one ctypes
# assignment at a time cost ~20 ms for a 64x64 RGB image; these fill and read the whole array
# with two strided slice copies instead (C speed), using the struct's layout.
_VSIZE = ctypes.sizeof(_V)
_FIELDS: Any = _V  # the class's field descriptors (typed as the fields' values by the stubs)
_UNION: Any = wf.wasmtime_component_valunion
_KIND_AT: int = _FIELDS.kind.offset
_U8_AT: int = _FIELDS.of.offset + _UNION.u8.offset
assert _FIELDS.kind.size == 1 and _KIND_AT < _VSIZE and _U8_AT < _VSIZE


def _fill_bytes(data: Any, v: bytes) -> None:
    n = len(v)
    if n == 0:
        return
    buf = bytearray(n * _VSIZE)
    buf[_KIND_AT::_VSIZE] = bytes((_K["u8"],)) * n
    buf[_U8_AT::_VSIZE] = v
    ctypes.memmove(data, (ctypes.c_char * len(buf)).from_buffer(buf), len(buf))


def _read_bytes(data: Any, n: int) -> bytes:
    if n == 0:
        return b""
    raw = ctypes.string_at(data, n * _VSIZE)
    if raw[_KIND_AT::_VSIZE] != bytes((_K["u8"],)) * n:
        raise WasmFailure("wasmtime returned a list<u8> with elements of another kind")
    return raw[_U8_AT::_VSIZE]


def _boxed(v: Any, ty: VType) -> Any:
    tmp = _V()
    lower(v, ty, tmp)
    # val_new moves the value into a heap box the enclosing value owns.
    return wf.wasmtime_component_val_new(ctypes.byref(tmp))


def _bytes_of(vec: Any) -> bytes:
    n = vec.size
    return ctypes.string_at(vec.data, n) if n else b""


class LiftRefused(Exception):
    """Lifting a result stopped: it would go over its byte budget (``deadline`` False; ``size``
    is what it would have reached at least), or the call's deadline passed (``deadline``)."""

    def __init__(self, size: int, deadline: bool) -> None:
        super().__init__("deadline" if deadline else f"over the budget ({size} bytes)")
        self.size = size
        self.deadline = deadline


# Lifting checks the clock once per this many list elements (~15 ms of one-byte records).
_CLOCK_EVERY = 1000


class LiftBudget:
    """What lifting one result may cost: ``limit`` bytes of lifted values (or None), counted as
    wasmtime holds them (one 32-byte value struct per value, plus the bytes of each string and
    byte list), and the deadline (``perf_counter`` seconds, or None) it must end by.

    Charged *before* each list, record, tuple or string is built, so a result over the limit is
    refused before plugsafe makes a Python object of it. The guest's own bytes are no measure:
    a one-byte record is 1 guest byte and three value structs and a Python object here.
    """

    __slots__ = ("arming", "deadline", "left", "limit", "steps")

    def __init__(
        self, limit: int | None, deadline: float | None, arming: list[float] | None = None
    ) -> None:
        self.limit = limit
        self.left = math.inf if limit is None else limit
        self.deadline = deadline
        self.steps = _CLOCK_EVERY
        # The instance's guard arming (Interruptible): -inf once the call was interrupted (a
        # cancelled invoke_async), which the clock alone never shows (attack13: a cancelled
        # call converted its whole result).
        self.arming = arming

    def charge(self, size: int) -> None:
        """Count ``size`` more bytes; raise LiftRefused when over the limit."""
        left = self.left - size
        self.left = left
        if left < 0:
            raise LiftRefused(cast(int, self.limit) - cast(int, left), False)

    def step(self, n: int) -> None:
        """``n`` more list elements are about to be lifted: check the deadline (and whether the
        call was interrupted) every ``_CLOCK_EVERY`` elements."""
        self.steps -= n
        if self.steps <= 0:
            self.steps = _CLOCK_EVERY
            deadline = self.deadline
            arming = self.arming
            if (deadline is not None and _perf_counter() >= deadline) or (
                arming is not None and arming[0] == -math.inf
            ):
                raise LiftRefused(0, True)


def lift(c: Any, ty: VType, top: bool = False, budget: LiftBudget | None = None) -> Any:
    """The Python value of the ``wasmtime_component_val_t`` ``c`` (not freed here).

    Kinds are checked against ``ty``: a mismatch would be wasmtime's bug, reported as one.
    ``top``: a top-level ``result`` comes back as ``Variant`` for the caller to unwrap.
    ``budget``: the size and time the lifting may take (:class:`LiftBudget`); raises
    LiftRefused when it would take more. The value ``c`` itself is already charged.
    """
    if budget is not None:
        return _lift_bounded(c, ty, budget)
    k = ty.kind
    if c.kind != _K.get(k, -1):
        raise WasmFailure(f"wasmtime returned a value of kind {c.kind} for a {k}")
    f = _SCALAR_FIELD.get(k)
    if f is not None:
        x = getattr(c.of, f)
        return bool(x) if k == "bool" else x
    if k == "char":
        return chr(c.of.character)
    if k == "string":
        return _bytes_of(c.of.string).decode("utf-8")
    if k == "enum":
        return _bytes_of(c.of.enumeration).decode("utf-8")
    if k == "list":
        elem = cast(VType, ty.of[0])
        n = c.of.list.size
        data = c.of.list.data
        if elem.kind == "u8":
            return _read_bytes(data, n)
        return [lift(data[i], elem) for i in range(n)]
    if k == "tuple":
        data = c.of.tuple.data
        return tuple(lift(data[i], cast(VType, t)) for i, t in enumerate(ty.of))
    if k == "record":
        data = c.of.record.data
        return Record(
            **{
                snake(n): lift(data[i].val, cast(VType, t))
                for i, (n, t) in enumerate(zip(ty.names, ty.of, strict=True))
            }
        )
    if k == "option":
        ptr = c.of.option
        return None if not ptr else lift(ptr.contents, cast(VType, ty.of[0]))
    if k == "result":
        i = 0 if c.of.result.is_ok else 1
        pty = ty.of[i]
        ptr = c.of.result.val
        value = None if pty is None or not ptr else lift(ptr.contents, pty)
        return Variant(("ok", "err")[i], value)
    if k == "variant":
        tag = _bytes_of(c.of.variant.discriminant).decode("utf-8")
        if tag not in ty.names:
            raise WasmFailure(f"wasmtime returned an unknown variant case {tag!r}")
        pty = ty.of[ty.names.index(tag)]
        ptr = c.of.variant.val
        return Variant(tag, None if pty is None or not ptr else lift(ptr.contents, pty))
    if k == "flags":
        raw = c.of.flags
        return {_bytes_of(raw.data[i]).decode("utf-8") for i in range(raw.size)}
    raise WasmFailure(f"cannot lift a {k}")


def _lift_in(c: Any, ty: VType, budget: LiftBudget) -> Any:
    # A plain value (number, char, bool) needs no budget: lifted directly.
    return lift(c, ty) if ty.kind in _PLAIN else _lift_bounded(c, ty, budget)


def _lift_bounded(c: Any, ty: VType, budget: LiftBudget) -> Any:
    """:func:`lift` under ``budget``: every value a container holds is charged (32 bytes, the
    size of wasmtime's value struct, plus a string's or byte list's bytes) before the container
    is built, and the clock is checked as list elements go by."""
    k = ty.kind
    if k in _PLAIN:
        return lift(c, ty)
    if c.kind != _K.get(k, -1):
        raise WasmFailure(f"wasmtime returned a value of kind {c.kind} for a {k}")
    if k == "string":
        budget.charge(c.of.string.size)
        return lift(c, ty)
    if k == "enum":
        budget.charge(c.of.enumeration.size)
        return lift(c, ty)
    if k == "list":
        elem = cast(VType, ty.of[0])
        n = c.of.list.size
        data = c.of.list.data
        if elem.kind == "u8":
            budget.charge(n * (_VSIZE + 1))  # the value structs, then the bytes object
            return _read_bytes(data, n)
        budget.charge(n * _VSIZE)
        if elem.kind in _PLAIN:
            # Nothing nested: check the clock per chunk of plain values.
            out: list[Any] = []
            for lo in range(0, n, _CLOCK_EVERY):
                hi = min(lo + _CLOCK_EVERY, n)
                budget.step(hi - lo)
                out.extend([lift(data[i], elem) for i in range(lo, hi)])
            return out
        out = []
        for i in range(n):
            budget.step(1)
            out.append(_lift_bounded(data[i], elem, budget))
        return out
    if k == "tuple":
        data = c.of.tuple.data
        budget.charge(len(ty.of) * _VSIZE)
        return tuple(_lift_in(data[i], cast(VType, t), budget) for i, t in enumerate(ty.of))
    if k == "record":
        data = c.of.record.data
        budget.charge(len(ty.of) * _VSIZE)
        return Record(
            **{
                snake(n): _lift_in(data[i].val, cast(VType, t), budget)
                for i, (n, t) in enumerate(zip(ty.names, ty.of, strict=True))
            }
        )
    if k == "option":
        ptr = c.of.option
        if not ptr:
            return None
        budget.charge(_VSIZE)
        return _lift_bounded(ptr.contents, cast(VType, ty.of[0]), budget)
    if k == "result":
        i = 0 if c.of.result.is_ok else 1
        pty = ty.of[i]
        ptr = c.of.result.val
        if pty is None or not ptr:
            return Variant(("ok", "err")[i], None)
        budget.charge(_VSIZE)
        return Variant(("ok", "err")[i], _lift_bounded(ptr.contents, pty, budget))
    if k == "variant":
        tag = _bytes_of(c.of.variant.discriminant).decode("utf-8")
        if tag not in ty.names:
            raise WasmFailure(f"wasmtime returned an unknown variant case {tag!r}")
        pty = ty.of[ty.names.index(tag)]
        ptr = c.of.variant.val
        if pty is None or not ptr:
            return Variant(tag, None)
        budget.charge(_VSIZE)
        return Variant(tag, _lift_bounded(ptr.contents, pty, budget))
    if k == "flags":
        budget.charge(c.of.flags.size * _VSIZE)  # bounded by the type's names anyway
        return lift(c, ty)
    raise WasmFailure(f"cannot lift a {k}")


# -- instances ------------------------------------------------------------------------------------

_perf_counter = time.perf_counter


def _failure(err: Any) -> WasmFailure:
    """A WasmFailure for a ``wasmtime_error_t*`` (a ctypes pointer; freed here).

    Its text is read by ``_lib.error_text``, the one reader of wasmtime errors (it was
    wasmtime-py's ``WasmtimeError``: the same C calls, a second home; tidy9).
    """
    return _classify(error_text(address(err))[0])


def _classify(message: str) -> WasmFailure:
    """A WasmFailure with a trap code where the message says which limit stopped the call (the
    component API reports traps as errors, without their codes)."""
    prompt_off()  # the call is back on this thread: see _ticker's "Prompt returns"
    code = None
    if "all fuel consumed by WebAssembly" in message:
        code = "OUT_OF_FUEL"
    elif "wasm trap: interrupt" in message:
        code = "INTERRUPT"
    elif "call stack exhausted" in message:
        code = "STACK_OVERFLOW"
    elif "wasm trap:" in message:
        code = "TRAP"
    return WasmFailure(message, code)


class MemoryRefused(WasmFailure):
    """The work failed after plugsafe's memory creator refused a memory (its initial size) or
    a growth past the cap: ``size`` bytes the instance's memories held then, ``asked`` the
    bytes they would have taken, ``cap`` the cap. ``message`` is wasmtime's, of the failure."""

    def __init__(self, failure: WasmFailure, size: int, asked: int, cap: int) -> None:
        super().__init__(failure.message, failure.trap_code, failure.exit_code)
        self.size = size
        self.asked = asked
        self.cap = cap


def _after_refusal(failure: WasmFailure, account: _hostmem.Account | None) -> WasmFailure:
    """``failure``, or a MemoryRefused when the work it ended had a memory refused (unless fuel,
    the deadline or the stack stopped it: a refused growth explains none of those)."""
    if account is None or account.refused is None or failure.trap_code in _LIMIT_CODES:
        return failure
    size, asked = account.refused
    return MemoryRefused(failure, size, asked, account.cap)


_LIMIT_CODES = frozenset({"OUT_OF_FUEL", "INTERRUPT", "STACK_OVERFLOW"})


def _reraise_interrupt(account: _hostmem.Account | None) -> None:
    """Raise the KeyboardInterrupt (or the like) a memory callback caught, now that wasmtime
    has returned (it could not cross into it)."""
    if account is not None and account.interrupt is not None:
        exc, account.interrupt = account.interrupt, None
        raise exc


#: A host function for a component import: takes the lifted arguments, returns the result
#: already checked by :func:`normalise` (None for a function without one); raises to fail.
HostImpl = Callable[[list[Any]], Any]

_TRAP_MESSAGE = b"plugsafe: a host function failed"
_CALLBACK = wf.wasmtime_component_func_callback_t
_no_finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _env: None)


def _host_callback(
    desc: FuncDesc,
    impl: HostImpl,
    sink: Callable[[BaseException], None],
    arg_limit: int | None = None,
    deadline: Callable[[], float | None] = lambda: None,
) -> Any:
    """The C callback of one imported function. Nothing raises through it into wasmtime: a
    failure goes to ``sink`` and the guest gets a trap.

    ``arg_limit``: the bytes each lifted argument may take (:class:`LiftBudget`; the guest
    chooses its arguments' size as it chooses its results'); ``deadline()``: the running
    call's deadline, which lifting them keeps. Over either, LiftRefused goes to ``sink``.
    """
    params = [t for _, t in desc.params]
    result_type = desc.result
    bounded = arg_limit is not None and any(t.kind not in _PLAIN for t in params)

    def callback(
        _env: Any, _ctx: Any, _ty: Any, args: Any, nargs: int, results: Any, nresults: int
    ) -> int:
        try:
            if nargs != len(params) or nresults != (0 if result_type is None else 1):
                raise WasmFailure(f"wasmtime called {desc.qualified} with the wrong arity")
            if bounded:
                end = deadline()
                values = []
                for i, t in enumerate(params):
                    budget = LiftBudget(arg_limit, end)
                    budget.charge(_VSIZE)
                    values.append(lift(args[i], t, budget=budget))
            else:
                values = [lift(args[i], t) for i, t in enumerate(params)]
            out = impl(values)
            if result_type is not None:
                lower(out, result_type, results[0])
            return 0
        except BaseException as exc:
            with contextlib.suppress(BaseException):  # nothing may cross into wasmtime
                sink(exc)
            trap = wf.wasmtime_trap_new(_TRAP_MESSAGE, len(_TRAP_MESSAGE))
            return ctypes.cast(trap, ctypes.c_void_p).value or 0

    return _CALLBACK(callback)


def _fuel_reader(store: wasmtime.Store) -> Callable[[], int]:
    """A function returning the fuel left in ``store`` (which must have fuel enabled)."""
    ctx = _BACKEND.ctx(store)
    if _BACKEND.name != "cffi":
        return functools.partial(_BACKEND.get_fuel, ctx)
    backend: Any = _BACKEND
    get_fuel, out = backend.lib.wasmtime_context_get_fuel, backend.ffi.new("uint64_t *")

    def read() -> int:
        if get_fuel(ctx, out):
            # Only when the store has no fuel, which a metered engine's never lacks: the
            # backend's own call reports it (and frees its error).
            return _BACKEND.get_fuel(ctx)
        return int(out[0])

    return read


class ComponentInstance(Interruptible):
    """One Store holding one instance of a component (discard it after any failure)."""

    def __init__(
        self,
        compiled: CompiledComponent,
        *,
        memory_size: int,
        table_elements: int,
        fuel: int | None,
        epochs: Ticker | None,
        timeout: float | None,
        wasi: object = None,
        host: Mapping[str, Mapping[str, tuple[FuncDesc, HostImpl]]] | None = None,
        sink: Callable[[BaseException], None] | None = None,
        until: float | None = None,
        max_host_arg: int | None = None,
        on_store: Callable[[ComponentInstance], None] | None = None,
    ) -> None:
        """``until``: the deadline (``perf_counter`` seconds) of the call this instance is made
        for, which instantiation (start functions included) runs under; None: a timeout of its
        own from now (at load). ``max_host_arg``: the bytes each argument of a host function
        call may take once lifted (see :func:`_host_callback`). ``host``: the host functions,
        by interface, then function name (interface ``""``: functions the world imports
        itself). ``on_store``: called with this instance once its store and deadline are
        ready, before anything runs (an asynchronous call's ``CallToken.making``, as for
        modules: a cancel then interrupts the start functions)."""
        _require()
        engine = compiled.engine
        self._compiled = compiled
        self._metered = engine.metered
        self._fuel = 0 if fuel is None else fuel
        # Never deleted in a forked child (see _forksafe: it could wait on a lock forever).
        store = self._store = forksafe(wasmtime.Store(engine._engine))
        # With plugsafe's memory creator (_hostmem) the cap is its Account's, on the sum of the
        # instance's memories: the store's limits would refuse a growth before the creator saw
        # it, so they cap only tables then. Without one, the store caps each memory.
        self._account = _hostmem.Account(memory_size) if engine.host_memory else None
        if self._account is None:
            store.set_limits(memory_size=memory_size, table_elements=table_elements)
        else:
            store.set_limits(table_elements=table_elements)
        if wasi is not None:
            # What _linker.wasi_config made; wasmtime's preview 2 context is built from it too.
            error = give_wasi(ctypes.cast(store._context(), ctypes.c_void_p).value or 0, wasi)
            if error:
                raise failure_from_addresses(error, 0)
        self._ticker = epochs
        self._ticks = NO_DEADLINE_TICKS if epochs is None else epochs.ticks(cast(float, timeout))
        # A deadline ``until`` at most this much before now + timeout is armed as a whole
        # timeout from now (a call that did not wait: a period late at most, as for modules).
        self._limit_after = math.inf if epochs is None else cast(float, timeout) - epochs.period
        # [armed at, armed at while limited, the limit]: see _ticker.guard and _ticker.limit.
        self._arming = [-math.inf, -math.inf, math.inf]
        if epochs is not None:
            store_ptr = ctypes.cast(store.ptr(), ctypes.c_void_p).value or 0
            guard(self, store_ptr, self._arming, cast(float, timeout), epochs)
        linker = _wc().Linker(engine._engine)
        if wasi is not None:
            linker.add_wasip2()
        # The C callbacks must live as long as the store that may call them.
        self._callbacks: list[Any] = []
        # The running call's deadline (perf_counter seconds), for host functions' arguments.
        self._end: float | None = None
        self._timeout = timeout
        if host:
            self._define(linker, host, sink or (lambda _exc: None), max_host_arg)
        # Reads the fuel left after each call (for last_call): on every component call, so
        # through cffi with its out-parameter allocated once where cffi is the backend (about a
        # quarter of wasmtime-py's Store.get_fuel, which goes through ctypes).
        self._fuel_left = _fuel_reader(store) if self._metered else None
        self.set_budget(until)
        if self._metered and compiled.data_fuel:
            # Copying the data segments in costs fuel (one unit per byte, without copy-on-write
            # initialisation): on top of the policy's, so start functions get all of that.
            store.set_fuel(self._fuel + compiled.data_fuel)
        if on_store is not None:
            # The store and its deadline are ready, nothing ran: a cancel from now on
            # interrupts the start functions (attack13: they ran on to the whole timeout).
            on_store(self)
        try:
            if self._account is None:
                self._instance = linker.instantiate(store, compiled.component)
            else:
                with _hostmem.creating(self._account):
                    self._instance = linker.instantiate(store, compiled.component)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            _reraise_interrupt(self._account)
            raise _after_refusal(_classify(str(exc)), self._account) from None
        _reraise_interrupt(self._account)
        self._funcs: dict[str, Any] = {}

    def _define(
        self,
        linker: Any,
        host: Mapping[str, Mapping[str, tuple[FuncDesc, HostImpl]]],
        sink: Callable[[BaseException], None],
        max_host_arg: int | None,
    ) -> None:
        root = linker.root()

        def deadline() -> float | None:
            return self._end

        def add(inst: Any, funcs: Mapping[str, tuple[FuncDesc, HostImpl]]) -> None:
            for fname, (desc, impl) in funcs.items():
                cb = _host_callback(desc, impl, sink, max_host_arg, deadline)
                self._callbacks.append(cb)
                name = fname.encode()
                err = wf.wasmtime_component_linker_instance_add_func(
                    inst.ptr(),
                    ctypes.create_string_buffer(name),
                    len(name),
                    cb,
                    None,
                    _no_finalizer,
                )
                if err:
                    raise _failure(err)

        with root:
            for interface, funcs in host.items():
                if not interface:
                    add(root, funcs)  # functions the world imports itself
                    continue
                with root.add_instance(interface) as inst:
                    add(inst, funcs)

    def set_budget(self, until: float | None = None) -> None:
        """Refill fuel and arm the deadline (the ticker protocol of ``_ticker.Ticker``):
        ``until`` (``perf_counter`` seconds), the end of a call that started before now (it
        waited for the plugin, or made this instance), or else a whole timeout from now.

        The epoch deadline goes through ``Ticker.deadline``: a ticker armed after idle starts
        ticking only shortly before its shortest timeout can end, and a deadline counted in
        ticks from now would come about that much late (a first call at twice its timeout).
        """
        if self._metered:
            self._store.set_fuel(self._fuel)
        ticker = self._ticker
        ticks = self._ticks
        if ticker is not None:
            now = _perf_counter()
            self._end = now + cast(float, self._timeout) if until is None else until
            ticker.last = now
            if not ticker.armed:
                ticker.arm()
            if until is None or until - now > self._limit_after:
                self._arming[0] = now  # lifts any limit: every call arms afresh
            else:
                # Every call arms its own deadline here, so the limit needs no lifting: the
                # next call's arming replaces it.
                limit(self._arming, now, until)
                ticks = ticker.ticks(max(until - now, 0.0))
            ticks = ticker.deadline(now, ticks)
        self._store.set_epoch_deadline(ticks)

    def memory_bytes(self) -> int:
        """The bytes the instance's memories hold now (0 without plugsafe's memory creator:
        wasmtime's C API cannot read a component's memory)."""
        account = self._account
        return 0 if account is None else account.total

    def fuel_used(self) -> int | None:
        """Fuel consumed since the last :meth:`set_budget` (None when unmetered)."""
        read = self._fuel_left
        return None if read is None else self._fuel - read()

    def _func(self, desc: FuncDesc) -> Any:
        func = self._funcs.get(desc.qualified)
        if func is None:
            index = self._compiled.export_index(desc)
            func = None if index is None else self._instance.get_func(self._store, index)
            if func is None:
                raise WasmFailure(f"the instance has no function {desc.qualified!r}")
            self._funcs[desc.qualified] = func
        return func

    def call(
        self,
        desc: FuncDesc,
        args: Sequence[Any],
        *,
        until: float | None = None,
        max_output: int | None = None,
    ) -> Any:
        """Call ``desc`` with normalised ``args`` under a fresh budget; its lifted result
        (a top-level ``result`` as a :class:`Variant`). Raises WasmFailure.

        ``until``: the call's deadline (``perf_counter`` seconds; else a whole timeout from
        now), which lifting the result keeps too; ``max_output``: the bytes the lifted result
        may take (:class:`LiftBudget`). Over either, LiftRefused: discard the instance then
        (its post-return function has not run).
        """
        func = self._func(desc)
        n = len(desc.params)
        params = (_V * max(n, 1))()
        lowered = 0
        try:
            for (_, ty), value in zip(desc.params, args, strict=True):
                lower(value, ty, params[lowered])
                lowered += 1
            result = _V()
            has_result = desc.result is not None
            self.set_budget(until)
            account = self._account
            if account is not None:
                account.refused = None
            ctx = self._store._context()
            err = wf.wasmtime_component_func_call(
                ctypes.byref(func._func),
                ctx,
                params,
                n,
                ctypes.byref(result) if has_result else None,
                1 if has_result else 0,
            )
            if err:
                failure = _failure(err)
                _reraise_interrupt(account)
                raise _after_refusal(failure, account)
            try:
                if desc.result is None:
                    value = None
                else:
                    if (max_output is None and until is None) or desc.result.kind in _PLAIN:
                        budget = None  # a plain number, char or bool: nothing to bound
                    else:
                        budget = LiftBudget(max_output, until, self._arming)
                        budget.charge(_VSIZE)  # the result's own value struct
                    value = lift(result, desc.result, budget=budget)
            finally:
                if has_result:
                    wf.wasmtime_component_val_delete(ctypes.byref(result))
            err = wf.wasmtime_component_func_post_return(ctypes.byref(func._func), ctx)
            if err:
                raise _after_refusal(_failure(err), account)
            if account is not None and account.interrupt is not None:
                _reraise_interrupt(account)  # the call completed: Ctrl-C arrived during a grow
            return value
        finally:
            for i in range(lowered):
                wf.wasmtime_component_val_delete(ctypes.byref(params[i]))


# plugsafe imports this module when a component is first loaded or Record/Variant first used
# (issue 14): they are plugsafe.Record and plugsafe.Variant however they are reached.
rehome(Record, Variant)
