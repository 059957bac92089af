"""The plugsafe command line, driven as a real process (python -m plugsafe and the script)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from plugsafe import _cli

from wat import ECHO, abi_module

ROOT = Path(__file__).resolve().parent.parent

LOGS = abi_module(
    """
  (data (i32.const 16) "hello from the plugin\\nforged line")
  (func (export "hello") (param $p i32) (param $n i32) (result i64)
    (call $log (i32.const 2) (i32.const 16) (i32.const 33))
    (call $ok (local.get $p) (local.get $n)))
""",
    imports='(import "plugsafe" "log" (func $log (param i32 i32 i32)))',
)

# echo, fail, and ABI-typed functions that loop forever or trap.
PLUGIN = abi_module(
    """
  (func (export "echo") (param $p i32) (param $n i32) (result i64)
    (call $ok (local.get $p) (local.get $n)))
  (func (export "fail") (param $p i32) (param $n i32) (result i64)
    (call $err (local.get $p) (local.get $n)))
  (func (export "spin") (param i32 i32) (result i64)
    (loop $l (br $l)) (i64.const 0))
  (func (export "trap") (param i32 i32) (result i64)
    unreachable)
"""
)

# Imports a function only an app could provide, one the CLI host has, and WASI.
GREEDY = """(module
  (import "plugsafe" "log" (func (param i32 i32 i32)))
  (import "plugsafe" "lookup" (func (param i32 i32) (result i64)))
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))))
"""

NUMERIC = (
    '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
)


def plugsafe(
    *args: str | Path, stdin: bytes = b"", cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "plugsafe", *map(str, args)],
        input=stdin,
        capture_output=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


def text(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode() + result.stderr.decode()


@pytest.fixture
def echo(tmp_path: Path) -> Path:
    path = tmp_path / "echo.wat"
    path.write_text(PLUGIN)
    return path


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    path = tmp_path / "logs.wat"
    path.write_text(LOGS)
    return path


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text('[imports]\nallow = ["log"]\n[limits]\nfuel = 1_000_000\ntimeout = "2s"\n')
    return path


# -- run --------------------------------------------------------------------------------------


def test_run_with_input_text(echo: Path) -> None:
    result = plugsafe("run", echo, "echo", "--input", "héllo")
    assert result.returncode == 0, text(result)
    assert result.stdout == "héllo".encode()


def test_run_with_input_file_and_stdin(echo: Path, tmp_path: Path) -> None:
    data = bytes(range(256))
    (tmp_path / "in.bin").write_bytes(data)
    assert plugsafe("run", echo, "echo", "--input-file", tmp_path / "in.bin").stdout == data
    assert plugsafe("run", echo, "echo", stdin=data).stdout == data
    assert plugsafe("run", echo, "echo", "--input-file", "-", stdin=b"x").stdout == b"x"


def test_run_input_options_are_exclusive(echo: Path, tmp_path: Path) -> None:
    result = plugsafe("run", echo, "echo", "--input", "a", "--input-file", tmp_path / "x")
    assert result.returncode == _cli.EXIT_USAGE
    assert b"not allowed with argument" in result.stderr


def test_run_json_and_stats(echo: Path, policy: Path) -> None:
    result = plugsafe("run", echo, "echo", "--input", "hi", "--policy", policy, "--json", "--stats")
    assert result.returncode == 0, text(result)
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["output"] == "hi"
    assert report["output_encoding"] == "utf-8"
    stats = report["stats"]
    assert stats["fuel_limit"] == 1_000_000
    assert 0 < stats["fuel_consumed"] < 1_000_000
    assert stats["duration_seconds"] > 0
    assert stats["memory_bytes"] == 65536
    assert stats["host_calls"] == 0


def test_run_json_binary_output_is_base64(echo: Path) -> None:
    result = plugsafe("run", echo, "echo", "--json", stdin=b"\xff\x00")
    report = json.loads(result.stdout)
    assert report["output_encoding"] == "base64"
    assert report["output"] == "/wA="


def test_run_stats_text_goes_to_stderr(echo: Path) -> None:
    result = plugsafe("run", echo, "echo", "--input", "hi", "--stats", "--fuel", "50_000")
    assert result.returncode == 0, text(result)
    assert result.stdout == b"hi"
    err = result.stderr.decode()
    assert "fuel:" in err and "of 50,000" in err
    assert "time:" in err and "memory:" in err and "peak" in err


def test_plugin_logs_go_to_stderr_escaped(logs: Path, policy: Path) -> None:
    result = plugsafe("run", logs, "hello", "--input", "out", "--policy", policy)
    assert result.returncode == 0, text(result)
    assert result.stdout == b"out"
    err = result.stderr.decode()
    assert "[logs] info: hello from the plugin\\nforged line" in err
    assert "\nforged line" not in err
    quiet = plugsafe("run", logs, "hello", "--policy", policy, "--log-level", "off")
    assert quiet.stderr == b""


def test_run_needs_log_allowed(logs: Path) -> None:
    result = plugsafe("run", logs, "hello")
    assert result.returncode == _cli.EXIT_LOAD
    assert b"plugsafe.log (not allowed" in result.stderr
    assert plugsafe("run", logs, "hello", "--allow", "log").returncode == 0


def test_run_a_policy_allowing_app_functions_still_runs(echo: Path, tmp_path: Path) -> None:
    # A policy written for an app may allow the app's functions; a plugin that does not import
    # them runs from the command line all the same.
    app_policy = tmp_path / "app.toml"
    app_policy.write_text('[imports]\nallow = ["log", "lookup"]\n')
    assert plugsafe("run", echo, "echo", "--policy", app_policy, "--input", "a").stdout == b"a"


# -- exit codes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["run"], _cli.EXIT_USAGE, "required"),
        (["frobnicate"], _cli.EXIT_USAGE, "invalid choice"),
        ([], _cli.EXIT_USAGE, "required"),
        (["run", "{echo}", "echo", "--fuel", "-5"], _cli.EXIT_USAGE, "--fuel: expected an integer"),
        (["run", "{echo}", "echo", "--memory", "lots"], _cli.EXIT_USAGE, "--memory: expected a"),
        (["run", "{echo}", "echo", "--policy", "{bad_policy}"], _cli.EXIT_USAGE, "limits.fuel"),
        (["run", "{echo}", "echo", "--input-file", "{missing}"], _cli.EXIT_USAGE, "cannot read"),
        (["run", "{missing}", "echo"], _cli.EXIT_LOAD, "cannot read plugin file"),
        (["run", "{junk}", "echo"], _cli.EXIT_LOAD, "InvalidModuleError"),
        (["run", "{echo}", "spin", "--fuel", "100000"], _cli.EXIT_LIMIT, "FuelExhausted"),
        (["run", "{echo}", "spin", "--timeout", "50ms"], _cli.EXIT_LIMIT, "DeadlineExceeded"),
        (["run", "{echo}", "echo", "--memory", "1KiB"], _cli.EXIT_LIMIT, "MemoryLimitExceeded"),
        (["run", "{echo}", "trap"], _cli.EXIT_PLUGIN, "PluginTrap"),
        (["run", "{echo}", "fail", "--input", "boom"], _cli.EXIT_PLUGIN, "GuestError"),
        (["run", "{echo}", "nosuch"], _cli.EXIT_PLUGIN, "ExportNotFoundError"),
    ],
)
def test_exit_codes(args: list[str], code: int, words: str, echo: Path, tmp_path: Path) -> None:
    bad_policy = tmp_path / "bad.toml"
    bad_policy.write_text("[limits]\nfuel = -1\n")
    junk = tmp_path / "junk.wasm"
    junk.write_bytes(b"\x00asm\x01\x00\x00\x00\xff")
    names = {"echo": echo, "bad_policy": bad_policy, "missing": tmp_path / "no", "junk": junk}
    result = plugsafe(*(a.format(**names) for a in args))
    assert result.returncode == code, text(result)
    assert words in result.stderr.decode()


def test_exit_codes_are_distinct() -> None:
    codes = [
        _cli.EXIT_OK,
        _cli.EXIT_CHECK_FAILED,
        _cli.EXIT_USAGE,
        _cli.EXIT_LOAD,
        _cli.EXIT_LIMIT,
        _cli.EXIT_PLUGIN,
        _cli.EXIT_INTERNAL,
        _cli.EXIT_INTERRUPTED,
    ]
    assert len(set(codes)) == len(codes)
    doc = (ROOT / "docs" / "cli.md").read_text()
    for code in codes:
        assert f"| {code} |" in doc


def test_json_errors_are_json(echo: Path) -> None:
    result = plugsafe("run", echo, "spin", "--fuel", "1000", "--json", "--stats")
    assert result.returncode == _cli.EXIT_LIMIT
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["error"]["type"] == "FuelExhausted"
    assert report["error"]["exit_code"] == _cli.EXIT_LIMIT
    assert report["stats"]["fuel_consumed"] == 1000


# -- check ------------------------------------------------------------------------------------


def test_check_lists_every_import(tmp_path: Path, policy: Path) -> None:
    greedy = tmp_path / "greedy.wat"
    greedy.write_text(GREEDY)
    result = plugsafe("check", greedy, "--policy", policy)
    assert result.returncode == _cli.EXIT_CHECK_FAILED, text(result)
    lines = result.stdout.decode().splitlines()
    row = {line.split()[0]: line for line in lines[1:4]}
    assert "allowed" in row["plugsafe.log"] and "not" not in row["plugsafe.log"]
    assert "not allowed" in row["plugsafe.lookup"]
    assert "unknown" in row["wasi_snapshot_preview1.fd_write"]
    assert "would NOT load" in lines[-1] or any("would NOT load" in x for x in lines)


def test_check_json(tmp_path: Path, policy: Path) -> None:
    greedy = tmp_path / "greedy.wat"
    greedy.write_text(GREEDY)
    result = plugsafe("check", greedy, "--policy", policy, "--json")
    report = json.loads(result.stdout)
    assert report["loads"] is False
    statuses = {r["import"]: r["status"] for r in report["imports"]}
    assert statuses == {
        "plugsafe.log": "allowed",
        "plugsafe.lookup": "not allowed",
        "wasi_snapshot_preview1.fd_write": "unknown",
    }
    assert report["error"]["type"] == "ImportNotAllowedError"


def test_check_passes(logs: Path, policy: Path) -> None:
    result = plugsafe("check", logs, "--policy", policy)
    assert result.returncode == 0, text(result)
    assert "would load under this policy" in result.stdout.decode()


def test_check_app_functions_allowed_by_the_policy(tmp_path: Path) -> None:
    plugin = tmp_path / "app.wat"
    plugin.write_text('(module (import "plugsafe" "lookup" (func (param i32 i32) (result i64))))')
    app_policy = tmp_path / "app.toml"
    app_policy.write_text('[imports]\nallow = ["lookup"]\n')
    result = plugsafe("check", plugin, "--policy", app_policy, "--json")
    assert result.returncode == 0, text(result)
    report = json.loads(result.stdout)
    assert report["loads"] is True
    assert report["imports"][0]["status"] == "allowed"
    assert "host app must register" in report["note"]


def test_check_fails_for_limits_at_load(tmp_path: Path, policy: Path) -> None:
    big = tmp_path / "big.wat"
    big.write_text('(module (memory (export "memory") 100))')
    result = plugsafe("check", big, "--policy", policy, "--memory", "1MiB")
    assert result.returncode == _cli.EXIT_CHECK_FAILED
    assert "MemoryLimitExceeded" in result.stdout.decode()


def test_check_bad_policy_is_a_usage_error(echo: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nfuel = -5\n")
    result = plugsafe("check", echo, "--policy", bad)
    assert result.returncode == _cli.EXIT_USAGE
    assert "limits.fuel: expected an integer >= 0, got -5" in result.stderr.decode()


# -- inspect ----------------------------------------------------------------------------------


def test_inspect(logs: Path) -> None:
    result = plugsafe("inspect", logs)
    assert result.returncode == 0, text(result)
    out = result.stdout.decode()
    assert hashlib.sha256(logs.read_bytes()).hexdigest() in out
    assert "ABI version: 1" in out
    assert "func plugsafe.log(i32, i32, i32) -> ()" in out
    assert "func hello(i32, i32) -> i64" in out
    assert "memory 0: min 64 KiB, max none" in out
    assert f"{len(logs.read_bytes())} bytes of WAT text" in out


def test_inspect_json(tmp_path: Path) -> None:
    plugin = tmp_path / "n.wat"
    plugin.write_text(
        '(module (memory 1 2) (func (export "add") (param i32 i32) (result i32) local.get 0))'
    )
    report = json.loads(plugsafe("inspect", plugin, "--json").stdout)
    assert report["abi_version"] is None
    assert "not a plugsafe ABI plugin" in report["abi_note"]
    assert report["exports"] == [
        {
            "name": "add",
            "kind": "func",
            "params": ["i32", "i32"],
            "results": ["i32"],
            "detail": "",
            "signature": "func add(i32, i32) -> i32",
        }
    ]
    assert report["memories"] == [{"index": 0, "min_bytes": 65536, "max_bytes": 131072}]
    assert report["sha256"] == hashlib.sha256(plugin.read_bytes()).hexdigest()
    assert report["size"] == len(plugin.read_bytes())


def test_inspect_reports_a_foreign_abi_version(tmp_path: Path) -> None:
    plugin = tmp_path / "v9.wat"
    plugin.write_text(
        ECHO.replace(
            '"plugsafe_abi_version") (result i32) i32.const 1',
            '"plugsafe_abi_version") (result i32) i32.const 9',
        )
    )
    report = json.loads(plugsafe("inspect", plugin, "--json").stdout)
    assert report["abi_version"] == 9


def test_inspect_escapes_hostile_names(tmp_path: Path) -> None:
    plugin = tmp_path / "evil.wat"
    plugin.write_text('(module (func (export "a\\1b[31mred\\0a") ))')
    result = plugsafe("inspect", plugin)
    assert result.returncode == 0, text(result)
    assert b"\x1b" not in result.stdout
    assert b"\\x1b[31mred\\n" in result.stdout


def test_inspect_matches_the_config_pin() -> None:
    # `plugsafe inspect` prints the hash a host config pins.
    report = json.loads(
        plugsafe("inspect", ROOT / "examples" / "wat" / "greet.wat", "--json").stdout
    )
    assert f'sha256 = "{report["sha256"]}"' in (ROOT / "examples" / "host.toml").read_text()


# -- new --------------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["rust", "c"])
def test_new_creates_a_project(lang: str, tmp_path: Path) -> None:
    result = plugsafe("new", lang, "myplugin", cwd=tmp_path)
    assert result.returncode == 0, text(result)
    project = tmp_path / "myplugin"
    assert (project / "policy.toml").is_file()
    assert b"created" in result.stdout
    again = plugsafe("new", lang, "myplugin", cwd=tmp_path)
    assert again.returncode == _cli.EXIT_USAGE


def test_new_rejects_unknown_languages(tmp_path: Path) -> None:
    assert plugsafe("new", "cobol", "x", cwd=tmp_path).returncode == _cli.EXIT_USAGE


# -- the entry points -------------------------------------------------------------------------


def test_version_and_help() -> None:
    result = plugsafe("--version")
    assert result.returncode == 0
    assert result.stdout.decode().startswith("plugsafe ")
    helped = plugsafe("--help")
    assert helped.returncode == 0
    for command in ("run", "check", "inspect", "new"):
        assert command in helped.stdout.decode()


def test_installed_console_script(echo: Path) -> None:
    # The script pip installed next to this interpreter, falling back to the one on PATH.
    script = Path(sys.executable).with_name("plugsafe")
    if not script.exists():
        import shutil

        found = shutil.which("plugsafe")
        if found is None:
            pytest.skip("the plugsafe console script is not installed")
        script = Path(found)
    result = subprocess.run(
        [str(script), "run", str(echo), "echo", "--input", "script"],
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"script"


def test_terminal_output_is_escaped() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    _cli._write_output(b"ok\x1b[2J\x07\nnext", out)
    assert out.getvalue() == "ok\\x1b[2J\\x07\nnext\n"


def test_numeric_plugin_cannot_be_run_with_the_abi(tmp_path: Path) -> None:
    plugin = tmp_path / "n.wat"
    plugin.write_text(NUMERIC)
    result = plugsafe("run", plugin, "add")
    assert result.returncode == _cli.EXIT_PLUGIN
    assert b"AbiError" in result.stderr


def test_a_trap_is_one_line_with_the_backtrace_in_its_own_json_field(echo: Path) -> None:
    result = plugsafe("run", str(echo), "trap", "--json")
    assert result.returncode == _cli.EXIT_PLUGIN, text(result)
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "PluginTrap"
    assert "\n" not in error["message"] and "trapped" in error["message"]
    assert error["trap_code"] == "UNREACHABLE"
    assert "wasm backtrace" in error["backtrace"]
    # The human form leads with the same single line.
    plain = plugsafe("run", str(echo), "trap")
    assert plain.stderr.decode().count("\n") == 1, text(plain)
