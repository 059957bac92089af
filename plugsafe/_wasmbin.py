"""The one reader of the WebAssembly binary format in plugsafe: defensive, bounds-checked, no trust.

It serves three purposes, all on bytes that may come straight from an attacker:

- :func:`precheck`: a cheap look at a module *before* wasmtime compiles it, enforcing the
  policy's structural caps (see below);
- :func:`parse_memories`: the memories a module defines itself (wasmtime reports only exported
  ones, and plugsafe needs all of them to split the memory cap fairly);
- :func:`describe`: every import's and export's kind and type, with value types as strings
  (``"i32"``, ``"v128"``, ``"funcref"``, ...), read from the binary rather than from wasmtime's
  type objects (``str()`` of a v128 ``ValType`` aborts the process).

Anything malformed is refused with :class:`WasmFormatError` (a ``ValueError``) rather than by
trusting a length. None of this is a validator: wasmtime still validates everything that passes.

The precheck's caps
-------------------
wasmtime's threat model does not cover compilation: a 4 MB module of a million empty functions
took 92 s and 4.8 GiB to compile, a million nested blocks 4 s and 760 MiB, and one 2 MiB function
of small loops 5 s (the same code split over 30 functions: 1.4 s). So before compiling, plugsafe
reads the module's section headers and enforces:

- ``max_functions``: functions the module defines (the function section's count);
- ``max_imports`` / ``max_exports``: entries in the import and export sections;
- ``max_function_size``: bytes of any one function body;
- ``max_nesting``: how deeply ``block``/``loop``/``if``/``try``/``try_table`` nest in any body.

Counts are taken from the vector headers as declared: a module that *claims* a million functions
is refused without reading them. Nesting needs instruction boundaries (an immediate such as
``i32.const 2`` contains the byte of ``block``), so bodies are decoded instruction by instruction,
with every immediate of the MVP and of the 0xFC (bulk memory, saturating conversions, tables,
wide arithmetic), 0xFD (SIMD, relaxed SIMD) and 0xFE (atomics) prefixed instructions. Decoding is
skipped when a body cannot possibly be too deep: every nesting level needs one opener byte, so a
body with at most ``max_nesting - 1`` bytes of value 0x02/0x03/0x04/0x06/0x1F is safe, and
``bytes.count`` (C speed) settles that for nearly every real function. Bodies that must be
decoded skip runs of plain instructions (no nesting change, simple immediates) with one regular
expression match each, so the Python loop runs only around block boundaries.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING

from ._lazyre import lazy_re
from ._types import ExportInfo, ExternKind, ImportInfo

# What the caches keep of a module and the reader's error live in _wasmshape, which a cold start
# loads without this reader (issue 14); they are this module's names as well.
from ._wasmshape import (
    WASM_MAGIC,
    Caps,
    MemoryDecl,
    ModuleShape,
    PrecheckError,
    WasmFormatError,
    fits,
)

if TYPE_CHECKING:
    from dataclasses import dataclass
else:  # plugsafe's own, without importing dataclasses (see _dataclass_code)
    from ._dataclass_code import dataclass

__all__ = [
    "WASM_MAGIC",
    "Caps",
    "MemoryDecl",
    "ModuleShape",
    "PrecheckError",
    "WasmFormatError",
    "describe",
    "fits",
    "nesting_depths",
    "parse_memories",
    "precheck",
    "valtype_name",
]

_VERSION_1 = b"\x01\x00\x00\x00"
_PAGE = 65536

_SEC_TYPE = 1
_SEC_IMPORT = 2
_SEC_FUNCTION = 3
_SEC_TABLE = 4
_SEC_MEMORY = 5
_SEC_GLOBAL = 6
_SEC_EXPORT = 7
_SEC_CODE = 10
_SEC_TAG = 13


class _Reader:
    """Bounds-checked reads from ``data[pos:end]``; every overrun is a WasmFormatError."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data = data
        self.pos = pos
        self.end = end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise WasmFormatError("truncated: unexpected end of section")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def skip(self, n: int) -> None:
        if n > self.end - self.pos:
            raise WasmFormatError("truncated: unexpected end of section")
        self.pos += n

    def leb(self, max_bytes: int = 5) -> int:
        """Read an unsigned LEB128 (also skips a signed one: the bytes are the same shape)."""
        data = self.data
        result = 0
        shift = 0
        for _ in range(max_bytes):
            if self.pos >= self.end:
                raise WasmFormatError("truncated: unexpected end of section")
            b = data[self.pos]
            self.pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
            shift += 7
        raise WasmFormatError("malformed LEB128 number (too long)")

    def sleb(self, max_bytes: int = 5) -> int:
        """Read a signed LEB128 (s33 heap types and block types are the ones read for value)."""
        start = self.pos
        value = self.leb(max_bytes)
        bits = 7 * (self.pos - start)
        if self.data[self.pos - 1] & 0x40:
            value -= 1 << bits
        return value

    def name(self) -> str:
        n = self.leb()
        if n > self.end - self.pos:
            raise WasmFormatError("truncated: a name runs past the end of its section")
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise WasmFormatError("a name is not valid UTF-8") from None


