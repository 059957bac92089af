"""A cheap, defensive look at a wasm binary *before* wasmtime compiles it.

wasmtime's threat model does not cover compilation: a 4 MB module of a million empty functions
took 92 s and 4.8 GiB to compile, a million nested blocks 4 s and 760 MiB, and one 2 MiB function
of small loops 5 s (the same code split over 30 functions: 1.4 s). So before compiling, plugsafe
reads the module's section headers and enforces the policy's structural caps:

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
``bytes.count`` (C speed) settles that for nearly every real function.

This is not a validator. Anything it cannot make sense of (truncated sections, unknown opcodes)
is refused with :class:`PrecheckError`, which the Host turns into ``InvalidModuleError``; wasmtime
would refuse those modules too, and the precheck must never be a way around itself. Everything
that passes is still fully validated by wasmtime.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Caps", "ModuleShape", "PrecheckError", "nesting_depths", "precheck"]

_MAGIC = b"\x00asm"
_VERSION_1 = b"\x01\x00\x00\x00"

_SEC_IMPORT = 2
_SEC_FUNCTION = 3
_SEC_EXPORT = 7
_SEC_CODE = 10

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
for _op in (0x00, 0x01, 0x05, 0x0A, 0x0F, 0x19, 0x1A, 0x1B, 0xD1, 0xD3, 0xD4):
    _KINDS[_op] = _NONE
for _op in range(0x45, 0xC5):  # numeric instructions, sign extension included
    _KINDS[_op] = _NONE
for _op in (0x02, 0x03, 0x04, 0x06):  # block, loop, if, try (legacy exceptions)
    _KINDS[_op] = _BLOCK
for _op in (0x07, 0x08, 0x09, 0x0C, 0x0D, 0x10, 0x12, 0x14, 0x15, 0x20, 0x21, 0x22, 0x23, 0x24):
    _KINDS[_op] = _U32  # catch, throw, rethrow, br, br_if, call, return_call, call_ref, ...
for _op in (0x25, 0x26, 0x3F, 0x40, 0xD2, 0xD5, 0xD6):
    _KINDS[_op] = _U32  # table.get/set, memory.size/grow, ref.func, br_on_null/non_null
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

# Byte values of the instructions that open a nesting level (see the module docstring).
_OPENERS = (b"\x02", b"\x03", b"\x04", b"\x06", b"\x1f")

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


class PrecheckError(ValueError):
    """The module breaks a structural cap or cannot be read. ``cap`` names the policy field."""

    def __init__(self, message: str, *, cap: str | None = None) -> None:
        super().__init__(message)
        self.cap = cap


@dataclass(frozen=True)
class Caps:
    """The structural caps a module must stay within (``Policy`` fields of the same names)."""

    max_functions: int
    max_imports: int
    max_exports: int
    max_function_size: int
    max_nesting: int


@dataclass(frozen=True)
class ModuleShape:
    """What the precheck measured: counts as declared, the largest body, the deepest nesting.

    ``max_nesting`` counts the function body itself as level 1 (an empty function has depth 1);
    bodies that could not be too deep are not decoded, so it is a lower bound for them.
    """

    functions: int = 0
    imports: int = 0
    exports: int = 0
    largest_function: int = 0
    max_nesting: int = 0


class _Reader:
    """Bounds-checked reads from ``data[pos:end]``; every overrun is a PrecheckError."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data = data
        self.pos = pos
        self.end = end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise PrecheckError("truncated: unexpected end of section")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def skip(self, n: int) -> None:
        if n > self.end - self.pos:
            raise PrecheckError("truncated: unexpected end of section")
        self.pos += n

    def leb(self, max_bytes: int = 5) -> int:
        """Read an unsigned LEB128 (also skips a signed one: the bytes are the same shape)."""
        data = self.data
        result = 0
        shift = 0
        for _ in range(max_bytes):
            if self.pos >= self.end:
                raise PrecheckError("truncated: unexpected end of section")
            b = data[self.pos]
            self.pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
            shift += 7
        raise PrecheckError("malformed LEB128 number (too long)")


def _heaptype(r: _Reader) -> None:
    r.leb(5)  # s33: an abstract heap type (one byte) or a type index


