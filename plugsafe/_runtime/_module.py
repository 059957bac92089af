"""Compiled modules and the plain-data description of their imports and exports.

The description comes from the binary (``_wasmbin.describe``), never from wasmtime-py's type
objects: turning a ``v128`` ValType into a string aborts the process (issue 12, class 1).
"""

from __future__ import annotations

import marshal
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from .._lazymodule import lazy_module
from .._types import ExportInfo, ExternKind, ImportInfo
from ._backend import WasmFailure, failure_from_addresses
from ._forksafe import Owned
from ._lib import address, ffi, lib, take_bytes

if TYPE_CHECKING:
    from .. import _wasmbin
else:
    # The binary reader, on the first module described from its binary (a compile): a load from
    # the disk cache reads the description stored with the artifact (issue 14: cold start).
    _wasmbin = lazy_module("plugsafe._wasmbin", globals(), "_wasmbin")

__all__ = [
    "NUMERIC_TYPES",
    "VALKINDS",
    "Description",
    "Module",
    "MAX_DESCRIPTION",
    "check_description",
    "describe_binary",
    "load_description",
    "parse_description",
]

# The numeric value types' wasm_valkind_t codes (WASM_I32 ... WASM_F64).
VALKINDS: dict[str, int] = {"i32": 0, "i64": 1, "f32": 2, "f64": 3}
# The value types a function may have for Instance.invoke and for host functions.
NUMERIC_TYPES = frozenset(VALKINDS)

# A module's imports, and its exports by name, as plain data.
Description = tuple[tuple[ImportInfo, ...], dict[str, ExportInfo]]


def describe_binary(wasm: bytes) -> Description:
    """The imports and exports of ``wasm``, read from the binary by ``_wasmbin``.

    Never from wasmtime-py's type objects: ``str()`` of a ``v128`` ValType is a Rust panic that
    aborts the process, and every other type (references, exnref, typed references) would need
    a case of its own. The binary names every value type the same way. Raises WasmFailure if
    the reader cannot make sense of a module wasmtime accepted.
    """
    try:
        imports, exports = _wasmbin.describe(wasm)
    except _wasmbin.WasmFormatError as exc:
        raise WasmFailure(f"cannot describe its imports and exports: {exc}") from None
    return imports, {e.name: e for e in exports}


class Module:
    """A compiled module and a plain-data description of its imports and exports.

    Made by ``Engine.compile`` (described from the binary) or ``Engine.deserialize`` (with the
    description stored beside the artifact); nothing asks wasmtime for types.
    """

    def __init__(self, module: Owned, description: Description) -> None:
        # The wasmtime_module_t, freed with this object (never in a forked child).
        self._module = module
        self.imports: tuple[ImportInfo, ...] = description[0]
        self.exports: dict[str, ExportInfo] = description[1]
        # Looked up by every new instance: found once here, not per instance over every export
        # (a module of thousands of exported functions paid for them on each load).
        self.memory_exports: tuple[bytes, ...] = tuple(
            e.name.encode() for e in self.exports.values() if e.kind == "memory"
        )
        # The last import check that passed (its inputs and result): a memo owned by
        # ``_loader.check_imports`` (issue 14: it ran over every import on every load).
        self.import_check: tuple[object, object, int, dict[str, Any]] | None = None
        # What the Plugin derives from the exports and imports alone, once per module (owned
        # by ``_plugin.module_facts``; issue 14: every load derived it again).
        self.facts: object = None

    def serialize(self) -> bytes:
        """The compiled artifact, for plugsafe's own on-disk cache."""
        out = ffi.new("wasm_byte_vec_t *")
        error = lib.wasmtime_module_serialize(self._module.raw, out)
        if error:
            raise failure_from_addresses(address(error), 0)
        return take_bytes(out)

    def describe(self, extra: Mapping[str, object] | None = None) -> bytes:
        """Imports and exports as plain data, stored beside the artifact in the on-disk cache.

        A cache hit then needs neither the binary nor a parse of it. ``extra`` adds top-level
        keys of the caller's (the loader stores what the precheck measured; values of str, int,
        None and tuples of them only); ``parse_description`` ignores them. See
        ``load_description`` for the format.
        """
        return marshal.dumps(
            {
                **(extra or {}),
                "imports": tuple(
                    (i.module, i.name, i.kind, i.params, i.results, i.detail) for i in self.imports
                ),
                "exports": tuple(
                    (e.name, e.kind, e.params, e.results, e.detail) for e in self.exports.values()
                ),
            },
            _MARSHAL_VERSION,
        )


