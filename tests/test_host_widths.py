"""Issue 13 §2: a host function's int/float binds to the width each plugin imports, range-checked
both ways; Annotated[int, plugsafe.I32] (and I64, F32, F64) pins one."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated

import pytest

import plugsafe
from plugsafe import Policy

import toolchains
from wat import abi_module


def counter(t: str) -> str:
    """A C-like guest importing ``<t> count(<t>)`` and exporting ``run(<t>) -> <t>``."""
    return f"""(module (import "plugsafe" "count" (func $count (param {t}) (result {t})))
      (func (export "run") (param {t}) (result {t}) (call $count (local.get 0))))"""


def test_int_binds_to_i32_or_i64_per_plugin(host: plugsafe.Host) -> None:
    @host.function
    def count(x: int) -> int:
        return x * 2

    allow = Policy(allow={"count"})
    p32 = host.load(counter("i32").encode(), policy=allow, name="c32")
    p64 = host.load(counter("i64").encode(), policy=allow, name="c64")
    assert p32.invoke("run", -21) == -42
    assert p64.invoke("run", 2**40) == 2**41
    # The same value does not fit the i32 plugin's result: a HostFunctionError saying so, and
    # the i64 plugin, bound separately, is not affected.
    with pytest.raises(plugsafe.HostFunctionError) as info:
        p32.invoke("run", 2**30)
    assert isinstance(info.value.__cause__, OverflowError)
    assert "does not fit in i32" in str(info.value.__cause__)
    assert p64.invoke("run", 2**30) == 2**31
    assert p32.invoke("run", 2**30 - 1) == 2**31 - 2  # the largest that fits


def test_float_binds_to_f32_or_f64_and_f32_results_are_range_checked(
    host: plugsafe.Host,
) -> None:
    @host.function
    def count(x: float) -> float:
        return x * 1e30

    allow = Policy(allow={"count"})
    p32 = host.load(counter("f32").encode(), policy=allow, name="f32")
    p64 = host.load(counter("f64").encode(), policy=allow, name="f64")
    assert p32.invoke("run", 2.0) == pytest.approx(2e30, rel=1e-6)
    assert p64.invoke("run", 1e10) == 1e40
    with pytest.raises(plugsafe.HostFunctionError) as info:
        p32.invoke("run", 1e10)  # 1e40 is past f32's 3.4e38
    assert "does not fit in f32" in str(info.value.__cause__)


def test_a_value_out_of_range_never_reaches_the_guest_on_the_marshalled_path(
    host: plugsafe.Host,
) -> None:
    @host.function
    def size(key: str) -> int:
        return len(key) * 2**31

    wat = abi_module(
        """
  (func (export "run") (param $p i32) (param $n i32) (result i64)
    (drop (call $size (local.get $p) (local.get $n)))
    (call $ok (i32.const 0) (i32.const 0)))
