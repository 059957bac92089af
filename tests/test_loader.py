"""The one load pipeline (_loader): every entry point refuses the same modules the same way."""

from __future__ import annotations

import ast
import hashlib
import io
from pathlib import Path

import pytest

import plugsafe
from plugsafe import _cli, _loader
from plugsafe._loader import LoadedModule

from wat import ECHO

PACKAGE = Path(plugsafe.__file__).parent


def test_prepare_gives_a_module_without_instantiating(host: plugsafe.Host, tmp_path: Path) -> None:
    path = tmp_path / "echo.wat"
    path.write_text(ECHO)
    policy = plugsafe.Policy(fuel=1000)
    loaded = host._prepare(path, policy=policy)
    assert isinstance(loaded, LoadedModule)
    assert loaded.name == "echo" and loaded.format == "wat" and loaded.policy is policy
    assert loaded.source_size == len(ECHO.encode())
    assert loaded.source_sha256 == hashlib.sha256(ECHO.encode()).hexdigest()
    assert loaded.wasm.startswith(b"\x00asm") and loaded.engine.metered
    assert "echo" in loaded.module.exports
    assert [m.minimum for m in loaded.memories] == [65536]
    # Loading the same bytes again is a hit in the host's module cache: the same module.
    again = host._prepare(loaded.wasm, policy=policy, name="x")
    assert again.module is loaded.module and again.format == "wasm"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "is empty"),
        (b"\x00asm\x01\x00\x00\x00\xff", "not a valid WebAssembly module"),
        (b"\x7fELF\x02\x01", "not a WebAssembly module"),
        (b"(module (func", "nor valid WAT"),
    ],
)
def test_the_cli_and_the_host_refuse_alike(
    host: plugsafe.Host, tmp_path: Path, data: bytes, words: str
) -> None:
    path = tmp_path / "bad.wasm"
    path.write_bytes(data)
    with pytest.raises(plugsafe.InvalidModuleError, match=words) as info:
        host.load(path)
    for command in ("check", "inspect"):
        out, err = io.StringIO(), io.StringIO()
        code = _cli.main([command, str(path)], stdout=out, stderr=err)
        assert code == (_cli.EXIT_CHECK_FAILED if command == "check" else _cli.EXIT_LOAD)
        assert str(info.value) in out.getvalue() + err.getvalue()


def _imports(module: str) -> list[tuple[str, bool]]:
    """(imported plugsafe module, imported inside a function?) for one of our modules."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom) and child.level == 1:
                for alias in child.names if child.module is None else [child]:
                    name = child.module if child.module else alias.name  # type: ignore[union-attr]
                    found.append((str(name), nested))
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # not a runtime import
            visit(child, inner)

    visit(tree, False)
    return found


@pytest.mark.parametrize(
    ("module", "must_not_import"),
    [
        ("_policyfile", "_policy"),
        ("_config", "_host"),
        ("_units", "_policy"),
        ("_wasmbin", "_loader"),
    ],
)
def test_no_import_cycles(module: str, must_not_import: str) -> None:
    # The dependency runs one way: _policy -> _policyfile -> _units, _host -> _config.
    assert (must_not_import, False) not in _imports(module)
    assert (must_not_import, True) not in _imports(module)


@pytest.mark.parametrize("module", ["_policy", "_host", "_loader", "_cli", "_config"])
def test_no_deferred_imports_of_our_own_modules(module: str) -> None:
    deferred = [name for name, nested in _imports(module) if nested]
    # _cli imports the optional SDK templates late on purpose (importlib, not an import).
    assert deferred == [], deferred


def test_a_pool_reads_and_checks_its_file_once(
    host: plugsafe.Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[object] = []
    real = _loader.read_plugin_file

    def counting(path: object, limit: int, **kwargs: str) -> bytes:
        reads.append(path)
        return real(path, limit, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_loader, "read_plugin_file", counting)
    path = tmp_path / "echo.wat"
    path.write_text(ECHO)
    with plugsafe.PluginPool(path, size=3, host=host) as pool:
        assert pool.call("echo", b"x") == b"x"
        assert pool.name == "echo"
    assert len(reads) == 1