def _sections(wasm: bytes) -> list[tuple[int, int, int]]:
    """(id, start, end) of every section, after checking the header and every size."""
    if wasm[:4] != WASM_MAGIC:
        raise WasmFormatError("not a WebAssembly binary (no \\0asm header)")
    if wasm[4:8] != _VERSION_1:
        # Components (layer 1) and future versions: wasmtime here accepts only core modules.
        raise WasmFormatError(f"unsupported WebAssembly binary version {wasm[4:8].hex()}")
    end = len(wasm)
    pos = 8
    out: list[tuple[int, int, int]] = []
    while pos < end:
        section_id = wasm[pos]
        header = _Reader(wasm, pos + 1, end)
        size = header.leb()
        start = header.pos
        if size > end - start:
            raise WasmFormatError(
                f"truncated: section {section_id} runs past the end of the module"
            )
        out.append((section_id, start, start + size))
        pos = start + size
    return out


# -- value types ------------------------------------------------------------------------------

_VALTYPES = {
    0x7F: "i32",
    0x7E: "i64",
    0x7D: "f32",
    0x7C: "f64",
    0x7B: "v128",
    0x70: "funcref",
    0x6F: "externref",
    0x6E: "anyref",
    0x6D: "eqref",
    0x6C: "i31ref",
    0x6B: "structref",
    0x6A: "arrayref",
    0x69: "exnref",
    0x71: "nullref",
    0x72: "nullexternref",
    0x73: "nullfuncref",
    0x74: "nullexnref",
}
# Abstract heap types, by their (one-byte) code, for (ref ...) / (ref null ...).
_HEAPTYPES = {code: name.removesuffix("ref") for code, name in _VALTYPES.items() if code <= 0x74}
_HEAPTYPES.update({0x71: "none", 0x72: "noextern", 0x73: "nofunc", 0x74: "noexn"})
_PACKED = {0x78: "i8", 0x77: "i16"}


def _heaptype_name(r: _Reader) -> str:
    code = r.sleb(5)
    if code >= 0:
        return str(code)  # a type index
    name = _HEAPTYPES.get(code & 0x7F)
    if name is None:
        raise WasmFormatError(f"unknown heap type 0x{code & 0x7F:02x}")
    return name


def _valtype_name(r: _Reader) -> str:
    b = r.byte()
    name = _VALTYPES.get(b)
    if name is not None:
        return name
    if b in (0x63, 0x64):
        heap = _heaptype_name(r)
        return f"(ref {'null ' if b == 0x63 else ''}{heap})"
    raise WasmFormatError(f"unknown value type 0x{b:02x}")


