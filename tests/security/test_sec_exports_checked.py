"""Issue 12, classes 1 and 7, beyond the spec tests: every way a module is described, every export
plugsafe calls, and the phase and instance after limits.

Anything that could abort the process runs in a child (``child.run_child``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import plugsafe
from plugsafe import _abi
from plugsafe._types import ExportInfo

from child import run_child
from wat import abi_module

# Every type plugsafe cannot call, in an export's and an import's signature, a global and a table.
EXOTIC = """(module
  (type $s (func))
  (import "env" "g" (global v128))
  (tag $e (param i32))
  (func (export "simd") (param v128) (result v128) local.get 0)
  (func (export "exn") (param exnref))
  (func (export "typed") (param (ref null $s)) (result (ref null func)) ref.null func)
  (func (export "ext") (result externref) ref.null extern)
  (global (export "gv") v128 (v128.const i64x2 0 0))
  (table (export "t") 1 (ref null $s))
  (export "tag" (tag $e))
  (func (export "ok") (result i32) i32.const 7))"""


@pytest.mark.parametrize("how", ["compile", "isolated", "disk_cache_cold", "disk_cache_warm"])
def test_exotic_types_are_described_on_every_load_path(how: str, tmp_path: Path) -> None:
    # The description comes from the binary whether the module was compiled here, in a child
    # process, or read back from the on-disk cache: never a wasmtime type object.
    cache = repr(str(tmp_path)) if how.startswith("disk") else None
    policy = "plugsafe.Policy(compile_timeout=60)" if how == "isolated" else "plugsafe.Policy()"
    warm = (
        f"h0 = plugsafe.Host(cache_dir={cache})\noutcome(h0.load, wat.encode(), policy={policy})\n"
        if how == "disk_cache_warm"
        else ""
    )
    child = run_child(
        f"""
wat = {EXOTIC!r}.replace('(import "env" "g" (global v128))', '')
{warm}h = plugsafe.Host(cache_dir={cache})
p = outcome(h.load, wat.encode(), policy={policy})
print("EXPORTS", sorted(str(e) for e in p.exports.values()), flush=True)
for name in ("simd", "exn", "typed", "ext", "gv", "t", "tag", "ok"):
    outcome(p.invoke, name)
