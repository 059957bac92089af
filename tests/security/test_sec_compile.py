"""Compile-time denial of service: modules built to be slow or huge to compile.

wasmtime's threat model excludes compilation (a 4 MB module of a million empty functions took
92 s and 4.8 GiB here). plugsafe refuses such modules by their shape before compiling
(``max_functions``, ``max_imports``, ``max_exports``, ``max_function_size``, ``max_nesting``) and
can compile in a child process with ``compile_timeout`` / ``compile_memory``. The bombs are
generated in binary form (``bombs.py``); tests use small caps so they stay fast.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import wasmtime

import plugsafe
from plugsafe import Policy
from plugsafe._wasmbin import nesting_depths

from bombs import deep_nesting, many_functions, module
from sec import assert_healthy
from wat import ECHO

HERE = Path(__file__).parent


def test_a_million_empty_functions_is_refused_without_compiling(host: plugsafe.Host) -> None:
    """Attack: the 4 MB module of 10^6 empty functions (92 s, 4.8 GiB to compile)."""
    bomb = many_functions(1_000_000)
    start = time.monotonic()
    with pytest.raises(plugsafe.InvalidModuleError, match="max_functions") as info:
        host.load(bomb)  # the default policy
    assert time.monotonic() - start < 1.0
    assert "1000000 functions" in str(info.value)
    assert_healthy(host)


def test_a_module_claiming_four_billion_functions(host: plugsafe.Host) -> None:
    """Attack: a tiny module whose function section *claims* 2^32 - 1 entries."""
    bomb = module([]).replace(b"\x03\x01\x00", b"\x03\x05\xff\xff\xff\xff\x0f")
    with pytest.raises(plugsafe.InvalidModuleError, match="max_functions"):
        host.load(bomb)
    assert_healthy(host)


@pytest.mark.parametrize(
    ("opener", "label"),
    [(b"\x02\x40", "block"), (b"\x03\x40", "loop"), (b"\x41\x00\x04\x40", "if")],
)
def test_deeply_nested_blocks(host: plugsafe.Host, opener: bytes, label: str) -> None:
    """Attack: blocks nested thousands deep (10^6 took 4 s and 760 MiB to compile)."""
    with pytest.raises(plugsafe.InvalidModuleError, match="max_nesting") as info:
        host.load(deep_nesting(150, opener), policy=Policy(max_nesting=100))
    assert "function 0" in str(info.value)
    # At the cap exactly it loads: the body is level 1, 99 blocks make 100.
    host.load(deep_nesting(99, opener), policy=Policy(max_nesting=100))
    assert_healthy(host)


def test_nesting_is_counted_by_instructions_not_bytes(host: plugsafe.Host) -> None:
    """Control: immediates that contain the bytes of block/loop/if do not count as nesting."""
    body = b"\x41\x02\x1a\x41\x03\x1a\x41\x04\x1a" * 200  # i32.const 2/3/4; drop
    host.load(module([body]), policy=Policy(max_nesting=10))


def test_one_huge_function(host: plugsafe.Host) -> None:
    """Attack: one giant function body (a 2 MiB one took 5 s to compile; split up, 1.4 s)."""
    loops = b"\x03\x40\x41\x00\x0d\x00\x0b" * 2000  # 14 kB of loop/br_if
    with pytest.raises(plugsafe.InvalidModuleError, match="max_function_size"):
        host.load(module([loops]), policy=Policy(max_function_size=10_000))
    host.load(module([loops[:7000]] * 2), policy=Policy(max_function_size=10_000))
    assert_healthy(host)


def test_too_many_imports_and_exports(host: plugsafe.Host) -> None:
    """Attack: tens of thousands of imports or exports (each costs work at load)."""
    imports = [("plugsafe", f"f{i}") for i in range(50)]
    with pytest.raises(plugsafe.InvalidModuleError, match="max_imports"):
        host.load(module([b""], imports=imports), policy=Policy(max_imports=10))
    exports = [f"e{i}" for i in range(50)]
    with pytest.raises(plugsafe.InvalidModuleError, match="max_exports"):
        host.load(module([b""] * 50, exports=exports), policy=Policy(max_exports=10))
    host.load(module([b""] * 50, exports=exports), policy=Policy(max_exports=50))
    assert_healthy(host)


def test_caps_apply_to_cached_modules_too(host: plugsafe.Host) -> None:
    """Attack: get a module compiled under a loose policy, then load it under a strict one."""
    bomb = many_functions(500)
    host.load(bomb, policy=Policy(max_functions=1000))
    with pytest.raises(plugsafe.InvalidModuleError, match="max_functions"):
        host.load(bomb, policy=Policy(max_functions=100))


def test_truncated_sections_are_invalid_not_trusted(host: plugsafe.Host) -> None:
    """Attack: section and body lengths that point past the end of the module."""
    good = module([b"\x02\x40\x0b"])
    boundaries = set()
    pos = 8
    while pos < len(good):  # every section here is shorter than 128 bytes: 1-byte sizes
        pos += 2 + good[pos + 1]
        boundaries.add(pos)
    for cut in range(9, len(good)):
        if cut in boundaries:  # whole sections: valid or not, but never a crash
            with contextlib.suppress(plugsafe.InvalidModuleError):
                host.load(good[:cut])
            continue
        with pytest.raises(plugsafe.InvalidModuleError):
            host.load(good[:cut])
    assert_healthy(host)


def test_defaults_pass_every_feature_wasmtime_accepts() -> None:
    """The decoder keeps in step with SIMD, relaxed SIMD, bulk memory, tables, multi-memory,
    tail calls and exceptions: a feature-rich module decodes to the right depths and loads."""
    wasm = bytes(wasmtime.wat2wasm((HERE / "features.wat").read_text()))
    assert nesting_depths(wasm) == [1, 4, 4]
    with plugsafe.Host() as host:
        host.load(wasm)


C_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static int classify(int c) {
  switch (c) {
%s
    default: return -1;
  }
}
int main(int argc, char **argv) {
  char buf[256];
  long total = 0;
  for (int i = 0; i < argc; i++) {
    snprintf(buf, sizeof buf, "%%s-%%d-%%f", argv[i], i, i * 1.5);
    total += classify(buf[0]) + (long)strtod(buf, NULL) + (long)strlen(buf);
  }
  char *p = malloc(1024); memset(p, (int)total, 1024); printf("%%ld %%d\n", total, p[7]);
  return 0;
}
"""


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang is not installed")
def test_real_toolchain_output_passes_the_default_caps(tmp_path: Path) -> None:
    """A clang + wasi-libc program (printf, malloc, a 300-case switch) passes every default cap,
    and the decoder reads every one of its bodies to the end."""
    cases = "\n".join(f"    case {i}: return {i * 7 % 13};" for i in range(300))
    src = tmp_path / "prog.c"
    src.write_text(C_PROGRAM % cases)
    out = tmp_path / "prog.wasm"
    result = subprocess.run(
        ["clang", "--target=wasm32-wasi", "-O2", "-msimd128", "-o", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        pytest.skip(f"no wasm32-wasi toolchain: {result.stderr[-300:]}")
    wasm = out.read_bytes()
    depths = nesting_depths(wasm)
    assert len(depths) > 20 and max(depths) < Policy().max_nesting
    # Its WASI imports are refused (no WASI capability) only after the precheck passed.
    with plugsafe.Host() as host, pytest.raises(plugsafe.ImportNotAllowedError, match="WASI"):
        host.load(wasm)


# -- compiling in a child process ------------------------------------------------------------


def test_compile_in_a_child_process_gives_a_working_plugin(host: plugsafe.Host) -> None:
    """Control: the child compiles with the same engine configuration (fuel metering too)."""
    p = host.load(ECHO.encode(), policy=Policy(compile_timeout=30, fuel=100_000))
    assert p.call("echo", b"from the child") == b"from the child"
    with pytest.raises(plugsafe.FuelExhausted):
        p.invoke("spin")
    q = host.load(ECHO.replace("spin", "spin2").encode(), policy=Policy(compile_memory=2**30))
    assert q.call("echo", b"x") == b"x"


def test_compile_timeout_kills_a_slow_compile(host: plugsafe.Host) -> None:
    """Attack: a module within every cap that still takes long to compile."""
    bomb = many_functions(150_000)  # about 3 s to compile here
    start = time.monotonic()
    with pytest.raises(plugsafe.DeadlineExceeded) as info:
        host.load(bomb, policy=Policy(max_functions=200_000, compile_timeout=0.3))
    # DeadlineExceeded with this limit already proves the compile was stopped (left alone it
    # succeeds); the bound only catches a load that waited for the compile anyway. Generous: on a
    # shared 2-core machine at load 8 the child's start-up alone took over 2 s.
    assert time.monotonic() - start < 6.0
    assert info.value.limit == "compile_timeout" and info.value.phase == "load"
    assert_healthy(host)


def test_compile_memory_kills_a_hungry_compile(host: plugsafe.Host) -> None:
    """Attack: a module that needs hundreds of MiB to compile, against a 32 MiB allowance."""
    bomb = many_functions(60_000)
    with pytest.raises(plugsafe.MemoryLimitExceeded) as info:
        host.load(bomb, policy=Policy(compile_memory=32 * 2**20, compile_timeout=30))
    assert info.value.limit == "compile_memory" and info.value.phase == "load"
    assert_healthy(host)


def test_invalid_module_in_the_child_is_invalid_module_error(host: plugsafe.Host) -> None:
    """Attack: a module that fails validation, compiled in the child."""
    bad = module([b"\x6a"])  # i32.add with nothing on the stack
    with pytest.raises(plugsafe.InvalidModuleError, match="type mismatch"):
        host.load(bad, policy=Policy(compile_timeout=30))
    assert_healthy(host)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_functions", -1),
        ("max_imports", 1.5),
        ("max_exports", None),
        ("max_function_size", 2**40),
        ("max_nesting", 0),
        ("compile_timeout", 0),
        ("compile_timeout", float("inf")),
        ("compile_memory", 1024),
        ("compile_memory", True),
    ],
)
def test_bad_compile_caps_are_policy_errors(field: str, value: object) -> None:
    with pytest.raises(plugsafe.PolicyError) as info:
        Policy(**{field: value})  # type: ignore[arg-type]
    assert info.value.field == field