def valtype_name(code: bytes) -> str:
    """The text name of one encoded value type (``b"\\x7b"`` -> ``"v128"``)."""
    r = _Reader(code, 0, len(code))
    name = _valtype_name(r)
    if r.pos != len(code):
        raise WasmFormatError("trailing bytes after a value type")
    return name


# -- instruction decoding ---------------------------------------------------------------------

# Immediate kinds, one per opcode byte (single-byte opcodes), for the decoder's dispatch table.
_NONE = 0  # no immediate
_U32 = 1  # one LEB128 index or depth
_U32X2 = 2  # two LEB128 indices
_BLOCK = 3  # a block type; opens a nesting level
_MEMARG = 4  # alignment (bit 6: a memory index follows), [memory], offset
_S32 = 5  # i32.const
_S64 = 6  # i64.const
_F32 = 7  # four bytes
_F64 = 8  # eight bytes
_BR_TABLE = 9  # vector of labels, then the default label
_SELECT_T = 10  # vector of value types
_HEAPTYPE = 11  # ref.null
_END = 12  # closes a nesting level
_TRY_TABLE = 13  # block type, vector of catch clauses; opens a nesting level
_PREFIX_FC = 14
_PREFIX_FD = 15
_PREFIX_FE = 16
_DELEGATE = 17  # legacy exceptions: closes a try with a label
_BAD = 255  # not an instruction plugsafe knows

_KINDS = [_BAD] * 256
_NONE_OPS = (0x00, 0x01, 0x05, 0x0A, 0x0F, 0x19, 0x1A, 0x1B, 0xD1, 0xD3, 0xD4)
for _op in _NONE_OPS:
    _KINDS[_op] = _NONE
for _op in range(0x45, 0xC5):  # numeric instructions, sign extension included
    _KINDS[_op] = _NONE
for _op in (0x02, 0x03, 0x04, 0x06):  # block, loop, if, try (legacy exceptions)
    _KINDS[_op] = _BLOCK
_U32_OPS = (
    *(0x07, 0x08, 0x09, 0x0C, 0x0D, 0x10, 0x12, 0x14, 0x15, 0x20, 0x21, 0x22, 0x23, 0x24),
    *(0x25, 0x26, 0x3F, 0x40, 0xD2, 0xD5, 0xD6),
)
for _op in _U32_OPS:
    # catch, throw, rethrow, br, br_if, call, return_call, call_ref, local/global get/set,
    # table.get/set, memory.size/grow, ref.func, br_on_null/non_null
    _KINDS[_op] = _U32
for _op in (0x11, 0x13):  # call_indirect, return_call_indirect: type and table
    _KINDS[_op] = _U32X2
for _op in range(0x28, 0x3F):  # loads and stores
    _KINDS[_op] = _MEMARG
_KINDS[0x0B] = _END
_KINDS[0x0E] = _BR_TABLE
_KINDS[0x18] = _DELEGATE
_KINDS[0x1C] = _SELECT_T
_KINDS[0x1F] = _TRY_TABLE
_KINDS[0x41] = _S32
_KINDS[0x42] = _S64
_KINDS[0x43] = _F32
_KINDS[0x44] = _F64
_KINDS[0xD0] = _HEAPTYPE
_KINDS[0xFC] = _PREFIX_FC
_KINDS[0xFD] = _PREFIX_FD
_KINDS[0xFE] = _PREFIX_FE
del _op


def _byte_class(ops: object) -> bytes:
    return b"".join(re.escape(bytes([op])) for op in ops)  # type: ignore[attr-defined]


