"""Gaps left by session 9: hostile nesting in JSON paths, one re-sender for cancelled calls,
a stale ``_speedups`` build, a signal-safe ``PluginPool.close``, lying cache descriptions."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
from component_wat import WORLD

import plugsafe
from plugsafe import _cli, _component_cli

from wat import ECHO


def _deep(depth: int) -> Any:
    """A list nested ``depth`` deep (built without recursion)."""
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


# -- 1. JSON nested too deeply ------------------------------------------------------------------


def test_call_json_with_a_value_nested_too_deeply_is_value_error(
    host: plugsafe.Host,
) -> None:
    plugin = host.load(ECHO.encode(), name="echo")
    with pytest.raises(ValueError, match="nested too deeply") as info:
        plugin.call_json("echo", _deep(100_000))
    assert isinstance(info.value.__cause__, RecursionError)
    assert not isinstance(info.value, RecursionError)
    assert plugin.call_json("echo", [1, {"a": 2}]) == [1, {"a": 2}]


def test_call_json_async_with_a_value_nested_too_deeply_is_value_error(
    host: plugsafe.Host,
) -> None:
    plugin = host.load(ECHO.encode(), name="echo")
    with pytest.raises(ValueError, match="nested too deeply"):
        asyncio.run(plugin.call_json_async("echo", _deep(100_000)))


def test_pool_call_json_with_a_value_nested_too_deeply_is_value_error(
    host: plugsafe.Host,
) -> None:
    with plugsafe.PluginPool(ECHO.encode(), size=1, host=host, name="echo") as pool:
        with pytest.raises(ValueError, match="nested too deeply"):
            pool.call_json("echo", _deep(100_000))
        with pytest.raises(ValueError, match="nested too deeply"):
            asyncio.run(pool.call_json_async("echo", _deep(100_000)))
        assert pool.call_json("echo", {"k": [1]}) == {"k": [1]}


def _component_run(tmp_path: Path, *argv: str) -> tuple[int, str, str]:
    path = tmp_path / "world.wasm"
    path.write_bytes(plugsafe._runtime.wat_to_wasm(WORLD))
    out, err = io.StringIO(), io.StringIO()
    code = _cli.main(["run", str(path), *argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("depth", [900, 100_000])
def test_component_cli_input_nested_too_deeply_is_signature_error(
    tmp_path: Path, depth: int
) -> None:
    text = "[" * depth + "]" * depth
    code, out, err = _component_run(tmp_path, "sum", "--json", "--input", text)
    assert "internal error" not in err
    report = json.loads(out)
    assert report["error"]["type"] == "SignatureError"
    assert code == _cli.EXIT_PLUGIN or code == _cli.EXIT_USAGE


def test_component_cli_result_nested_too_deeply_is_abi_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A component's result is as deep as its type, which the guest's binary declares: a
    # result too deep for Python's JSON encoder is the guest's fault, reported as AbiError.
    monkeypatch.setattr(_component_cli, "to_json", lambda value: _deep(100_000))
    for extra in ((), ("--json",)):
        code, out, err = _component_run(tmp_path, "add", *extra, "--input", "[2, 3]")
        assert "internal error" not in err
        assert "AbiError" in out + err and "nested too deeply" in out + err
        assert code == _cli.EXIT_PLUGIN


def test_policy_file_nested_too_deeply_is_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("max_input = " + "[" * 5000 + "1" + "]" * 5000 + "\n")
    with pytest.raises(plugsafe.PolicyError, match="not a usable TOML file"):
        plugsafe.Policy.from_toml(path)
    out, err = io.StringIO(), io.StringIO()
    code = _cli.main(["run", "--policy", str(path), "x.wasm", "f"], stdout=out, stderr=err)
    assert code == _cli.EXIT_USAGE and "internal error" not in err.getvalue()