# The description is a dict of str, int, None and tuples of them in marshal's format (version 4
# is read by every Python 3 since 3.4, and written the same by all of them). Not JSON (issue 14):
# `json` is about 2 % of a cold start's instructions, for a few hundred bytes read once; marshal
# is built in, and C. Reading it back is not left to ``marshal.loads``, which is not meant for
# hostile bytes: a 5-byte tuple header of 2**31 - 1 items made it allocate 16 GiB before it
# found no items (tidy9). The on-disk cache hands back only entries whose sha256 matches, in a
# directory only this user can write, but another process of that user can write such an entry
# on purpose (tests/test_tidy9_cache.py). So ``load_description`` reads the subset ``describe``
# writes itself, every count bounded by the bytes left, and nothing else.
_MARSHAL_VERSION = 4
# The largest description read or written (a module of 16 MiB, the default max_module_size, of
# nothing but exports describes itself in less); larger ones are not cached.
MAX_DESCRIPTION = 64 << 20
# Containers inside the top-level dict: describe's rows nest 3 deep (meta, memories, a memory).
_MAX_DEPTH = 4
_PENDING = object()  # a tuple's reference slot while its items are read (marshal's "reserve")


def load_description(description: bytes) -> dict[str, object] | None:
    """``Module.describe``'s output as the dict it wrote; None if it is not one.

    Reads marshal's format (version 4) as ``marshal.loads`` would, but only what ``describe``
    writes: one dict of str keys whose values are str, int, None and tuples of them, with
    marshal's back-references. Any other type, a count larger than the bytes left (an item takes
    one byte at least), nesting deeper than describe's, a reference to nothing or to an
    unfinished tuple, trailing bytes, or more than MAX_DESCRIPTION bytes: None. Its memory is
    therefore bounded by a small multiple of its input's size.
    """
    if len(description) > MAX_DESCRIPTION or description[:1] not in (b"{", b"\xfb"):
        return None
    try:
        data, end = _unmarshal(description)
    except (ValueError, IndexError, UnicodeDecodeError, RecursionError):
        return None
    return data if end == len(description) and type(data) is dict else None


