"""cache11: a disk-cache entry may not lie about what the binary holds.

A disk hit believes what its entry says of the module (the precheck's counts, the largest body,
the memories it defines): what it says is read back from the binary in hand
(``_wasmshape.measure``, section headers only) and an entry that disagrees is a cache miss,
deleted and compiled again, never a wrong decision.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from test_tidy9_cache import _split
from test_tidy10 import MEASURED, _entry_of, _with_meta

import plugsafe
from plugsafe import _cache, _wasmbin, _wasmshape
from plugsafe._wasmshape import MemoryDecl, WasmFormatError, measure

from wat import ECHO

_PAGE = 65536
_CAPS = _wasmbin.Caps(2**32, 2**32, 2**32, 2**32, 2**32)


def _meta(entry: Path) -> object:
    return marshal.loads(_split(entry)[0])["plugsafe_load"]


# -- the reader ---------------------------------------------------------------------------------

# Modules whose function, body and memory sections the reader must read as _wasmbin does.
_MODULES = {
    "measured": MEASURED,
    "echo": ECHO,
    "empty": "(module)",
    "imports-only": '(module (import "env" "f" (func)) (import "env" "m" (memory 1)))',
    "no-maximum": "(module (memory 0) (func) (func (drop (i32.const 300))))",
    "large-body": "(module (func " + "(drop (i32.const 1))" * 200 + "))",
    "many-bodies": "(module " + "(func (result i32) (i32.const 7))" * 300 + ")",
}


def _wasm(wat: str) -> bytes:
    return bytes(wasmtime.wat2wasm(wat))


def _truth(wasm: bytes) -> tuple[int, int, tuple[MemoryDecl, ...]]:
    shape = _wasmbin.precheck(wasm, _CAPS)
    return shape.functions, shape.largest_function, tuple(_wasmbin.parse_memories(wasm))


@pytest.mark.parametrize("name", list(_MODULES))
def test_the_reader_measures_what_the_precheck_measures(name: str) -> None:
    wasm = _wasm(_MODULES[name])
    functions, largest, memories, flags = measure(wasm)
    assert (functions, largest, memories) == _truth(wasm)
    assert not flags & ~_wasmshape.MEMORY_FLAGS_COMPILED


def test_the_reader_reads_custom_page_sizes_and_memory_flags_as_wasmbin_does() -> None:
    # Hand-made memory sections: a custom page size (log2 0: 1-byte pages), a 64-bit memory,
    # a shared one; the two last are features plugsafe's engines leave off.
    head = _wasmshape.WASM_MAGIC + b"\x01\x00\x00\x00"
    for entries, flags in [
        (b"\x08\x05\x00", 0x08),  # 5 pages of 1 byte
        (b"\x09\x02\x03\x10", 0x09),  # 2..3 pages of 64 KiB (log2 16)
        (b"\x04\x80\x80\x80\x80\x10", 0x04),  # 64-bit: a minimum of 2**32 pages
        (b"\x03\x01\x02", 0x03),  # shared
    ]:
        wasm = head + b"\x05" + bytes([len(entries) + 1, 1]) + entries
        assert measure(wasm) == (0, 0, tuple(_wasmbin.parse_memories(wasm)), flags)


@pytest.mark.parametrize(
    "wasm",
    [
        b"",
        b"\0asm",
        b"\0asm\x0d\x00\x01\x00",  # a component
        b"\0asm\x01\x00\x00\x00\x0a\x80\x80\x80\x80\x80\x00",  # a section size of 6 bytes
        b"\0asm\x01\x00\x00\x00\x0a\xff\xff\xff\xff\x7f",  # a size over 32 bits
        b"\0asm\x01\x00\x00\x00\x0a\x05\xff\xff\xff\xff\x0f",  # 2**32 - 1 bodies in 5 bytes
        b"\0asm\x01\x00\x00\x00\x05\x05\xff\xff\xff\xff\x0f",  # as many memories
        b"\0asm\x01\x00\x00\x00\x0a\x03\x01\x05\x00",  # a body past its section
        b"\0asm\x01\x00\x00\x00\x0a\x04\x01\x80\x01\x00",  # a 128-byte body in 1 byte
        b"\0asm\x01\x00\x00\x00\x0a\x05\x02\x05\x00\x01\x00",  # the first body too long
        b"\0asm\x01\x00\x00\x00\x0a\x02\x01\x80",  # a size cut short
        b"\0asm\x01\x00\x00\x00\x05\x03\x01\x10\x00",  # unknown memory flags
        b"\0asm\x01\x00\x00\x00\x05\x03\x01\x05\x00",  # 64-bit, shared, its limits cut short
        b"\0asm\x01\x00\x00\x00\x05\x0d\x01\x04" + b"\xff" * 10 + b"\x01",  # an 11-byte u64
        b"\0asm\x01\x00\x00\x00\x03\x01",  # a section cut short
    ],
)
def test_unreadable_bytes_are_the_readers_error_only(wasm: bytes) -> None:
    with pytest.raises(WasmFormatError):
        measure(wasm)


def test_every_cut_of_a_module_is_read_or_refused_never_an_other_error() -> None:
    wasm = _wasm(MEASURED)
    for end in range(len(wasm)):
        with contextlib.suppress(WasmFormatError):
            measure(wasm[:end])


def test_mutated_modules_are_read_as_wasmbin_reads_them_or_refused() -> None:
    # Seeded mutations (bytes changed, cut, inserted) of real modules: the reader raises its
    # own error or nothing, and wherever _wasmbin reads the same bytes it reads the same.
    rng = random.Random(1101)
    seeds = [_wasm(w) for w in _MODULES.values()]
    agreed = 0
    for _ in range(4000):
        wasm = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(wasm) + 1)
            op = rng.random()
            if op < 0.6 and at < len(wasm):
                wasm[at] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
            elif op < 0.8:
                del wasm[at:]
            else:
                wasm[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
        data = bytes(wasm)
        try:
            got = measure(data)
        except WasmFormatError:
            continue
        try:
            truth = _truth(data)
        except WasmFormatError:
            continue
        assert got[:3] == truth, data.hex()
        agreed += 1
    assert agreed > 200  # the comparison did run


# -- disk hits ----------------------------------------------------------------------------------

# Each lie edits (shape counts, memories) of the stored entry of MEASURED (five functions, the
# largest body 7 bytes; memories of 1..4 and 3.. pages).
LIES: dict[str, Any] = {
    "fewer-functions": lambda c, m: ((4, *c[1:]), tuple(map(tuple, m))),
    "more-functions": lambda c, m: ((6, *c[1:]), tuple(map(tuple, m))),
    "smaller-largest-body": lambda c, m: ((*c[:3], 6, *c[4:]), tuple(map(tuple, m))),
    "larger-largest-body": lambda c, m: ((*c[:3], 70, *c[4:]), tuple(map(tuple, m))),
    "fewer-memories": lambda c, m: (tuple(c), (tuple(m[0]),)),
    "more-memories": lambda c, m: (tuple(c), (*map(tuple, m), (0, None))),
    "smaller-minimum": lambda c, m: (tuple(c), ((_PAGE, 4 * _PAGE), (0, None))),
    "no-maximum": lambda c, m: (tuple(c), ((_PAGE, None), (3 * _PAGE, None))),
    "a-maximum": lambda c, m: (tuple(c), ((_PAGE, 4 * _PAGE), (3 * _PAGE, 3 * _PAGE))),
}


def _hold(entry: Path) -> Path:
    """A second name for ``entry``'s file (so that its inode is not reused once deleted)."""
    held = entry.with_name(".held")
    os.link(entry, held)
    return held


