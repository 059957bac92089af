"""Loading: sources, invalid modules, deny-by-default imports, the ABI version, load-time limits."""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime

import plugsafe
from plugsafe import Policy

from wat import ECHO, abi_module

ADD = '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'


def test_load_from_wasm_bytes_wat_bytes_and_paths(host: plugsafe.Host, tmp_path: Path) -> None:
    binary = wasmtime.wat2wasm(ADD)
    (tmp_path / "adder.wasm").write_bytes(binary)
    (tmp_path / "text.wat").write_text(ADD)
    for source in (
        binary,
        bytearray(binary),
        ADD.encode(),
        str(tmp_path / "adder.wasm"),
        tmp_path / "text.wat",
    ):
        with host.load(source) as plugin:
            assert plugin.invoke("add", 2, 3) == 5
    assert host.load(tmp_path / "adder.wasm").name == "adder"
    assert host.load(binary).name.startswith("plugin-")
    assert host.load(binary, name="calc").name == "calc"


def test_str_source_is_a_path_not_wat(host: plugsafe.Host) -> None:
    with pytest.raises(plugsafe.PluginLoadError, match="cannot read plugin file") as info:
        host.load(ADD)
    # It says what to do, and does not echo the whole text back.
    assert "pass the text as bytes (text.encode())" in str(info.value)
    assert len(str(info.value)) < 200


def test_a_file_whose_name_starts_like_wat_is_still_read(
    host: plugsafe.Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "(module).wasm").write_bytes(wasmtime.wat2wasm(ADD))
    assert host.load("(module).wasm").invoke("add", 2, 3) == 5


def test_missing_file(host: plugsafe.Host, tmp_path: Path) -> None:
    with pytest.raises(plugsafe.PluginLoadError, match="cannot read plugin file") as info:
        host.load(tmp_path / "nope.wasm")
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_wrong_source_type(host: plugsafe.Host) -> None:
    with pytest.raises(TypeError, match="source must be"):
        host.load(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty"),
        (b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 40, "does not start with"),
        (b"hello, not a module (", "nor valid WAT"),
        (b"\x00asm\x01\x00\x00\x00\x01\x05", "not a valid WebAssembly module"),  # truncated
        (b"\x00asm\x02\x00\x00\x00", "not a valid WebAssembly module"),  # bad version
    ],
)
def test_invalid_modules(host: plugsafe.Host, data: bytes, message: str) -> None:
    with pytest.raises(plugsafe.InvalidModuleError, match=message):
        host.load(data)


def test_module_that_fails_validation(host: plugsafe.Host) -> None:
    bad = "(module (func (result i32) i64.const 1))"
    with pytest.raises(wasmtime.WasmtimeError):
        wasmtime.Module.validate(wasmtime.Engine(), wasmtime.wat2wasm(bad))
    with pytest.raises(plugsafe.InvalidModuleError, match="type mismatch"):
        host.load(bad.encode())


def test_disabled_features_are_refused(host: plugsafe.Host) -> None:
    shared = "(module (memory 1 1 shared))"
    with pytest.raises(plugsafe.InvalidModuleError):
        host.load(shared.encode())
    mem64 = "(module (memory i64 1))"
    with pytest.raises(plugsafe.InvalidModuleError):
        host.load(mem64.encode())


def test_module_over_max_size(host: plugsafe.Host, tmp_path: Path) -> None:
    binary = wasmtime.wat2wasm(ADD)
    policy = Policy(max_module_size=len(binary) - 1)
    with pytest.raises(plugsafe.InvalidModuleError, match="max_module_size"):
        host.load(binary, policy=policy)
    path = tmp_path / "big.wasm"
    path.write_bytes(binary)
    with pytest.raises(plugsafe.InvalidModuleError, match="max_module_size"):
        host.load(path, policy=policy)
    assert host.load(binary, policy=Policy(max_module_size=len(binary))).invoke("add", 1, 1) == 2


def test_deny_by_default_lists_every_offending_import(host: plugsafe.Host) -> None:
    @host.function
    def lookup(key: str) -> bytes:
        return b""

    wat = """(module
      (import "plugsafe" "log" (func (param i32 i32 i32)))
      (import "plugsafe" "lookup" (func (param i32 i32) (result i64)))
      (import "plugsafe" "nosuch" (func))
      (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
      (import "env" "memory" (memory 1))
      (import "plugsafe" "table" (table 1 funcref)))"""
    with pytest.raises(plugsafe.ImportNotAllowedError) as info:
        host.load(wat.encode(), name="greedy")
    err = info.value
    assert set(err.imports) == {
        "plugsafe.log",
        "plugsafe.lookup",
        "plugsafe.nosuch",
        "wasi_snapshot_preview1.fd_write",
        "env.memory",
        "plugsafe.table",
    }
    reasons = {f"{p.module}.{p.name}": p.reason for p in err.problems}
    assert reasons["plugsafe.log"] == "not allowed"
    assert reasons["plugsafe.lookup"] == "not allowed"
    assert reasons["plugsafe.nosuch"] == "unknown"
    assert reasons["wasi_snapshot_preview1.fd_write"] == "unknown"
    assert reasons["env.memory"] == "unknown"
    text = str(err)
    assert "greedy" in text and "WASI is not enabled" in text
    for name in err.imports:
        assert name in text


def test_allowed_imports_load(host: plugsafe.Host) -> None:
    wat = '(module (import "plugsafe" "log" (func (param i32 i32 i32))))'
    plugin = host.load(wat.encode(), policy=Policy(allow={"log"}))
    assert [str(i) for i in plugin.imports] == ["func plugsafe.log(i32, i32, i32) -> ()"]