""",
        imports='(import "plugsafe" "size" (func $size (param i32 i32) (result i32)))',
    )
    p = host.load(wat.encode(), policy=Policy(allow={"size"}))
    assert p.call("run", "") == b""  # 0 fits
    with pytest.raises(plugsafe.HostFunctionError, match="OverflowError"):
        p.call("run", "a")  # 2**31 is one past i32's largest


def test_annotated_pins_a_width(host: plugsafe.Host) -> None:
    @host.function
    def count(x: Annotated[int, plugsafe.I32]) -> Annotated[int, plugsafe.I32]:
        return x + 1

    allow = Policy(allow={"count"})
    assert host.load(counter("i32").encode(), policy=allow).invoke("run", 1) == 2
    with pytest.raises(plugsafe.ImportNotAllowedError) as info:
        host.load(counter("i64").encode(), policy=allow)
    (problem,) = info.value.problems
    assert problem.reason == "wrong type"
    assert "(i32) -> (i32)" in problem.detail and "(i64) -> (i64)" in problem.detail


def test_plain_int_import_problem_names_both_widths(host: plugsafe.Host) -> None:
    @host.function
    def count(x: int) -> int:
        return x

    with pytest.raises(plugsafe.ImportNotAllowedError) as info:
        host.load(counter("f64").encode(), policy=Policy(allow={"count"}))
    assert "(i32|i64) -> (i32|i64)" in info.value.problems[0].detail


@pytest.mark.parametrize(
    "annotation",
    [
        'Annotated[int, "i32"]',
        "Annotated[float, plugsafe.I32]",
        "Annotated[int, plugsafe.F64]",
        "Annotated[int, plugsafe.I32, plugsafe.I64]",
        "Annotated[bool, plugsafe.I32]",
        "Annotated[str, 'utf-8']",
    ],
)
def test_other_annotated_metadata_is_refused_not_ignored(
    host: plugsafe.Host, annotation: str
) -> None:
    ns: dict[str, object] = {"Annotated": Annotated, "plugsafe": plugsafe}
    exec(f"def f(x: {annotation}) -> None: pass", ns)
    with pytest.raises(TypeError, match="only Annotated forms"):
        host.function(ns["f"])  # type: ignore[arg-type]
    exec(f"def g() -> {annotation}: pass", ns)
    with pytest.raises(TypeError, match="only Annotated forms"):
        host.function(ns["g"])  # type: ignore[arg-type]


def test_width_markers_read_well() -> None:
    assert repr(plugsafe.I32) == "plugsafe.I32"
    assert [w.python for w in (plugsafe.I32, plugsafe.I64, plugsafe.F32, plugsafe.F64)] == [
        int,
        int,
        float,
        float,
    ]
    import pickle

    assert pickle.loads(pickle.dumps(plugsafe.F32)) is plugsafe.F32


C_COUNTER = """
typedef __INT32_TYPE__ int32_t;
__attribute__((import_module("plugsafe"), import_name("count"))) int32_t count(int32_t n);
__attribute__((import_module("plugsafe"), import_name("scale"))) float scale(float x);
__attribute__((export_name("run"))) int32_t run(int32_t n) { return count(n) + 1; }
__attribute__((export_name("half"))) float half(float x) { return scale(x) / 2; }
"""


def test_a_c_plugin_binds_int32_and_float_to_plain_python_annotations(
    host: plugsafe.Host, tmp_path: Path
) -> None:
    clang = toolchains.which("CC", "clang")
    if clang is None:
        toolchains.missing("clang is not installed")
    source = tmp_path / "counter.c"
    source.write_text(C_COUNTER)
    out = tmp_path / "counter.wasm"
    build = subprocess.run(
        [clang, "--target=wasm32", "-O2", "-nostdlib", "-ffreestanding", "-Wl,--no-entry",
         "-o", str(out), str(source)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if build.returncode != 0:
        toolchains.missing(f"clang cannot build for wasm32: {build.stderr.strip()[:200]}")

    @host.function
    def count(n: int) -> int:
        return n * 10

    @host.function
    def scale(x: float) -> float:
        return x * 3

    p = host.load(out, policy=Policy(allow={"count", "scale"}), name="counter")
    assert {(i.name, i.params, i.results) for i in p.imports} == {
        ("count", ("i32",), ("i32",)),
        ("scale", ("f32",), ("f32",)),
    }
    assert p.invoke("run", 4) == 41
    assert p.invoke("half", 1.5) == 2.25
    with pytest.raises(plugsafe.HostFunctionError, match="count"):
        p.invoke("run", 2**30)  # 10 * 2**30 does not fit in int32_t


def test_each_parameter_and_the_result_bind_on_their_own(host: plugsafe.Host) -> None:
    @host.function
    def mix(a: int, b: float) -> int:
        return a + int(b)

    wat = """(module (import "plugsafe" "mix" (func $m (param i32 f32) (result i64)))
      (func (export "run") (param i32 f32) (result i64) (call $m (local.get 0) (local.get 1))))"""
    p = host.load(wat.encode(), policy=Policy(allow={"mix"}))
    assert p.invoke("run", -(2**31), 2.5) == -(2**31) + 2
