"""Loading a module the process (or an earlier process) compiled: the precheck's verdict is kept
with the compiled module, a hit hashes nothing, and every policy's caps still hold."""

from __future__ import annotations

import hashlib
import marshal
from pathlib import Path
from typing import Any

import pytest

import plugsafe
from plugsafe import _loader, _wasmbin
from plugsafe import _runtime as rt

from wat import ECHO


def _wasm(wat: str) -> bytes:
    return rt.wat_to_wasm(wat)


def _nested(depth: int, flat: int = 0) -> str:
    """An ABI echo plus a function ``depth`` blocks deep (body = 1) and one of ``flat`` blocks
    one after the other (depth 2, but as many opener bytes)."""
    deep = "(block " * (depth - 1) + ")" * (depth - 1)
    funcs = f"(func $deep {deep}) (func $flat {'(block) ' * flat})"
    return ECHO.replace('(func (export "echo")', f'{funcs}\n  (func (export "echo")')


@pytest.fixture
def prechecks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the loader's precheck runs (the real one runs)."""
    runs: list[int] = []
    real = _loader.precheck

    def counting(wasm: bytes, caps: _wasmbin.Caps) -> _wasmbin.ModuleShape:
        runs.append(len(wasm))
        return real(wasm, caps)

    monkeypatch.setattr(_loader, "precheck", counting)
    return runs