"""
    )
    child.assert_clean()
    outs = child.outcomes()
    if how == "disk_cache_warm":
        assert outs.pop(0).startswith("OK <plugsafe.Plugin"), child.describe()
    assert outs[0].startswith("OK <plugsafe.Plugin"), child.describe()
    assert outs[-1] == "OK 7", child.describe()
    for line in outs[1:-1]:
        assert line.startswith(("TYPED SignatureError", "TYPED ExportNotFoundError")), (
            child.describe()
        )
    exports = next(ln for ln in child.lines if ln.startswith("EXPORTS"))
    for text in (
        "func simd(v128) -> v128",
        "func exn(exnref) -> ()",
        "func typed((ref null 0)) -> funcref",
        "global gv v128",
        "table t (ref null 0) min 1",
        "tag tag",
    ):
        assert text in exports, exports


def test_exotic_import_is_refused_by_name_and_type() -> None:
    child = run_child(
        """
        h = plugsafe.Host()
        @h.function
        def f(x: int) -> int:
            return x
        wat = '(module (import "plugsafe" "f" (func (param v128) (result i64))))'
        e = outcome(h.load, wat.encode(), policy=plugsafe.Policy(allow={"f"}))
        print("MESSAGE", str(e).replace("\\n", " "), flush=True)
        """
    )
    child.assert_clean()
    assert child.outcomes()[0].startswith("TYPED ImportNotAllowedError"), child.describe()
    message = next(ln for ln in child.lines if ln.startswith("MESSAGE"))
    assert "wrong type" in message and "(v128) -> (i64)" in message, message


def test_export_problem_is_the_one_check() -> None:
    exports = {
        "a": ExportInfo("a", "func", ("i32",), ("i32",)),
        "m": ExportInfo("m", "memory", detail="min 1 pages"),
        "v": ExportInfo("v", "func", ("v128",), ("i32",)),
    }
    assert _abi.export_problem(exports, "a", _abi.ALLOC_TYPE) is None
    assert _abi.export_problem(exports, "x", _abi.ALLOC_TYPE) == "it exports no 'x'"
    assert _abi.export_problem(exports, "m", _abi.ALLOC_TYPE) == (
        "its export 'm' is a memory, not a function (i32) -> i32"
    )
    assert _abi.export_problem(exports, "v", _abi.ALLOC_TYPE) == (
        "its export 'v' has type (v128) -> i32, not (i32) -> i32"
    )
    assert _abi.fmt_signature(((), ())) == "() -> ()"
    assert _abi.fmt_signature((("i32", "i32"), ("i64",))) == "(i32, i32) -> i64"


def test_a_well_typed_allocator_without_abi_version_receives_host_bytes(
    host: plugsafe.Host,
) -> None:
    # The allocator's type is what matters before calling it, not the ABI version export.
    @host.function
    def get() -> bytes:
        return b"0123456789abcdef"

    wat = """(module (import "plugsafe" "get" (func $get (result i64)))
      (memory (export "memory") 1)
      (func (export "plugsafe_alloc") (param i32) (result i32) i32.const 1024)
      (func (export "go") (result i64) call $get))"""
    plugin = host.load(wat.encode(), policy=plugsafe.Policy(allow={"get"}))
    word = plugin.invoke("go")
    assert _abi.decode_result(word) == (1024, 16, False)
    assert plugin.memory.read(1024, 16) == b"0123456789abcdef"


@pytest.mark.parametrize("init", ["(param i32)", "(result i32) i32.const 0"])
def test_a_mistyped_initialize_is_a_load_error_naming_its_type(
    host: plugsafe.Host, init: str
) -> None:
    wat = f'(module (func (export "_initialize") {init}))'
    with pytest.raises(
        plugsafe.PluginLoadError, match=r"'_initialize' has type .* not \(\) -> \(\)"
    ):
        host.load(wat.encode())


def test_limits_in_a_call_still_say_phase_call(host: plugsafe.Host) -> None:
    # The phase is the call state's: "load" only while loading, "call" for every call after.
    @host.function
    def tick() -> None:
        pass

    wat = abi_module(
        """
  (func (export "go") (param i32 i32) (result i64)
    call $tick call $tick call $tick
    (call $ok (i32.const 0) (i32.const 0)))""",
        imports='(import "plugsafe" "tick" (func $tick))',
    )
    plugin = host.load(wat.encode(), policy=plugsafe.Policy(allow={"tick"}, max_host_calls=2))
    for _ in range(2):
        with pytest.raises(plugsafe.HostCallLimitExceeded) as info:
            plugin.call("go")
        assert info.value.phase == "call"


def test_the_phase_is_back_to_call_once_loaded(host: plugsafe.Host) -> None:
    # Loading (instantiation, _initialize, the ABI check) runs in phase "load"; the state the
    # calls start from says "call" again, whatever the load did.
    @host.function
    def tick() -> None:
        pass

    wat = abi_module(
        """
  (func $s call $tick) (start $s)
  (func (export "go") (param i32 i32) (result i64) (call $ok (i32.const 0) (i32.const 0)))""",
        imports='(import "plugsafe" "tick" (func $tick))',
    )
    plugin = host.load(wat.encode(), policy=plugsafe.Policy(allow={"tick"}))
    assert plugin._calls.state.phase == "call"
    assert plugin.call("go") == b""


@pytest.mark.parametrize(
    ("imp", "expected"),
    [
        ("(func (param v128) (result i32))", "wrong type"),
        ("(func (param exnref))", "wrong type"),
        ("(global v128)", "WASI preview 1 has no global imports"),
    ],
)
def test_exotic_wasi_imports_are_refused_by_the_import_check(imp: str, expected: str) -> None:
    child = run_child(
        f"""
        h = plugsafe.Host()
        wat = '(module (import "wasi_snapshot_preview1" "fd_write" {imp}) (memory 1))'
        e = outcome(h.load, wat.encode(), policy=plugsafe.Policy(wasi=plugsafe.Wasi()))
        print("MESSAGE", str(e).replace("\\n", " "), flush=True)
        """
    )
    child.assert_clean()
    assert child.outcomes()[0].startswith("TYPED ImportNotAllowedError"), child.describe()
    assert expected in next(ln for ln in child.lines if ln.startswith("MESSAGE"))