# A run of instructions that neither open nor close a level and whose immediates are simple,
# matched exactly as the decoder below would read them (same LEB length limits), so skipping a
# run never changes the result: anything else (a too-long LEB, a prefix, a block) ends the run
# and goes through the decoder, which reports it as before.
_LEB5 = rb"[\x80-\xff]{0,4}[\x00-\x7f]"
_LEB10 = rb"[\x80-\xff]{0,9}[\x00-\x7f]"
_PLAIN_NONE = _byte_class((*_NONE_OPS, *range(0x45, 0xC5)))
_PLAIN_U32 = _byte_class((*_U32_OPS, 0x41))
# Alternatives most frequent first; one-byte immediates get their own, cheaper branch.
_PLAIN_ALTS = (
    rb"[" + _PLAIN_NONE + rb"]+"
    rb"|[" + _PLAIN_U32 + rb"][\x00-\x7f]"
    rb"|["
    + _PLAIN_U32
    + rb"]"
    + _LEB5
    + rb"|\x42"
    + _LEB10
    # memarg: a one-byte alignment without a memory index, then the offset
    + rb"|[\x28-\x3e][\x00-\x3f]"
    + _LEB10
    + rb"|\x43.{4}|\x44.{8}"
)
# Possessive repetition (Python 3.11+) is about 4x faster: sre then keeps no backtracking
# state per instruction. Nothing here needs backtracking: the alternatives are prefix-free.
_PLAIN_RUN = lazy_re(
    rb"(?:" + _PLAIN_ALTS + (rb")*+" if sys.version_info >= (3, 11) else rb")*"), re.DOTALL
)
# The opcodes a plain run can start with: only these are worth a regular expression call.
_PLAIN_START = [False] * 256
for _op in (*_NONE_OPS, *range(0x45, 0xC5), *_U32_OPS, *range(0x28, 0x3F), 0x41, 0x42, 0x43, 0x44):
    _PLAIN_START[_op] = True
del _op

# Byte values of the instructions that open a nesting level (see the module docstring): 0x02,
# 0x03, 0x04, 0x06, 0x1F, counted one by one in precheck (five C-speed counts per body).

# 0xFC sub-opcodes and their immediates (memory.init: data and memory; memory.copy: two
# memories; table.init: element and table; table.copy: two tables; ...).
_FC: dict[int, int] = {i: _NONE for i in range(8)}  # saturating float-to-int conversions
_FC.update({8: _U32X2, 9: _U32, 10: _U32X2, 11: _U32, 12: _U32X2, 13: _U32, 14: _U32X2})
_FC.update({15: _U32, 16: _U32, 17: _U32})  # table.grow, table.size, table.fill
_FC.update({19: _NONE, 20: _NONE, 21: _NONE, 22: _NONE})  # wide arithmetic
# 0xFD (SIMD): memory operations, v128.const/i8x16.shuffle (16 bytes), lane indices (1 byte);
# every other SIMD instruction, relaxed SIMD (up to 0x113) included, has no immediate.
_FD_MEMARG = frozenset((*range(0, 12), 92, 93))
_FD_MEMARG_LANE = frozenset(range(84, 92))
_FD_BYTES16 = frozenset((12, 13))
_FD_LANE = frozenset(range(21, 35))
_FD_LAST = 0x113
# 0xFE (threads): atomic.fence has one reserved byte; everything else a memarg.
_FE_FENCE = 0x03
_FE_LAST = 0x4E


def _skip_valtype(r: _Reader) -> None:
    b = r.byte()
    if b in (0x63, 0x64):  # (ref null ht) / (ref ht)
        r.leb(5)  # s33: an abstract heap type (one byte) or a type index


def _blocktype(r: _Reader) -> None:
    # 0x40 (empty), a value type, or an s33 type index; all but reference types are one LEB.
    if r.pos < r.end and r.data[r.pos] in (0x63, 0x64):
        r.pos += 1
    r.leb(5)


def _memarg(r: _Reader) -> None:
    align = r.leb(5)
    if align & 0x40:  # multi-memory: a memory index follows the alignment
        r.leb(5)
    r.leb(10)  # offset (u64 with memory64)