@pytest.fixture
def sha256_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts sha256 computations made by the loader (the real hash is computed)."""
    calls: list[int] = []
    real = hashlib.sha256

    class Counting:
        @staticmethod
        def sha256(data: bytes = b"") -> Any:
            calls.append(len(data))
            return real(data)

    monkeypatch.setattr(_loader, "hashlib", Counting)
    return calls


def test_a_memory_hit_skips_the_precheck_and_hashes_nothing(
    host: plugsafe.Host, prechecks: list[int], sha256_calls: list[int]
) -> None:
    wasm = _wasm(ECHO)
    first = host.load(wasm)
    assert prechecks == [len(wasm)] and sha256_calls == [len(wasm)]  # one hash per new module
    again = host.load(wasm)
    assert prechecks == [len(wasm)] and sha256_calls == [len(wasm)]
    # Same default name (from the one sha256, kept with the module) and the same module.
    assert again.name == first.name == f"plugin-{hashlib.sha256(wasm).hexdigest()[:8]}"
    assert again.call("echo", b"hi") == b"hi"
    # An equal binary in another bytes object is the same entry (compared byte by byte).
    host.load(bytes(bytearray(wasm)))
    assert prechecks == [len(wasm)] and sha256_calls == [len(wasm)]


def test_a_cached_module_still_meets_a_stricter_policys_caps(
    host: plugsafe.Host, prechecks: list[int]
) -> None:
    wasm = _wasm(_nested(12))
    host.load(wasm)  # the default caps: fits
    assert len(prechecks) == 1
    # A hit whose stored shape may not fit runs the precheck in full, with its usual error.
    with pytest.raises(plugsafe.InvalidModuleError, match="max_nesting") as info:
        host.load(wasm, policy=plugsafe.Policy(max_nesting=11), name="deep")
    assert len(prechecks) == 2
    with plugsafe.Host() as fresh, pytest.raises(plugsafe.InvalidModuleError) as first_time:
        fresh.load(wasm, policy=plugsafe.Policy(max_nesting=11), name="deep")
    assert str(info.value) == str(first_time.value)
    # The exact depth fits, settled by the stored shape alone.
    host.load(wasm, policy=plugsafe.Policy(max_nesting=12))
    assert len(prechecks) == 3  # (the fresh Host's)
    # Each other cap is checked against the stored shape too.
    for field, value in (("max_functions", 2), ("max_exports", 2), ("max_function_size", 8)):
        with pytest.raises(plugsafe.InvalidModuleError, match=field):
            host.load(wasm, policy=plugsafe.Policy(**{field: value}))


def test_a_loose_nesting_bound_is_decided_once_per_policy(
    host: plugsafe.Host, prechecks: list[int]
) -> None:
    # 30 blocks one after the other: 31 is the bound the opener count gives, 2 the depth.
    wasm = _wasm(_nested(3, flat=30))
    host.load(wasm)
    strict = plugsafe.Policy(max_nesting=10)
    for _ in range(3):
        assert host.load(wasm, policy=strict).call("echo", b"ok") == b"ok"
    # Decoded once for the strict policy (exactly: fits), then settled by the tighter bound.
    assert len(prechecks) == 2
    with pytest.raises(plugsafe.InvalidModuleError, match="max_nesting"):
        host.load(wasm, policy=plugsafe.Policy(max_nesting=2))


def test_the_disk_cache_keeps_the_precheck_with_the_artifact(
    tmp_path: Path, prechecks: list[int], sha256_calls: list[int]
) -> None:
    wasm = _wasm(_nested(6))
    with plugsafe.Host(cache_dir=tmp_path / "c") as first:
        first.load(wasm)
    assert len(prechecks) == 1 and len(sha256_calls) == 1
    entries = list((tmp_path / "c").iterdir())
    assert len(entries) == 1
    with plugsafe.Host(cache_dir=tmp_path / "c") as second:
        plugin = second.load(wasm)
        assert plugin.call("echo", b"x") == b"x"
        # From disk: one sha256 (the entry's key), no precheck, no compile.
        assert len(prechecks) == 1 and len(sha256_calls) == 2
        assert [m.minimum for m in second._prepare(wasm, policy=None).memories] == [65536]
        with pytest.raises(plugsafe.InvalidModuleError, match="max_nesting"):
            second.load(wasm, policy=plugsafe.Policy(max_nesting=5))
    # From disk, straight into a stricter policy: refused before instantiation.
    with (
        plugsafe.Host(cache_dir=tmp_path / "c") as third,
        pytest.raises(plugsafe.InvalidModuleError, match="max_nesting"),
    ):
        third.load(wasm, policy=plugsafe.Policy(max_nesting=5))


def test_a_disk_entry_without_the_loaders_part_is_compiled_again(
    tmp_path: Path, prechecks: list[int]
) -> None:
    wasm = _wasm(ECHO)
    engine = rt.shared_engine(metered=False, max_stack=512 * 1024)
    loader = _loader.ModuleLoader(max_stack=512 * 1024, cache_dir=tmp_path)
    module = loader.load(wasm, plugsafe.Policy(), engine).module
    cache = loader._disk_cache(engine)
    assert cache is not None
    key = cache.key(hashlib.sha256(wasm).digest())
    stored = cache.get(key)
    assert stored is not None and b"plugsafe_load" in stored[0]
    # An entry as written before the shape was kept with it: imports and exports only.
    cache.put(key, module.serialize(), module.describe())
    loader.clear()
    runs = len(prechecks)
    loaded = loader.load(wasm, plugsafe.Policy(), engine)
    assert len(prechecks) == runs + 1  # prechecked and compiled again, then stored with it
    assert [m.minimum for m in loaded.memories] == [65536]
    stored = cache.get(key)
    assert stored is not None and b"plugsafe_load" in stored[0]


@pytest.mark.parametrize("corrupt", ['{"plugsafe_load": {"shape": [1, 2]}}', "[]", "{"])
def test_unreadable_loader_parts_read_as_absent(corrupt: str) -> None:
    assert _loader._read_meta(corrupt.encode()) is None


def test_fits_compares_every_cap() -> None:
    shape = _wasmbin.ModuleShape(3, 2, 4, 100, 2, 5)
    caps = _wasmbin.Caps(3, 2, 4, 100, 5)
    assert _wasmbin.fits(shape, caps)
    for i in range(5):
        tighter = list(caps.__dict__.values())
        tighter[i] -= 1
        assert not _wasmbin.fits(shape, _wasmbin.Caps(*tighter))


def test_function_types_are_kept_per_engine(host: plugsafe.Host) -> None:
    # wasmtime ties a function type to the first engine that uses it (another engine's use is a
    # Rust panic that aborts the process): the metered and unmetered engines keep their own.
    @host.function
    def twice(x: int) -> int:
        return 2 * x

    wat = """(module (import "plugsafe" "twice" (func $t (param i64) (result i64)))
      (func (export "run") (param i64) (result i64) (call $t (local.get 0))))"""
    for policy in (plugsafe.Policy(allow={"twice"}), plugsafe.Policy(allow={"twice"}, fuel=10**6)):
        for _ in range(2):
            assert host.load(wat.encode(), policy=policy).invoke("run", 21) == 42
    with plugsafe.Host(max_stack=256 * 1024) as other:  # a third engine
        other.function(twice)
        assert (
            other.load(wat.encode(), policy=plugsafe.Policy(allow={"twice"})).invoke("run", 1) == 2
        )


@pytest.mark.parametrize("wat", [ECHO, _nested(12), _nested(3, flat=30), _nested(40, flat=5)])
def test_the_nesting_bound_bounds_every_body(wat: str) -> None:
    wasm = _wasm(wat)
    deepest = max(_wasmbin.nesting_depths(wasm))
    for cap in (2, 5, 13, 10_000):
        try:
            shape = _wasmbin.precheck(wasm, _wasmbin.Caps(100, 100, 100, 1 << 20, cap))
        except _wasmbin.WasmFormatError:
            assert deepest > cap
            continue
        assert deepest <= shape.nesting_bound <= cap


def _stored(loader: _loader.ModuleLoader, wasm: bytes) -> tuple[Any, str, tuple[bytes, bytes]]:
    """The disk cache, key and (description, artifact) of ``wasm``'s entry."""
    engine = rt.shared_engine(metered=False, max_stack=512 * 1024)
    cache = loader._disk_cache(engine)
    assert cache is not None
    key = cache.key(hashlib.sha256(wasm).digest())
    stored = cache.get(key)
    assert stored is not None
    return cache, key, stored