def test_wrong_import_signature_is_reported(host: plugsafe.Host) -> None:
    wat = '(module (import "plugsafe" "log" (func (param i64))))'
    with pytest.raises(plugsafe.ImportNotAllowedError) as info:
        host.load(wat.encode(), policy=Policy(allow={"log"}))
    (problem,) = info.value.problems
    assert problem.reason == "wrong type"
    assert "(i32, i32, i32) -> ()" in problem.detail and "(i64) -> ()" in problem.detail


def test_abi_version_mismatch_names_both_versions(host: plugsafe.Host) -> None:
    wat = ECHO.replace(
        '(func (export "plugsafe_abi_version") (result i32) i32.const 1)',
        '(func (export "plugsafe_abi_version") (result i32) i32.const 7)',
    )
    with pytest.raises(plugsafe.AbiVersionError) as info:
        host.load(wat.encode())
    assert info.value.declared == 7 and info.value.supported == plugsafe.ABI_VERSION == 1
    assert "version 7" in str(info.value) and "version 1" in str(info.value)


def test_abi_plugin_without_alloc_or_memory_is_refused(host: plugsafe.Host) -> None:
    wat = '(module (func (export "plugsafe_abi_version") (result i32) i32.const 1))'
    expected = r"lacks a memory export named 'memory' and a function export 'plugsafe_alloc'"
    with pytest.raises(plugsafe.PluginLoadError, match=expected):
        host.load(wat.encode())
    wat = '(module (func (export "plugsafe_abi_version") (param i32) (result i32) i32.const 1))'
    with pytest.raises(plugsafe.PluginLoadError, match=r"\(\) -> i32"):
        host.load(wat.encode())


def test_start_function_loop_hits_fuel_at_load(host: plugsafe.Host) -> None:
    wat = "(module (func $s (loop $l (br $l))) (start $s))"
    with pytest.raises(plugsafe.FuelExhausted) as info:
        host.load(wat.encode(), policy=Policy(fuel=100_000))
    assert info.value.phase == "load"


def test_start_function_loop_hits_timeout_at_load(host: plugsafe.Host) -> None:
    wat = "(module (func $s (loop $l (br $l))) (start $s))"
    with pytest.raises(plugsafe.DeadlineExceeded) as info:
        host.load(wat.encode(), policy=Policy(timeout=0.05))
    assert info.value.phase == "load"


def test_start_function_trap_is_a_load_error(host: plugsafe.Host) -> None:
    wat = "(module (func $s unreachable) (start $s))"
    with pytest.raises(plugsafe.PluginLoadError, match="unreachable"):
        host.load(wat.encode())


def test_initial_memory_over_cap_fails_load(host: plugsafe.Host) -> None:
    with pytest.raises(plugsafe.MemoryLimitExceeded) as info:
        host.load(b"(module (memory 100))", policy=Policy(memory=2 * 2**20))
    assert info.value.phase == "load"
    assert "6400 KiB" in str(info.value) or "needs" in str(info.value)


def test_initial_memories_are_capped_together(host: plugsafe.Host) -> None:
    # Two memories of 20 pages each (1.25 MiB) fit a 4 MiB cap; one of 40 does not under the
    # split that keeps their sum under the cap.
    ok = "(module (memory 20) (memory 20))"
    host.load(ok.encode(), policy=Policy(memory=4 * 2**20))
    with pytest.raises(plugsafe.MemoryLimitExceeded, match="split evenly over its 2 memories"):
        host.load(b"(module (memory 40) (memory 1))", policy=Policy(memory=4 * 2**20))


def test_table_over_cap_fails_load(host: plugsafe.Host) -> None:
    with pytest.raises(plugsafe.PluginLoadError):
        host.load(b"(module (table 1000 funcref))", policy=Policy(max_table_elements=100))
    host.load(b"(module (table 100 funcref))", policy=Policy(max_table_elements=100))


def test_same_bytes_load_as_independent_plugins(host: plugsafe.Host) -> None:
    a = host.load(ECHO.encode(), name="a")
    b = host.load(ECHO.encode(), name="b")
    a.memory.write(2000, b"only-in-a")
    assert b.memory.read(2000, 9) != b"only-in-a"


def test_load_after_host_close(host: plugsafe.Host) -> None:
    host.close()
    with pytest.raises(plugsafe.PluginClosedError):
        host.load(ADD.encode())


def test_abi_module_helper_is_valid() -> None:
    wasmtime.wat2wasm(abi_module(""))


def test_a_nul_in_a_path_is_a_typed_error(host: plugsafe.Host) -> None:
    # open() raises ValueError, not OSError, for a NUL: it must not leak untyped.
    for load in (host.load, host.load_component):
        with pytest.raises(plugsafe.PluginLoadError, match="embedded null byte"):
            load("plugin\x00.wasm")
    with pytest.raises(plugsafe.PluginLoadError, match="as bytes"):
        host.load("(module\x00)")
    with pytest.raises(plugsafe.PolicyError, match="embedded null byte"):
        plugsafe.Policy.from_toml("policy\x00.toml")


def test_a_cache_dir_with_a_nul_is_not_used_and_says_so() -> None:
    with (
        pytest.warns(UserWarning, match="not caching compiled plugins"),
        plugsafe.Host(cache_dir="cache\x00dir") as host,
    ):
        assert host.load(ADD.encode()).invoke("add", 2, 3) == 5
