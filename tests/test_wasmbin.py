"""_wasmbin: the one binary reader. Its descriptions of imports and exports match wasmtime's."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import wasmtime
from security.bombs import module

from plugsafe import _runtime as rt
from plugsafe import _wasmbin
from plugsafe._wasmbin import MemoryDecl, WasmFormatError, describe, parse_memories, valtype_name

from wat import ECHO

HERE = Path(__file__).parent

MIXED = """(module
  (type $t (func (param i64 f32) (result f64 i32)))
  (import "plugsafe" "log" (func (param i32 i32 i32)))
  (import "env" "typed" (func (type $t)))
  (import "env" "mem" (memory 1 3))
  (import "env" "tab" (table 2 funcref))
  (import "env" "g" (global (mut i64)))
  (import "env" "ext" (table 1 5 externref))
  (memory (export "memory") 2)
  (memory 1 4)
  (table (export "table") 3 10 funcref)
  (global (export "counter") (mut i32) (i32.const 0))
  (global (export "pi") f64 (f64.const 3.14))
  (func (export "f") (param i32 f64) (result i64) (i64.const 1))
  (func (export "none"))
  (export "reexported" (func 1))
  (export "imported_mem" (memory 0))
  (export "imported_global" (global 0)))
"""


def _wasmtime_view(wasm: bytes) -> tuple[tuple[object, ...], tuple[object, ...]]:
    module = rt.Engine(metered=False, max_stack=512 * 1024).compile(wasm)
    return module.imports, tuple(module.exports.values())


@pytest.mark.parametrize("text", [MIXED, ECHO], ids=["mixed", "echo"])
def test_describe_matches_wasmtime(text: str) -> None:
    wasm = bytes(wasmtime.wat2wasm(text))
    ours = describe(wasm)
    # One known difference: wasmtime-py 50 prints an externref ValType as "anyref" (measured:
    # str(wasmtime.ValType.externref()) == "anyref"); the binary says externref.
    theirs = tuple(
        tuple(dataclasses.replace(i, detail=i.detail.replace("anyref", "externref")) for i in part)
        for part in _wasmtime_view(wasm)
    )
    assert ours == theirs
    assert any("externref" in i.detail for i in ours[0]) == (text == MIXED)


def test_describe_names_v128_without_asking_wasmtime() -> None:
    # str() of a v128 ValType aborts the process; the binary reader names it safely.
    wasm = bytes(
        wasmtime.wat2wasm(
            '(module (import "env" "s" (func (param v128) (result externref)))'
            ' (func (export "simd") (param v128 i32) (result v128) local.get 0))'
        )
    )
    imports, exports = describe(wasm)
    assert (imports[0].params, imports[0].results) == (("v128",), ("externref",))
    assert (exports[0].name, exports[0].params, exports[0].results) == (
        "simd",
        ("v128", "i32"),
        ("v128",),
    )
    assert str(exports[0]) == "func simd(v128, i32) -> v128"


def test_describe_reads_the_feature_module() -> None:
    wasm = bytes(wasmtime.wat2wasm((HERE / "security" / "features.wat").read_text()))
    _, exports = describe(wasm)
    assert {e.name for e in exports} >= {"f", "g"}
    assert next(e for e in exports if e.name == "f").params == ("i32",)


@pytest.mark.parametrize(
    "wasm",
    [
        b"",
        b"\x00asm",
        b"\x00asm\x0d\x00\x01\x00",  # a component
        b"\x00asm\x01\x00\x00\x00\x07\x05\x01\x01a\x00\x09",  # export of function 9: none exist
        b"\x00asm\x01\x00\x00\x00\x01\x04\x01\x60\x01\x55",  # unknown value type
        b"\x00asm\x01\x00\x00\x00\x02\x07\x01\x01a\x01b\x00\x00",  # import of a missing type
        b"\x00asm\x01\x00\x00\x00\x07\x04\x01\x01\xff\x00",  # a name that is not UTF-8
    ],
)
def test_describe_refuses_what_it_cannot_read(wasm: bytes) -> None:
    with pytest.raises(WasmFormatError):
        describe(wasm)


def test_value_type_names() -> None:
    assert [valtype_name(bytes([c])) for c in (0x7F, 0x7E, 0x7D, 0x7C, 0x7B, 0x70, 0x6F)] == [
        "i32",
        "i64",
        "f32",
        "f64",
        "v128",
        "funcref",
        "externref",
    ]
    assert valtype_name(b"\x63\x70") == "(ref null func)"
    assert valtype_name(b"\x64\x05") == "(ref 5)"
    with pytest.raises(WasmFormatError):
        valtype_name(b"\x7f\x00")


def test_memories_defined_not_imported() -> None:
    wasm = bytes(wasmtime.wat2wasm(MIXED))
    assert parse_memories(wasm) == [MemoryDecl(2 * 65536, None), MemoryDecl(65536, 4 * 65536)]


def _outcome(wasm: bytes) -> tuple[object, ...]:
    try:
        return ("ok", tuple(_wasmbin.nesting_depths(wasm)))
    except WasmFormatError as exc:
        return ("error", str(exc), exc.cap)


def test_skipping_plain_runs_changes_no_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decoder's fast path (one regex match per run of plain instructions) gives the same
    depths and the same errors as decoding every instruction, on random instruction soup."""
    rng = random.Random(11)
    alphabet = [0x02, 0x03, 0x04, 0x0B, 0x40, 0x41, 0x42, 0x43, 0x44, 0x1A, 0x20, 0x28, 0x36]
    alphabet += [0x80, 0xFF, 0x7F, 0x00, 0x0E, 0xFC, 0xFD, 0x11, 0x1C, 0x1F, 0xD0, 0x18, 0x06]
    cases = []
    for _ in range(3000):
        body = bytes(
            rng.choice(alphabet) if rng.random() < 0.8 else rng.randrange(256)
            for _ in range(rng.randint(0, 40))
        )
        cases.append(module([body, b"\x41\x02\x1a" * rng.randint(0, 5)]))
    fast = [_outcome(w) for w in cases]
    monkeypatch.setattr(_wasmbin, "_PLAIN_START", [False] * 256)
    slow = [_outcome(w) for w in cases]
    assert fast == slow
    assert {o[0] for o in fast} == {"ok", "error"}