# -- the command line refuses what Host.load refuses -----------------------------------------


def _cli(*args: str | Path) -> tuple[subprocess.CompletedProcess[bytes], float]:
    root = HERE.parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "plugsafe", *map(str, args)],
        capture_output=True,
        timeout=120,
        env=env,
    )
    return result, time.monotonic() - start


def test_the_command_line_refuses_a_compile_bomb_as_fast_as_the_host(tmp_path: Path) -> None:
    """Attack: one 2 MiB function of 300k small loops, handed to `plugsafe check`, `inspect` and
    `run` (all three once compiled it with no caps: minutes and over 1 GB)."""
    bomb = tmp_path / "bomb.wasm"
    bomb.write_bytes(module([b"\x03\x40\x41\x00\x0d\x00\x0b" * 300_000]))
    with plugsafe.Host() as host, pytest.raises(plugsafe.InvalidModuleError) as info:
        host.load(bomb)
    assert "max_function_size" in str(info.value)
    for args, code in (
        (("check", bomb), 1),  # EXIT_CHECK_FAILED
        (("inspect", bomb), 3),  # EXIT_LOAD
        (("run", bomb, "f"), 3),
    ):
        result, took = _cli(*args)
        output = (result.stdout + result.stderr).decode()
        assert result.returncode == code, output
        # A fresh interpreter's start-up and the refusal: about a second; the bomb compiled
        # took minutes. 15 s leaves room for a loaded machine (Python 3.13 starts slower).
        assert took < 15.0, (args, took)
        # The same refusal, word for word, as Host.load's.
        assert "InvalidModuleError" in output and str(info.value) in output, output