def test_a_disk_entry_describes_the_module_as_plain_data(tmp_path: Path) -> None:
    wasm = _wasm(ECHO)
    engine = rt.shared_engine(metered=False, max_stack=512 * 1024)
    loader = _loader.ModuleLoader(max_stack=512 * 1024, cache_dir=tmp_path)
    module = loader.load(wasm, plugsafe.Policy(), engine).module
    _, _, (description, _) = _stored(loader, wasm)
    data = rt.load_description(description)
    assert data is not None and set(data) == {"imports", "exports", "plugsafe_load"}
    # Read back exactly: the same infos, the precheck's shape and the memories.
    assert rt.parse_description(description) == (module.imports, module.exports)
    assert rt.parse_description(data) == (module.imports, module.exports)
    meta = _loader._read_meta(description)
    assert meta is not None
    shape, memories = meta
    assert shape == _wasmbin.ModuleShape(*data["plugsafe_load"][0])  # type: ignore[index]
    assert [(m.minimum, m.maximum) for m in memories] == [(65536, None)]


def _code() -> object:
    return compile("1", "<x>", "eval")


# Well-formed marshal data that is not a description, and bytes that are not marshal data.
NOT_DESCRIPTIONS: list[object] = [
    b"",
    b"{",
    b'{"imports": [], "exports": []}',  # what entries held before: JSON
    b"\xff" * 40,
    [],
    {"imports": [], "exports": []},  # lists, not tuples
    {"imports": ()},
    {"imports": (), "exports": ((1, "func", (), (), ""),)},
    {"imports": (), "exports": (("f", "fnuc", (), (), ""),)},
    {"imports": (), "exports": (("f", "func", ("i32", 7), (), ""),)},
    {"imports": (), "exports": (("f", "func", (), ()),)},
    {"imports": (("m", "n", "func", (), (), b"detail"),), "exports": ()},
    {"imports": ("m",), "exports": ()},
    {"imports": (), "exports": _code()},
    _code(),
]


@pytest.mark.parametrize("bad", NOT_DESCRIPTIONS, ids=range(len(NOT_DESCRIPTIONS)))
def test_a_description_of_the_wrong_shape_is_refused(bad: object) -> None:
    raw = bad if isinstance(bad, bytes) else marshal.dumps(bad)
    with pytest.raises(rt.WasmFailure, match="unreadable module description"):
        rt.parse_description(raw)
    assert _loader._read_meta(raw) is None


@pytest.mark.parametrize(
    "meta",
    [
        [(1, 2, 3, 4, 5, 6), ()],  # a list
        ((1, 2, 3, 4, 5), ()),
        ((1, 2, 3, 4, 5, -6), ()),
        ((1, 2, 3, 4, 5, True), ()),
        ((1, 2, 3, 4, 5, 6.0), ()),
        ((1, 2, 3, 4, 5, 6), ((1,),)),
        ((1, 2, 3, 4, 5, 6), ((1, -2),)),
        ((1, 2, 3, 4, 5, 6), ((1, 2, 3),)),
        ((1, 2, 3, 4, 5, 6), "x"),
        ((1, 2, 3, 4, 5, 6), (), ()),
        "(1, 2, 3, 4, 5, 6)",
    ],
)
def test_a_loader_part_of_the_wrong_shape_reads_as_absent(meta: object) -> None:
    good = {"imports": (), "exports": (), "plugsafe_load": ((1, 2, 3, 4, 5, 6), ((1, None),))}
    assert _loader._read_meta(marshal.dumps(good)) is not None
    assert _loader._read_meta(marshal.dumps({**good, "plugsafe_load": meta})) is None


def test_a_json_entry_under_todays_key_is_compiled_again(
    tmp_path: Path, prechecks: list[int]
) -> None:
    # What an entry held before its description left JSON (issue 14), digest and all: never
    # trusted, compiled again and rewritten in today's format.
    wasm = _wasm(ECHO)
    engine = rt.shared_engine(metered=False, max_stack=512 * 1024)
    loader = _loader.ModuleLoader(max_stack=512 * 1024, cache_dir=tmp_path)
    module = loader.load(wasm, plugsafe.Policy(), engine).module
    cache, key, _ = _stored(loader, wasm)
    legacy = (
        b'{"plugsafe_load":{"shape":[3,0,3,20,2,2],"memories":[[65536,null]]},'
        b'"imports":[],"exports":[["echo","func",["i32","i32"],["i64"],""]]}'
    )
    cache.put(key, module.serialize(), legacy)
    loader.clear()
    runs = len(prechecks)
    assert loader.load(wasm, plugsafe.Policy(), engine).module.exports == module.exports
    assert len(prechecks) == runs + 1
    _, _, (description, _) = _stored(loader, wasm)
    assert rt.load_description(description) is not None
