"""tidy12: a disk-cache entry may not lie about a table, nor a component's entry about its fuel.

cache11 compared an entry's description of memories, globals and tags with wasmtime's types
(``rt.check_description``); tables' limits and element types were believed: an entry saying a
table of 1 element held 2..5, or that a ``funcref`` table was an ``externref`` one, was a hit,
and ``Plugin.exports`` (what ``plugsafe inspect`` prints, what an app may decide on) said what
the entry said. The policy's ``max_table_elements`` was never at stake: wasmtime's store limiter
checks the table itself at instantiation, whatever the description says (shown below). A lie
is now a cache miss: the entry deleted, the module compiled again.
"""

from __future__ import annotations

import marshal
from pathlib import Path

import pytest
from test_cache11 import _exports, _hold
from test_tidy9_cache import _forge, _split

import plugsafe

TABLED = """(module
  (table (export "t") 2 5 funcref)
  (table (export "u") 1 externref)
  (table (export "w") 0 4294967295 funcref)
  (table (export "n") 1 (ref func) (ref.func $f))
  (func $f (export "f") (result i32) (i32.const 1)))"""

# What a lie changes of an export's detail.
TABLE_LIES: dict[str, tuple[str, str]] = {
    "smaller-minimum": ("t", "funcref min 1 max 5"),
    "larger-minimum": ("t", "funcref min 3 max 5"),
    "larger-maximum": ("t", "funcref min 2 max 6"),
    "no-maximum": ("t", "funcref min 2"),
    "a-maximum": ("u", "externref min 1 max 1"),
    "other-element": ("t", "externref min 2 max 5"),
    "externref-said-funcref": ("u", "funcref min 1"),
    "typed-said-funcref": ("n", "funcref min 1"),
    "funcref-said-typed": ("t", "(ref func) min 2 max 5"),
    "element-gibberish": ("t", "i32 min 2 max 5"),
    "no-limits": ("t", "funcref"),
    "gibberish": ("u", "externref min x"),
    "trailing-text": ("t", "funcref min 2 max 5 shared"),
}


def _entry(tmp_path: Path, source: str = TABLED) -> Path:
    with plugsafe.Host(cache_dir=tmp_path) as host:
        assert host.load(source.encode()).invoke("f") == 1
    [entry] = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return entry


def _lie(entry: Path, name: str, detail: str) -> None:
    data = marshal.loads(_split(entry)[0])
    data["exports"] = tuple(
        (n, k, p, r, detail if n == name else d) for n, k, p, r, d in data["exports"]
    )
    _forge(entry, marshal.dumps(data, 4))


def test_the_description_of_tables_is_what_the_binary_says(tmp_path: Path) -> None:
    exports = _exports(_entry(tmp_path))
    assert exports["t"][4] == "funcref min 2 max 5"
    assert exports["u"][4] == "externref min 1"
    assert exports["w"][4] == "funcref min 0 max 4294967295"
    assert exports["n"][4] == "(ref func) min 1"


@pytest.mark.parametrize("lie", [*TABLE_LIES, "control"])
def test_an_entry_lying_about_a_table_is_compiled_again(tmp_path: Path, lie: str) -> None:
    entry = _entry(tmp_path)
    truth = _exports(entry)
    name, detail = TABLE_LIES.get(lie, ("t", truth["t"][4]))
    _lie(entry, name, detail)
    held = _hold(entry)
    with plugsafe.Host(cache_dir=tmp_path) as host:
        plugin = host.load(TABLED.encode())
        assert plugin.invoke("f") == 1
        # What the app is told is the binary's truth, never the entry's word.
        assert {n: e.detail for n, e in plugin.exports.items()} == {
            n: row[4] for n, row in truth.items()
        }
    if lie == "control":
        assert entry.samefile(held)  # the truth is a hit
    else:
        assert not entry.samefile(held)  # refused by deserialize, compiled again
    assert _exports(entry) == truth


def test_a_table_imported_is_checked_too(tmp_path: Path) -> None:
    # The import check refuses the table (the host offers none), after the load: the entry
    # has been read by then, and one that lies deleted and written again.
    source = '(module (import "env" "t" (table 3 7 funcref)))'
    with plugsafe.Host(cache_dir=tmp_path) as host, pytest.raises(plugsafe.ImportNotAllowedError):
        host.load(source.encode())
    [entry] = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".")]
    data = marshal.loads(_split(entry)[0])
    truth = data["imports"]
    assert truth[0][5] == "funcref min 3 max 7"
    data["imports"] = tuple((m, n, k, p, r, "funcref min 3") for m, n, k, p, r, _d in truth)
    _forge(entry, marshal.dumps(data, 4))
    held = _hold(entry)
    with (
        plugsafe.Host(cache_dir=tmp_path) as host,
        pytest.raises(plugsafe.ImportNotAllowedError, match=r"env\.t "),
    ):
        host.load(source.encode())
    assert not entry.samefile(held)
    assert marshal.loads(_split(entry)[0])["imports"] == truth


def test_max_table_elements_never_rested_on_the_description(tmp_path: Path) -> None:
    # Even an entry saying the table holds 1 element (a lie a hit once believed) leaves the
    # policy's limit to wasmtime's store limiter, which sees the table itself.
    entry = _entry(tmp_path, _NINE)
    _lie(entry, "t", "funcref min 1")
    with (
        plugsafe.Host(cache_dir=tmp_path) as host,
        pytest.raises(plugsafe.PlugsafeError),
    ):
        host.load(_NINE.encode(), policy=plugsafe.Policy(max_table_elements=5)).invoke("f")


_NINE = '(module (table (export "t") 9 funcref) (func (export "f") (result i32) (i32.const 1)))'