def _decode(r: _Reader, cap: int, index: int, where: str) -> int:
    """Decode instructions from ``r.pos`` up to the ``end`` that closes level 1.

    Returns the deepest nesting (the expression itself = 1) and leaves ``r.pos`` after that
    ``end``. Raises WasmFormatError as soon as the depth passes ``cap``.
    """
    data = r.data
    end = r.end
    kinds = _KINDS
    plain = _PLAIN_RUN.match
    plain_start = _PLAIN_START
    depth = 1
    deepest = 1
    while depth:
        if r.pos >= end:
            raise WasmFormatError(f"{where}: body ends inside a block")
        op = data[r.pos]
        if plain_start[op]:
            # Skip a run of plain instructions at C speed (see _PLAIN_RUN); what it cannot
            # match (a too-long LEB, say) is decoded below and reported as before.
            skipped = plain(data, r.pos, end).end()  # type: ignore[union-attr]
            if skipped > r.pos:
                r.pos = skipped
                continue
        r.pos += 1
        kind = kinds[op]
        if kind == _NONE:
            continue
        if kind == _U32:
            r.leb()
        elif kind in (_END, _DELEGATE):
            depth -= 1
            if kind == _DELEGATE:
                r.leb()
        elif kind in (_BLOCK, _TRY_TABLE):
            _blocktype(r)
            if kind == _TRY_TABLE:
                for _ in range(r.leb()):
                    catch_kind = r.byte()
                    if catch_kind in (0, 1):  # catch / catch_ref: a tag, then a label
                        r.leb()
                    r.leb()
            depth += 1
            if depth > deepest:
                deepest = depth
                if depth > cap:
                    raise WasmFormatError(
                        f"function {index} nests blocks more than {cap} deep (policy max_nesting)",
                        cap="max_nesting",
                    )
        elif kind == _MEMARG:
            _memarg(r)
        elif kind == _U32X2:
            r.leb()
            r.leb()
        elif kind == _S32:
            r.leb(5)
        elif kind == _S64:
            r.leb(10)
        elif kind == _F32:
            r.skip(4)
        elif kind == _F64:
            r.skip(8)
        elif kind == _BR_TABLE:
            for _ in range(r.leb()):
                r.leb()
            r.leb()
        elif kind == _SELECT_T:
            for _ in range(r.leb()):
                _skip_valtype(r)
        elif kind == _HEAPTYPE:
            r.leb(5)
        elif kind == _PREFIX_FC:
            sub = r.leb()
            sub_kind = _FC.get(sub, _BAD)
            if sub_kind == _BAD:
                raise WasmFormatError(f"{where}: unknown instruction 0xFC {sub}")
            for _ in range(sub_kind):  # _NONE = 0, _U32 = 1, _U32X2 = 2 indices
                r.leb()
        elif kind == _PREFIX_FD:
            sub = r.leb()
            if sub in _FD_MEMARG:
                _memarg(r)
            elif sub in _FD_MEMARG_LANE:
                _memarg(r)
                r.skip(1)
            elif sub in _FD_BYTES16:
                r.skip(16)
            elif sub in _FD_LANE:
                r.skip(1)
            elif sub > _FD_LAST:
                raise WasmFormatError(f"{where}: unknown instruction 0xFD {sub}")
        elif kind == _PREFIX_FE:
            sub = r.leb()
            if sub == _FE_FENCE:
                r.skip(1)
            elif sub <= _FE_LAST:
                _memarg(r)
            else:
                raise WasmFormatError(f"{where}: unknown instruction 0xFE {sub}")
        else:
            raise WasmFormatError(
                f"{where}: unknown or unsupported instruction 0x{op:02x} at byte {r.pos - 1}"
            )
    return deepest


def _body_depth(data: bytes, pos: int, end: int, cap: int, index: int) -> int:
    """Decode one function body's instructions; return its deepest nesting (body = 1)."""
    r = _Reader(data, pos, end)
    for _ in range(r.leb()):  # local declarations: (count, type) pairs
        r.leb()
        _skip_valtype(r)
    deepest = _decode(r, cap, index, f"function {index}")
    if r.pos != end:
        raise WasmFormatError(f"function {index}: code continues after the body's final end")
    return deepest