def _unmarshal(raw: bytes) -> tuple[object, int]:
    """(the object marshal's bytes ``raw`` start with, the offset after it): see
    ``load_description`` for the subset. Raises ValueError (or IndexError) on anything else.

    Every count is checked against the bytes left before anything is made of it (an item takes
    a byte at least): what marshal.loads did not do. Written for speed (a cold start reads one):
    branches by how often describe's output has each code, offsets passed rather than shared.
    """
    refs: list[object] = []
    # The height of each object kept for back-references (0: not a tuple; a tuple of those:
    # 1; ...): a reference is as deep as what it names, and nesting stays bounded through them.
    heights: list[int] = []
    size = len(raw)
    from_bytes = int.from_bytes

    def read(pos: int, depth: int) -> tuple[object, int, int]:
        """(the object at ``pos``, the offset after it, its height), at nesting ``depth``."""
        code = raw[pos]
        flag = code & 0x80  # FLAG_REF: the object is kept for later back-references
        code &= 0x7F
        pos += 1
        value: object
        if code == 0x72:  # 'r': a back-reference
            end = pos + 4
            if end > size:
                raise ValueError("truncated")
            index = from_bytes(raw[pos:end], "little")
            if index >= len(refs) or refs[index] is _PENDING:
                raise ValueError("bad reference")
            height = heights[index]
            if height and depth + height > _MAX_DEPTH:
                raise ValueError("nested too deep")
            return refs[index], end, height
        if code == 0x7A or code == 0x5A:  # 'z' 'Z': short ASCII (interned)
            end = pos + 1 + raw[pos]
            if end > size:
                raise ValueError("truncated")
            value = raw[pos + 1 : end].decode("ascii")
        elif code == 0x29 or code == 0x28:  # ')' '(': a tuple (small: a 1-byte count)
            if depth >= _MAX_DEPTH:
                raise ValueError("nested too deep")
            if code == 0x29:
                n = raw[pos]
                pos += 1
            else:
                n = from_bytes(raw[pos : pos + 4], "little", signed=True)
                pos += 4
            if n < 0 or n > size - pos:
                raise ValueError("count out of range")
            slot = len(refs)
            if flag:
                refs.append(_PENDING)  # (no tuple inside itself)
                heights.append(0)
            items = []
            height = 0
            depth += 1
            for _ in range(n):
                item, pos, below = read(pos, depth)
                items.append(item)
                if below > height:
                    height = below
            value = tuple(items)
            height += 1
            if flag:
                refs[slot] = value
                heights[slot] = height
            return value, pos, height
        elif code == 0x69:  # 'i': a 32-bit int
            end = pos + 4
            if end > size:
                raise ValueError("truncated")
            value = from_bytes(raw[pos:end], "little", signed=True)
        elif code == 0x4E:  # 'N'
            value, end = None, pos
        elif code in (0x61, 0x41, 0x75, 0x74):  # 'a' 'A' ASCII, 'u' 't' UTF-8 (interned)
            n = from_bytes(raw[pos : pos + 4], "little")
            pos += 4
            end = pos + n
            if end > size:
                raise ValueError("truncated")
            value = raw[pos:end].decode(
                "ascii" if code in (0x61, 0x41) else "utf-8", "surrogatepass"
            )
        elif code == 0x6C:  # 'l': a long, 15-bit digits, least significant first
            end = pos + 4
            if end > size:
                raise ValueError("truncated")
            n = from_bytes(raw[pos:end], "little", signed=True)
            digits, pos = abs(n), end
            end = pos + 2 * digits
            if end > size:
                raise ValueError("count out of range")
            number = 0
            for i in range(digits):
                d = from_bytes(raw[pos + 2 * i : pos + 2 * i + 2], "little")
                if d >= 1 << 15 or (d == 0 and i == digits - 1):
                    raise ValueError("bad long digit")
                number |= d << (15 * i)
            value = -number if n < 0 else number
        elif code == 0x7B and depth == 0:  # '{': the one dict, of str keys, until '0'
            mapping: dict[str, object] = {}
            slot = len(refs)
            if flag:
                refs.append(_PENDING)  # (no dict inside itself)
                heights.append(0)
            while raw[pos] != 0x30:
                key, pos, _height = read(pos, 1)
                if type(key) is not str:
                    raise ValueError("not a str key")
                mapping[key], pos, _height = read(pos, 1)
            return mapping, pos + 1, 0
        else:
            raise ValueError(f"type code {code:#x} is not in a description")
        if flag:
            refs.append(value)
            heights.append(0)
        return value, end, 0

    value, end, _height = read(0, 0)
    return value, end


_KINDS = frozenset({"func", "memory", "table", "global", "tag", "unknown"})


def parse_description(description: bytes | dict[str, object] | None) -> Description:
    """Module.describe's output back as infos; WasmFailure if it is not exactly that shape.

    ``description`` is the bytes, or what ``load_description`` made of them.
    """

    def strs(v: object) -> tuple[str, ...]:
        if type(v) is not tuple or not all(type(x) is str for x in v):
            raise ValueError("not a tuple of strings")
        return v

    def kind(v: object) -> ExternKind:
        if type(v) is not str or v not in _KINDS:
            raise ValueError(f"unknown kind {v!r}")
        return cast(ExternKind, v)

    def text(v: object) -> str:
        if type(v) is not str:
            raise ValueError("not a string")
        return v

    data = load_description(description) if isinstance(description, bytes) else description
    try:
        if data is None:
            raise ValueError("not a description")
        imports = tuple(
            ImportInfo(text(n), kind(k), strs(p), strs(r), text(d), text(m))
            for m, n, k, p, r, d in _rows(data["imports"])
        )
        exports = {
            text(n): ExportInfo(text(n), kind(k), strs(p), strs(r), text(d))
            for n, k, p, r, d in _rows(data["exports"])
        }
    except (ValueError, TypeError, KeyError) as exc:
        raise WasmFailure(f"unreadable module description: {exc}") from None
    return imports, exports