def _valtype(r: _Reader) -> None:
    b = r.byte()
    if b in (0x63, 0x64):  # (ref null ht) / (ref ht)
        _heaptype(r)


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


def _body_depth(data: bytes, pos: int, end: int, cap: int, index: int) -> int:
    """Decode one function body's instructions; return its deepest nesting (body = 1).

    Raises PrecheckError as soon as the depth passes ``cap``.
    """
    r = _Reader(data, pos, end)
    for _ in range(r.leb()):  # local declarations: (count, type) pairs
        r.leb()
        _valtype(r)
    kinds = _KINDS
    depth = 1
    deepest = 1
    while depth:
        if r.pos >= end:
            raise PrecheckError(f"function {index}: body ends inside a block")
        op = data[r.pos]
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
                    raise PrecheckError(
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
                _valtype(r)
        elif kind == _HEAPTYPE:
            _heaptype(r)
        elif kind == _PREFIX_FC:
            sub = r.leb()
            sub_kind = _FC.get(sub, _BAD)
            if sub_kind == _BAD:
                raise PrecheckError(f"function {index}: unknown instruction 0xFC {sub}")
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
                raise PrecheckError(f"function {index}: unknown instruction 0xFD {sub}")
        elif kind == _PREFIX_FE:
            sub = r.leb()
            if sub == _FE_FENCE:
                r.skip(1)
            elif sub <= _FE_LAST:
                _memarg(r)
            else:
                raise PrecheckError(f"function {index}: unknown instruction 0xFE {sub}")
        else:
            raise PrecheckError(
                f"function {index}: unknown or unsupported instruction 0x{op:02x} "
                f"at byte {r.pos - 1}"
            )
    if r.pos != end:
        raise PrecheckError(f"function {index}: code continues after the body's final end")
    return deepest


def _check_count(what: str, count: int, cap: int, field: str) -> None:
    if count > cap:
        raise PrecheckError(
            f"module declares {count} {what}, over the policy's {field} of {cap}", cap=field
        )


def precheck(wasm: bytes, caps: Caps) -> ModuleShape:
    """Check ``wasm`` against ``caps`` without compiling it; return what was measured.

    Raises PrecheckError (with ``cap`` set to the policy field) on the first cap broken, or
    with ``cap=None`` if the binary cannot be read.
    """
    if wasm[:4] != _MAGIC:
        raise PrecheckError("not a WebAssembly binary (no \\0asm header)")
    if wasm[4:8] != _VERSION_1:
        # Components (layer 1) and future versions: wasmtime here accepts only core modules.
        raise PrecheckError(f"unsupported WebAssembly binary version {wasm[4:8].hex()}")
    end = len(wasm)
    pos = 8
    functions = imports = exports = largest = deepest = 0
    while pos < end:
        section_id = wasm[pos]
        header = _Reader(wasm, pos + 1, end)
        size = header.leb()
        start = header.pos
        if size > end - start:
            raise PrecheckError(f"truncated: section {section_id} runs past the end of the module")
        stop = start + size
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
                    raise PrecheckError(
                        f"function {index} is {length} bytes, over the policy's "
                        f"max_function_size of {caps.max_function_size}",
                        cap="max_function_size",
                    )
                first = body.pos
                body.skip(length)
                largest = max(largest, length)
                # At most one nesting level per opener byte: only decode bodies that could
                # possibly be too deep.
                openers = sum(wasm.count(b, first, first + length) for b in _OPENERS)
                if openers >= caps.max_nesting:
                    deepest = max(
                        deepest, _body_depth(wasm, first, first + length, caps.max_nesting, index)
                    )
                else:
                    deepest = max(deepest, 1 if length else 0)
        pos = stop
    return ModuleShape(functions, imports, exports, largest, deepest)


def nesting_depths(wasm: bytes) -> list[int]:
    """Decode every function body in full and return each one's deepest nesting (body = 1).

    ``precheck`` decodes only the bodies that could be too deep; this is for tests and audits
    that want to see the decoder keep in step with every instruction of a real module.
    """
    if wasm[:4] != _MAGIC or len(wasm) < 8:
        raise PrecheckError("not a WebAssembly binary (no \\0asm header)")
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