# -- the precheck -----------------------------------------------------------------------------


def _check_count(what: str, count: int, cap: int, field: str) -> None:
    if count > cap:
        raise WasmFormatError(
            f"module declares {count} {what}, over the policy's {field} of {cap}", cap=field
        )


def precheck(wasm: bytes, caps: Caps) -> ModuleShape:
    """Check ``wasm`` against ``caps`` without compiling it; return what was measured.

    Raises WasmFormatError (with ``cap`` set to the policy field) on the first cap broken, or
    with ``cap=None`` if the binary cannot be read.
    """
    functions = imports = exports = largest = deepest = bound = 0
    occurs = wasm.count
    for section_id, start, stop in _sections(wasm):
        body = _Reader(wasm, start, stop)
        if section_id == _SEC_IMPORT:
            imports += body.leb()
            _check_count("imports", imports, caps.max_imports, "max_imports")
        elif section_id == _SEC_EXPORT:
            exports += body.leb()
            _check_count("exports", exports, caps.max_exports, "max_exports")
        elif section_id == _SEC_FUNCTION:
            functions += body.leb()
            _check_count("functions", functions, caps.max_functions, "max_functions")
        elif section_id == _SEC_CODE:
            count = body.leb()
            _check_count("function bodies", count, caps.max_functions, "max_functions")
            for index in range(count):
                length = body.leb()
                if length > caps.max_function_size:
                    raise WasmFormatError(
                        f"function {index} is {length} bytes, over the policy's "
                        f"max_function_size of {caps.max_function_size}",
                        cap="max_function_size",
                    )
                first = body.pos
                body.skip(length)
                largest = max(largest, length)
                if length <= bound + 1 and length < caps.max_nesting + 2:
                    # A body holds at most length - 2 openers (its locals count and its final
                    # end are not), so this one can neither be too deep nor raise the bound:
                    # small bodies, the common case, cost no counting at all.
                    deepest = max(deepest, 1 if length else 0)
                    continue
                # At most one nesting level per opener byte: only decode bodies that could
                # possibly be too deep.
                stop = first + length
                openers = (
                    occurs(b"\x02", first, stop)
                    + occurs(b"\x03", first, stop)
                    + occurs(b"\x04", first, stop)
                    + occurs(b"\x06", first, stop)
                    + occurs(b"\x1f", first, stop)
                )
                if openers >= caps.max_nesting:
                    depth = _body_depth(wasm, first, stop, caps.max_nesting, index)
                    deepest = max(deepest, depth)
                    bound = max(bound, depth)
                else:
                    deepest = max(deepest, 1 if length else 0)
                    bound = max(bound, openers + 1)
    return ModuleShape(functions, imports, exports, largest, deepest, bound)


def nesting_depths(wasm: bytes) -> list[int]:
    """Decode every function body in full and return each one's deepest nesting (body = 1).

    ``precheck`` decodes only the bodies that could be too deep; this is for tests and audits
    that want to see the decoder keep in step with every instruction of a real module.
    """
    if wasm[:4] != WASM_MAGIC or len(wasm) < 8:
        raise WasmFormatError("not a WebAssembly binary (no \\0asm header)")
    depths: list[int] = []
    r = _Reader(wasm, 8, len(wasm))
    while r.pos < r.end:
        section_id = r.byte()
        size = r.leb()
        r.skip(size)
        if section_id == _SEC_CODE:
            body = _Reader(wasm, r.pos - size, r.pos)
            for index in range(body.leb()):
                length = body.leb()
                first = body.pos
                body.skip(length)
                depths.append(_body_depth(wasm, first, first + length, 2**32, index))
    return depths


# -- memories ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Limits:
    minimum: int
    maximum: int | None
    page: int  # bytes per page (memories; the custom-page-sizes proposal may change it)