def _rows(v: object) -> tuple[tuple[object, ...], ...]:
    if type(v) is not tuple or not all(type(row) is tuple for row in v):
        raise ValueError("not a tuple of rows")
    return v


# wasm_externkind_t as wasmtime's C API reports it (4, a tag, is wasmtime's own).
_EXTERN_CODES: dict[str, int] = {"func": 0, "global": 1, "table": 2, "memory": 3, "tag": 4}
# wasm_valtype_t * of i32, i64, f32 and f64 (VALKINDS' order), made once for the process and
# never freed: a value type belongs to no engine, and these are four small allocations.
_NUMERIC: list[Any] = []
# The same of funcref and externref (wasm_valkind_t WASM_FUNCREF, WASM_EXTERNREF), and the
# names _wasmbin gives them (the long forms are the same types: wasmtime finds them equal).
_FUNCREF, _EXTERNREF = 129, 128
_REFERENCES: list[Any] = []
_REFERENCE_NAMES = {"funcref": 0, "(ref null func)": 0, "externref": 1, "(ref null extern)": 1}
# A table's maximum as wasm_tabletype_limits reports none (wasm_limits_max_default).
_NO_MAXIMUM = 0xFFFFFFFF


def check_description(module: Any, description: Description) -> None:
    """Raise WasmFailure unless ``description`` says what wasmtime says of the
    ``wasmtime_module_t *`` ``module``: the same imports and exports, in order, by name and
    kind, and for functions the same numbers of parameters and results, each of the four
    number types exactly where the description names it and none where it names another type.

    Calls trust the description (the unchecked call packs and unpacks the value slots it
    gives), so one that lies made a call crash the process (tidy9): ``Engine.deserialize`` runs
    this on every module it loads. Types are compared with ``wasmtime_wasm_valtype_equal``,
    never read with ``wasm_valtype_kind``, which aborts the process on ``v128`` and typed
    references (for those the description's own name is kept: calls refuse them anyway).
    Tags' types are compared as functions'; globals' by mutability and content type, tables'
    by element type (``_same_value``: numbers, funcref and externref by name) and limits;
    memories' limits in pages, and a memory wasmtime calls shared or 64-bit is never the
    description's (plugsafe's engines compile neither: the description does not name them).
    What the description says of them is what ``inspect`` shows (cache11, tidy12: tables).
    """
    imports, exports = description
    vec = ffi.new("wasm_importtype_vec_t *")
    lib.wasmtime_module_imports(module, vec)
    try:
        if vec.size != len(imports):
            raise WasmFailure(f"it has {vec.size} imports, its description {len(imports)}")
        for i, imp in enumerate(imports):
            item = vec.data[i]
            if (
                _name(lib.wasm_importtype_module(item)) != imp.module
                or _name(lib.wasm_importtype_name(item)) != imp.name
            ):
                raise WasmFailure(f"its import {i} is not {imp.module}.{imp.name}")
            _check_extern(lib.wasm_importtype_type(item), imp, "import")
    finally:
        lib.wasm_importtype_vec_delete(vec)
    vec = ffi.new("wasm_exporttype_vec_t *")
    lib.wasmtime_module_exports(module, vec)
    try:
        if vec.size != len(exports):
            raise WasmFailure(f"it has {vec.size} exports, its description {len(exports)}")
        for i, exp in enumerate(exports.values()):
            item = vec.data[i]
            if _name(lib.wasm_exporttype_name(item)) != exp.name:
                raise WasmFailure(f"its export {i} is not {exp.name!r}")
            _check_extern(lib.wasm_exporttype_type(item), exp, "export")
    finally:
        lib.wasm_exporttype_vec_delete(vec)


def _name(vec: Any) -> str:
    """A ``wasm_name_t *`` (borrowed) as text (names are UTF-8: wasm validates them)."""
    return bytes(ffi.buffer(vec.data, vec.size)).decode("utf-8", "replace") if vec.size else ""