@pytest.mark.parametrize("lie", list(LIES))
def test_an_entry_lying_about_what_the_binary_holds_is_compiled_again(
    tmp_path: Path, lie: str
) -> None:
    entry = _entry_of(tmp_path)
    truth = _meta(entry)
    _with_meta(entry, LIES[lie])
    assert _meta(entry) != truth
    held = _hold(entry)
    with plugsafe.Host(cache_dir=tmp_path) as host:
        assert host.load(MEASURED.encode()).invoke("big") == 42
    assert not entry.samefile(held)  # deleted and written again, by a compile
    assert _meta(entry) == truth


def test_an_entry_that_tells_the_truth_is_used(tmp_path: Path) -> None:
    entry = _entry_of(tmp_path)
    _with_meta(entry, lambda c, m: (tuple(c), tuple(map(tuple, m))))  # rewritten, unchanged
    held = _hold(entry)
    with plugsafe.Host(cache_dir=tmp_path) as host:
        assert host.load(MEASURED.encode()).invoke("big") == 42
    assert entry.samefile(held)  # a hit: nothing compiled, nothing written


def test_an_entry_lying_about_the_largest_body_does_not_skip_max_function_size(
    tmp_path: Path,
) -> None:
    entry = _entry_of(tmp_path)
    _with_meta(entry, LIES["smaller-largest-body"])
    with (
        plugsafe.Host(cache_dir=tmp_path) as host,
        pytest.raises(plugsafe.InvalidModuleError, match="max_function_size"),
    ):
        host.load(MEASURED.encode(), policy=plugsafe.Policy(max_function_size=6))


