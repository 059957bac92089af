"""attack13: disk-cache entries moved between the names of two modules.

An entry's digest covered its contents only, not the key it is stored under: two modules of
the same shape (same imports, exports, counts and body sizes: everything the description and
the binary's measure compare) had entries that read as intact under each other's names, so a
copied, swapped or mis-synced cache dir ran one module's compiled code for the other. The
digest now covers the key too: an entry under another module's name is corrupt, removed, and
the module is compiled again.
"""

from __future__ import annotations

from pathlib import Path

import plugsafe

ONE = b'(module (func (export "f") (result i32) i32.const 1))'
TWO = b'(module (func (export "f") (result i32) i32.const 2))'


def _entries(directory: Path) -> set[Path]:
    return {p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".")}


def _answer(directory: Path, wasm: bytes) -> int:
    with plugsafe.Host(cache_dir=directory) as host:
        return int(host.load(wasm).invoke("f"))


def test_entries_swapped_between_two_modules_run_neither_ones_code(tmp_path: Path) -> None:
    assert _answer(tmp_path, ONE) == 1
    (one,) = _entries(tmp_path)
    assert _answer(tmp_path, TWO) == 2
    (two,) = _entries(tmp_path) - {one}
    a, b = one.read_bytes(), two.read_bytes()
    one.write_bytes(b)
    two.write_bytes(a)
    # Each module runs its own code (compiled again), and its entry is its own again.
    assert _answer(tmp_path, ONE) == 1
    assert _answer(tmp_path, TWO) == 2
    assert one.read_bytes() == a
    assert two.read_bytes() == b


def test_an_entry_copied_under_another_modules_name_is_removed(tmp_path: Path) -> None:
    assert _answer(tmp_path, ONE) == 1
    (one,) = _entries(tmp_path)
    assert _answer(tmp_path, TWO) == 2
    (two,) = _entries(tmp_path) - {one}
    two.write_bytes(one.read_bytes())
    assert _answer(tmp_path, TWO) == 2
    assert two.read_bytes() != one.read_bytes()  # rewritten by the compile
