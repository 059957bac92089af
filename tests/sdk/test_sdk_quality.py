"""The SDKs themselves: Rust unit tests and docs, the C header in every dialect, typed Python."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import build_plugins
import pytest

import plugsafe

from .conftest import ROOT, RequireFn

RUST_SDK = ROOT / "plugins-sdk" / "rust"


def run(
    cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a tool; the caller asserts on the return code so failures show the output."""
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_rust_sdk_unit_tests(
    require: RequireFn, toolchains: build_plugins.Toolchains, tmp_path: Path
) -> None:
    require("rust")
    assert toolchains.cargo is not None and toolchains.rustc is not None
    env = {**os.environ, "RUSTC": toolchains.rustc, "CARGO_TARGET_DIR": str(tmp_path)}
    res = run([toolchains.cargo, "test", "--offline", "-q"], cwd=RUST_SDK, env=env)
    assert res.returncode == 0, res.stdout + res.stderr


def test_rust_sdk_builds_for_wasm_without_warnings(
    require: RequireFn, toolchains: build_plugins.Toolchains, tmp_path: Path
) -> None:
    """`#![warn(missing_docs)]` plus -D warnings: every public item has rustdoc."""
    require("rust")
    assert toolchains.cargo is not None and toolchains.rustc is not None
    env = {
        **os.environ,
        "RUSTC": toolchains.rustc,
        "CARGO_TARGET_DIR": str(tmp_path),
        "RUSTFLAGS": "-D warnings",
    }
    cmd = [toolchains.cargo, "build", "--offline", "-q", "--target", "wasm32-unknown-unknown"]
    res = run(cmd, cwd=RUST_SDK, env=env)
    assert res.returncode == 0, res.stdout + res.stderr


def test_rust_sdk_docs_build_without_warnings(
    require: RequireFn, toolchains: build_plugins.Toolchains, tmp_path: Path
) -> None:
    """rustdoc (the one next to the rustc in use) finds no broken links or other problems."""
    require("rust")
    assert toolchains.cargo is not None and toolchains.rustc is not None
    rustdoc = Path(toolchains.rustc).with_name("rustdoc")
    env = {
        **os.environ,
        "RUSTC": toolchains.rustc,
        "CARGO_TARGET_DIR": str(tmp_path),
        "RUSTDOCFLAGS": "-D warnings",
    }
    if rustdoc.exists():
        env["RUSTDOC"] = str(rustdoc)
    res = run([toolchains.cargo, "doc", "--offline", "-q", "--no-deps"], cwd=RUST_SDK, env=env)
    assert res.returncode == 0, res.stdout + res.stderr


USER_TU = r"""
#include "plugsafe.h"

PLUGSAFE_IMPORT(lookup) int64_t lookup(const char *key, size_t key_len);
PLUGSAFE_IMPORT(scale) double scale(double x, int64_t n, int32_t flag);

PLUGSAFE_EXPORT(everything) {
    char digits[21];
    plugsafe_bytes value = plugsafe_bytes_from(lookup((const char *)input, input_len));
    uint8_t *copy;
    PLUGSAFE_LOG_INFO("info");
    plugsafe_log_n(PLUGSAFE_LEVEL_DEBUG, digits, plugsafe_format_i64(-42, digits));
    if (!value.present) return plugsafe_error("missing");
    if (scale(1.0, 2, 1) < 0.0) return plugsafe_error_n("negative", 8);
    if (input_len == 1) return PLUGSAFE_OUTPUT_LITERAL("one");
    if (input_len == 3) return PLUGSAFE_ERROR_LITERAL("three");
    copy = (uint8_t *)plugsafe_memdup(value.ptr, value.len);
    if (copy == NULL) return plugsafe_output_str("out of memory");
    return plugsafe_output(copy, value.len);
}
"""

IMPL_TU = r"""
#define PLUGSAFE_IMPLEMENTATION
#include "plugsafe.h"
"""


@pytest.mark.parametrize(
    ("lang", "std", "libc"),
    [
        ("c", "c99", "none"),
        ("c", "c11", "none"),
        ("c++", "c++11", "none"),
        ("c++", "c++17", "none"),
        ("c", "c99", "wasi"),
    ],
)
def test_c_header_compiles_cleanly(
    require: RequireFn,
    toolchains: build_plugins.Toolchains,
    tmp_path: Path,
    lang: str,
    std: str,
    libc: str,
) -> None:
    """Two translation units (one with the implementation), -pedantic -Werror, linked."""
    require("wasi" if libc == "wasi" else "c")
    assert toolchains.clang is not None
    (tmp_path / "user.c").write_text(USER_TU)
    (tmp_path / "impl.c").write_text(IMPL_TU)
    target = (
        ["--target=wasm32-wasi", "-nostartfiles"]
        if libc == "wasi"
        else ["--target=wasm32-unknown-unknown", "-nostdlib"]
    )
    out = tmp_path / "all.wasm"
    cmd = [
        toolchains.clang,
        *target,
        "-x",
        lang,
        f"-std={std}",
        "-O2",
        "-Wall",
        "-Wextra",
        "-pedantic",
        "-Werror",
        f"-I{ROOT / 'plugins-sdk' / 'c'}",
        "-Wl,--no-entry",
        "-o",
        str(out),
        str(tmp_path / "user.c"),
        str(tmp_path / "impl.c"),
    ]
    res = run(cmd)
    assert res.returncode == 0, res.stderr
    with plugsafe.Host() as host:

        @host.function
        def lookup(key: str) -> bytes | None:
            return None if key == "none" else key.encode() * 2

        @host.function
        def scale(x: float, n: int, flag: bool) -> float:
            return x * n if flag else -1.0

        policy = plugsafe.Policy(allow=frozenset({"log", "lookup", "scale"}))
        with host.load(out, policy=policy, name="all") as plugin:
            assert plugin.call("everything", b"ab") == b"abab"
            assert plugin.call("everything", b"a") == b"one"
            with pytest.raises(plugsafe.GuestError, match="three"):
                plugin.call("everything", b"abc")
            with pytest.raises(plugsafe.GuestError, match="missing"):
                plugin.call("everything", b"none")


def test_python_sdk_code_is_typed() -> None:
    pytest.importorskip("mypy")
    files = [
        "tests/sdk",
        "plugins-sdk/build_plugins.py",
        "plugsafe/_scaffold.py",
        *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*_app.py")),
    ]
    env = {**os.environ, "MYPYPATH": str(ROOT / "plugins-sdk")}
    res = run([sys.executable, "-m", "mypy", "--strict", *files], cwd=ROOT, env=env)
    assert res.returncode == 0, res.stdout + res.stderr


def test_python_sdk_code_is_lint_clean() -> None:
    pytest.importorskip("ruff")
    # Python files only: ruff would also format the code blocks of Markdown files, which are
    # prose examples, not modules.
    paths = [
        str(p.relative_to(ROOT))
        for base in ("plugins-sdk", "tests/sdk", "examples")
        for p in sorted((ROOT / base).rglob("*.py"))
        if "target" not in p.parts
    ] + ["setup.py", "plugsafe/_scaffold.py"]
    for cmd in (["check"], ["format", "--check"]):
        res = run([sys.executable, "-m", "ruff", *cmd, *paths], cwd=ROOT)
        assert res.returncode == 0, res.stdout + res.stderr