def _limits(r: _Reader) -> _Limits:
    flags = r.byte()
    width = 10 if flags & 0x04 else 5  # memory64 / table64: u64 limits
    minimum = r.leb(width)
    maximum = r.leb(width) if flags & 0x01 else None
    page = _PAGE
    if flags & 0x08:  # custom-page-sizes proposal: log2 of the page size follows
        page = 1 << min(r.leb(5), 16)
    return _Limits(minimum, maximum, page)


def _memory_decl(r: _Reader) -> MemoryDecl:
    lim = _limits(r)
    return MemoryDecl(
        lim.minimum * lim.page, None if lim.maximum is None else lim.maximum * lim.page
    )


def parse_memories(wasm: bytes) -> list[MemoryDecl]:
    """Return the memories a module defines (not imports), in order."""
    memories: list[MemoryDecl] = []
    for section_id, start, stop in _sections(wasm):
        if section_id == _SEC_MEMORY:
            r = _Reader(wasm, start, stop)
            for _ in range(r.leb()):
                memories.append(_memory_decl(r))
    return memories


# -- imports and exports ----------------------------------------------------------------------

_FuncType = tuple[tuple[str, ...], tuple[str, ...]]
_EXTERN_KINDS: dict[int, ExternKind] = {
    0: "func",
    1: "table",
    2: "memory",
    3: "global",
    4: "tag",
}


def _types(r: _Reader) -> list[_FuncType | None]:
    """The type section: every type index's function type (None for struct and array types)."""
    out: list[_FuncType | None] = []

    def composite() -> None:
        form = r.byte()
        if form == 0x60:
            params = tuple(_valtype_name(r) for _ in range(r.leb()))
            results = tuple(_valtype_name(r) for _ in range(r.leb()))
            out.append((params, results))
        elif form == 0x5F:  # struct: fields of (storage type, mutability)
            for _ in range(r.leb()):
                storage()
                r.byte()
            out.append(None)
        elif form == 0x5E:  # array: one field
            storage()
            r.byte()
            out.append(None)
        else:
            raise WasmFormatError(f"unknown type form 0x{form:02x}")

    def storage() -> None:
        if r.pos < r.end and r.data[r.pos] in _PACKED:
            r.pos += 1
        else:
            _valtype_name(r)

    def subtype() -> None:
        if r.pos < r.end and r.data[r.pos] in (0x50, 0x4F):  # sub / sub final: supertypes
            r.pos += 1
            for _ in range(r.leb()):
                r.leb()
        composite()

    for _ in range(r.leb()):
        if r.pos < r.end and r.data[r.pos] == 0x4E:  # a recursion group
            r.pos += 1
            for _ in range(r.leb()):
                subtype()
        else:
            subtype()
    return out


def _func_type(types: list[_FuncType | None], index: int) -> _FuncType:
    if index >= len(types):
        raise WasmFormatError(f"type index {index} is out of range")
    ty = types[index]
    if ty is None:
        raise WasmFormatError(f"type {index} is not a function type")
    return ty


def _pages(lim: _Limits) -> str:
    top = "" if lim.maximum is None else f" max {lim.maximum}"
    return f"min {lim.minimum}{top} pages"


def _table_detail(r: _Reader) -> str:
    element = _valtype_name(r)
    lim = _limits(r)
    top = "" if lim.maximum is None else f" max {lim.maximum}"
    return f"{element} min {lim.minimum}{top}"


def _global_detail(r: _Reader) -> str:
    content = _valtype_name(r)
    mutable = r.byte()
    if mutable > 1:
        raise WasmFormatError(f"bad global mutability 0x{mutable:02x}")
    return f"{'mut ' if mutable else ''}{content}"


def _skip_const_expr(r: _Reader, where: str) -> None:
    _decode(r, 2**32, 0, where)