def _check_extern(ty: Any, info: ImportInfo | ExportInfo, what: str) -> None:
    kind = info.kind
    if lib.wasm_externtype_kind(ty) != _EXTERN_CODES.get(kind):
        raise WasmFailure(f"its {what} {info.name!r} is not a {kind}")
    if kind == "func" or kind == "tag":
        if kind == "func":
            func = lib.wasm_externtype_as_functype_const(ty)
        else:
            try:
                func = lib.wasm_tagtype_functype(lib.wasm_externtype_as_tagtype_const(ty))
            except AttributeError:  # pragma: no cover - a wasmtime without tag types in its C API
                return
        if info.detail or not (
            _same_values(lib.wasm_functype_params(func), info.params)
            and _same_values(lib.wasm_functype_results(func), info.results)
        ):
            raise WasmFailure(f"its {what} {info.name!r} is not of type {info}")
        return
    if info.params or info.results:
        raise WasmFailure(f"its {what} {info.name!r} is a {kind}, not a function")
    if kind == "memory":
        memory = lib.wasm_externtype_as_memorytype_const(ty)
        top = ffi.new("uint64_t *")
        limit = f" max {top[0]}" if lib.wasmtime_memorytype_maximum(memory, top) else ""
        if (
            lib.wasmtime_memorytype_is64(memory)
            or lib.wasmtime_memorytype_isshared(memory)
            or info.detail != f"min {lib.wasmtime_memorytype_minimum(memory)}{limit} pages"
        ):
            raise WasmFailure(f"its {what} {info.name!r} is not a memory of {info.detail}")
    elif kind == "table":
        # "<element> min N[ max M]", as _wasmbin writes it (an element's name holds no " min ").
        table = lib.wasm_externtype_as_tabletype_const(ty)
        limits = lib.wasm_tabletype_limits(table)
        element, _, sizes = info.detail.rpartition(" min ")
        # No maximum reads as u32::MAX (wasm_limits_max_default): either form says it then.
        said = (f"{limits.min} max {limits.max}",) + (
            (f"{limits.min}",) if limits.max == _NO_MAXIMUM else ()
        )
        if sizes not in said or not _same_value(lib.wasm_tabletype_element(table), element):
            raise WasmFailure(f"its {what} {info.name!r} is not a table of {info.detail}")
    elif kind == "global":
        glob = lib.wasm_externtype_as_globaltype_const(ty)
        mutable = info.detail.startswith("mut ")
        content = info.detail[4:] if mutable else info.detail
        if lib.wasm_globaltype_mutability(glob) != mutable or not _same_value(
            lib.wasm_globaltype_content(glob), content
        ):
            raise WasmFailure(f"its {what} {info.name!r} is not a global of {info.detail}")


def _same_values(vec: Any, types: tuple[str, ...]) -> bool:
    """Whether the ``wasm_valtype_vec_t *`` ``vec`` agrees with ``types`` (see
    ``check_description``)."""
    if vec.size != len(types):
        return False
    if not _NUMERIC:
        _NUMERIC.extend(lib.wasm_valtype_new(code) for code in VALKINDS.values())
    equal = lib.wasmtime_wasm_valtype_equal
    # _same_value's rule, inline: a cold start checks every parameter of every function.
    for i, name in enumerate(types):
        actual = vec.data[i]
        code = VALKINDS.get(name)
        if code is not None:
            if not equal(actual, _NUMERIC[code]):
                return False
        elif any(equal(actual, number) for number in _NUMERIC):
            return False
    return True


def _same_value(actual: Any, name: str) -> bool:
    """Whether the ``wasm_valtype_t *`` ``actual`` (a global's content, a table's element)
    agrees with the type named ``name``: the very number type, ``funcref`` or ``externref`` it
    names, or (a name of another type: ``v128``, a typed reference) none of those six. (Two
    other types' names are not told apart: the C API has no kind for them.)"""
    if not _NUMERIC:
        _NUMERIC.extend(lib.wasm_valtype_new(code) for code in VALKINDS.values())
    if not _REFERENCES:
        _REFERENCES.extend(lib.wasm_valtype_new(code) for code in (_FUNCREF, _EXTERNREF))
    equal = lib.wasmtime_wasm_valtype_equal
    code = VALKINDS.get(name)
    if code is not None:
        return bool(equal(actual, _NUMERIC[code]))
    code = _REFERENCE_NAMES.get(name)
    if code is not None:
        return bool(equal(actual, _REFERENCES[code]))
    return not any(equal(actual, known) for known in (*_NUMERIC, *_REFERENCES))