def _key_of(tmp_path: Path, wasm: bytes, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The entry path a load of ``wasm`` looks up (a load that fails: ``wasm`` compiles not)."""
    asked: list[Path] = []
    get = _cache.ArtifactCache.get

    def spy(self: _cache.ArtifactCache, key: str) -> tuple[bytes, bytes] | None:
        asked.append(self.directory / key)
        return get(self, key)

    monkeypatch.setattr(_cache.ArtifactCache, "get", spy)
    with plugsafe.Host(cache_dir=tmp_path) as host, pytest.raises(plugsafe.InvalidModuleError):
        host.load(wasm)
    monkeypatch.setattr(_cache.ArtifactCache, "get", get)
    [path] = asked
    return path


@pytest.mark.parametrize(
    "tail, meta",
    [
        # Unreadable: a section cut short after MEASURED's sections (the entry says MEASURED).
        (b"\x0b\xff", None),
        # Memories no plugsafe engine compiles, and an entry saying what the binary says (its
        # exports count is the artifact's, which the description describes truly).
        (b"", lambda c, m: ((0, 0, c[2], 0, 0, 0), ((_PAGE, None),))),
    ],
    ids=["unreadable", "64-bit-memory"],
)
def test_an_entry_for_a_binary_that_was_never_compiled_is_discarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tail: bytes, meta: Any
) -> None:
    # Only a forged entry can be named by such a binary's sha256: its artifact (another
    # module's, here) is never used, and the compile path names the binary's error.
    wasm = _wasm(MEASURED) + tail if tail else _wasm("(module (memory i64 1))")
    forged = _key_of(tmp_path, wasm, monkeypatch)
    shutil.copy(_entry_of(tmp_path), forged)
    if meta is not None:
        _with_meta(forged, meta)
    with plugsafe.Host(cache_dir=tmp_path) as host, pytest.raises(plugsafe.InvalidModuleError):
        host.load(wasm)
    assert not forged.exists()


def test_a_shared_memory_entry_is_discarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wasm = _wasm("(module (memory 1 1 shared))")
    forged = _key_of(tmp_path, wasm, monkeypatch)
    shutil.copy(_entry_of(tmp_path), forged)
    _with_meta(forged, lambda c, m: ((0, 0, c[2], 0, 0, 0), ((_PAGE, _PAGE),)))
    with plugsafe.Host(cache_dir=tmp_path) as host, pytest.raises(plugsafe.InvalidModuleError):
        host.load(wasm)
    assert not forged.exists()


# -- the description's types of memories, globals and tags (check_description) -------------------

TYPED = """(module
  (memory (export "mem") 1 4)
  (global (export "g") (mut i32) (i32.const 0))
  (global (export "h") f64 (f64.const 0))
  (global (export "r") funcref (ref.null func))
  (tag (export "t") (param i32 f32))
  (func (export "f") (result i32) (i32.const 1)))"""

# What a lie changes of an export's (params, results, detail).
TYPE_LIES: dict[str, tuple[str, tuple[Any, ...]]] = {
    "memory-larger-maximum": ("mem", ((), (), "min 1 max 5 pages")),
    "memory-larger-minimum": ("mem", ((), (), "min 2 max 4 pages")),
    "memory-no-maximum": ("mem", ((), (), "min 1 pages")),
    "memory-gibberish": ("mem", ((), (), "i64 shared")),
    "global-not-mutable": ("g", ((), (), "i32")),
    "global-other-type": ("g", ((), (), "mut i64")),
    "global-made-mutable": ("h", ((), (), "mut f64")),
    "global-a-reference-said-numeric": ("r", ((), (), "i32")),
    "global-a-number-said-reference": ("h", ((), (), "externref")),
    "global-gibberish": ("g", ((), (), "mut")),
    "tag-fewer-params": ("t", (("i32",), (), "")),
    "tag-other-params": ("t", (("i32", "f64"), (), "")),
    "tag-with-results": ("t", (("i32", "f32"), ("i32",), "")),
}


def _typed_entry(tmp_path: Path) -> Path:
    with plugsafe.Host(cache_dir=tmp_path) as host:
        assert host.load(TYPED.encode()).invoke("f") == 1
    [entry] = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return entry


def _exports(entry: Path) -> dict[str, tuple[Any, ...]]:
    return {row[0]: row for row in marshal.loads(_split(entry)[0])["exports"]}


@pytest.mark.parametrize("lie", [*TYPE_LIES, "control"])
def test_an_entry_lying_about_memory_global_or_tag_types_is_compiled_again(
    tmp_path: Path, lie: str
) -> None:
    from test_tidy9_cache import _forge

    entry = _typed_entry(tmp_path)
    data = marshal.loads(_split(entry)[0])
    truth = _exports(entry)
    name, (params, results, detail) = TYPE_LIES.get(lie, ("f", truth["f"][2:]))
    data["exports"] = tuple(
        (n, k, params, results, detail) if n == name else (n, k, p, r, d)
        for n, k, p, r, d in data["exports"]
    )
    _forge(entry, marshal.dumps(data, 4))
    held = _hold(entry)
    with plugsafe.Host(cache_dir=tmp_path) as host:
        assert host.load(TYPED.encode()).invoke("f") == 1
    if lie == "control":
        assert entry.samefile(held)  # the truth is a hit
    else:
        assert not entry.samefile(held)  # refused by deserialize, compiled again
    assert _exports(entry) == truth


IMPORTING = """(module
  (import "env" "m" (memory 2 3))
  (import "env" "g" (global i64))
  (func (export "f") (result i32) (i32.const 1)))"""


@pytest.mark.parametrize(
    "lie",
    [{"m": "min 2 pages"}, {"m": "min 2 max 3 pages", "g": "mut i64"}, {"g": "f32"}, {}],
    ids=["memory-no-maximum", "global-made-mutable", "global-other-type", "control"],
)
def test_an_entry_lying_about_imported_memory_or_global_types_is_compiled_again(
    tmp_path: Path, lie: dict[str, str]
) -> None:
    # The import check refuses both imports (the host offers neither), after the load: the
    # entry has been read by then, and one that lies deleted and written again.
    from test_tidy9_cache import _forge

    with plugsafe.Host(cache_dir=tmp_path) as host, pytest.raises(plugsafe.ImportNotAllowedError):
        host.load(IMPORTING.encode())
    [entry] = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".")]
    data = marshal.loads(_split(entry)[0])
    truth = data["imports"]
    data["imports"] = tuple((m, n, k, p, r, lie.get(n, d)) for m, n, k, p, r, d in truth)
    _forge(entry, marshal.dumps(data, 4))
    held = _hold(entry)
    with plugsafe.Host(cache_dir=tmp_path) as host, pytest.raises(plugsafe.ImportNotAllowedError):
        host.load(IMPORTING.encode())
    assert entry.samefile(held) == (not lie)
    assert marshal.loads(_split(entry)[0])["imports"] == truth


NESTED = """(module
  (func (export "f") (result i32)
    (block (block (block (block (nop))))) (i32.const 1)))"""


@pytest.mark.xfail(
    strict=True,
    reason="the stored nesting bound is not read back: that needs every long body decoded, "
    "the precheck's work and import (~12 ms of a cold start)",
)
def test_an_entry_lying_about_nesting_does_not_skip_max_nesting(tmp_path: Path) -> None:
    # Left by cache11 (see its report): the artifact is compiled already, so no compile cost
    # is at stake, but the policy's refusal is skipped.
    with plugsafe.Host(cache_dir=tmp_path) as host:
        assert host.load(NESTED.encode()).invoke("f") == 1
    [entry] = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".")]
    _with_meta(entry, lambda c, m: ((*c[:4], 1, 1), tuple(map(tuple, m))))
    with (
        plugsafe.Host(cache_dir=tmp_path) as host,
        pytest.raises(plugsafe.InvalidModuleError, match="max_nesting"),
    ):
        host.load(NESTED.encode(), policy=plugsafe.Policy(max_nesting=3))


def test_max_nesting_refuses_the_nested_module_on_a_truthful_hit(tmp_path: Path) -> None:
    # The control of the test above: the same entry untouched refuses the module.
    with plugsafe.Host(cache_dir=tmp_path) as host:
        assert host.load(NESTED.encode()).invoke("f") == 1
    with (
        plugsafe.Host(cache_dir=tmp_path) as host,
        pytest.raises(plugsafe.InvalidModuleError, match="max_nesting"),
    ):
        host.load(NESTED.encode(), policy=plugsafe.Policy(max_nesting=3))