def describe(wasm: bytes) -> tuple[tuple[ImportInfo, ...], tuple[ExportInfo, ...]]:
    """Every import and export of ``wasm`` with its kind and type, read from the binary.

    Fields are as ``rt.Module`` reports them: functions (and tags) get ``params`` and
    ``results`` as value-type names; memories ``"min N [max M] pages"``, tables
    ``"<element> min N [max M]"`` and globals ``"[mut ]<type>"`` in ``detail``.
    Raises WasmFormatError if the module cannot be read.
    """
    types: list[_FuncType | None] = []
    funcs: list[_FuncType] = []  # the function index space: imports first
    tables: list[str] = []
    memories: list[str] = []
    globals_: list[str] = []
    tags: list[_FuncType] = []
    imports: list[ImportInfo] = []
    exports: list[tuple[str, int, int]] = []
    for section_id, start, stop in _sections(wasm):
        r = _Reader(wasm, start, stop)
        if section_id == _SEC_TYPE:
            types = _types(r)
        elif section_id == _SEC_IMPORT:
            for _ in range(r.leb()):
                module = r.name()
                name = r.name()
                code = r.byte()
                if code in (0x00, 0x04):
                    if code == 0x04 and r.byte() != 0:
                        raise WasmFormatError("bad tag attribute")
                    params, results = _func_type(types, r.leb())
                    kind: ExternKind = "func" if code == 0 else "tag"
                    (funcs if code == 0 else tags).append((params, results))
                    imports.append(ImportInfo(name, kind, params, results, "", module))
                    continue
                if code == 0x01:
                    detail = _table_detail(r)
                    tables.append(detail)
                elif code == 0x02:
                    detail = _pages(_limits(r))
                    memories.append(detail)
                elif code == 0x03:
                    detail = _global_detail(r)
                    globals_.append(detail)
                else:
                    raise WasmFormatError(f"unknown import kind 0x{code:02x}")
                imports.append(ImportInfo(name, _EXTERN_KINDS[code], (), (), detail, module))
        elif section_id == _SEC_FUNCTION:
            for _ in range(r.leb()):
                funcs.append(_func_type(types, r.leb()))
        elif section_id == _SEC_TABLE:
            for i in range(r.leb()):
                if r.pos < r.end and r.data[r.pos] == 0x40:  # a table with an initializer
                    r.pos += 1
                    if r.byte() != 0:
                        raise WasmFormatError("bad table encoding")
                    tables.append(_table_detail(r))
                    _skip_const_expr(r, f"table {i}")
                else:
                    tables.append(_table_detail(r))
        elif section_id == _SEC_MEMORY:
            for _ in range(r.leb()):
                memories.append(_pages(_limits(r)))
        elif section_id == _SEC_GLOBAL:
            for i in range(r.leb()):
                globals_.append(_global_detail(r))
                _skip_const_expr(r, f"global {i}")
        elif section_id == _SEC_TAG:
            for _ in range(r.leb()):
                if r.byte() != 0:
                    raise WasmFormatError("bad tag attribute")
                tags.append(_func_type(types, r.leb()))
        elif section_id == _SEC_EXPORT:
            for _ in range(r.leb()):
                name = r.name()
                code = r.byte()
                exports.append((name, code, r.leb()))
    spaces: dict[int, list[str]] = {1: tables, 2: memories, 3: globals_}
    out: list[ExportInfo] = []
    for name, code, index in exports:
        kind = _EXTERN_KINDS.get(code, "unknown")
        if kind == "unknown":
            raise WasmFormatError(f"export {name!r} has unknown kind 0x{code:02x}")
        if code in (0, 4):
            space = funcs if code == 0 else tags
            if index >= len(space):
                raise WasmFormatError(f"export {name!r}: {kind} index {index} is out of range")
            params, results = space[index]
            out.append(ExportInfo(name, kind, params, results, ""))
        else:
            details = spaces[code]
            if index >= len(details):
                raise WasmFormatError(f"export {name!r}: {kind} index {index} is out of range")
            out.append(ExportInfo(name, kind, (), (), details[index]))
    return tuple(imports), tuple(out)
