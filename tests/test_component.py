"""WebAssembly components: loading, names, values both ways, limits, imports, caches.

The fixtures are component text (tests/component_wat.py), compiled by wasmtime's own parser, so
these run wherever plugsafe does: no guest toolchain needed.
"""

from __future__ import annotations

import io
import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest
from component_wat import HOST_CALLS, IMPORTS, RESOURCE, SOCKETS, WASI_ARGS, WASI_ONLY, WORLD

import plugsafe
from plugsafe import (
    ComponentPlugin,
    ExportNotFoundError,
    GuestError,
    Host,
    Policy,
    Record,
    SignatureError,
    Variant,
)
from plugsafe import _cli as cli


@pytest.fixture(scope="module")
def chost() -> Any:
    with Host() as h:
        yield h


@pytest.fixture(scope="module")
def world(chost: Host) -> Any:
    with chost.load(WORLD.encode(), policy=Policy(fuel=1_000_000), name="world") as p:
        yield p


def test_load_recognises_a_component_by_its_header(chost: Host, tmp_path: Path) -> None:
    binary = plugsafe._runtime.wat_to_wasm(WORLD)
    assert binary[:8] == b"\0asm\x0d\x00\x01\x00"
    for source in (binary, WORLD.encode()):
        with chost.load(source) as plugin:
            assert isinstance(plugin, ComponentPlugin)
            assert plugin.invoke("add", 2, 3) == 5
    path = tmp_path / "world.wasm"
    path.write_bytes(binary)
    with chost.load(path) as plugin:
        assert plugin.name == "world"
        assert plugin.invoke("add", 40, 2) == 42


def test_exports_list_short_names_with_wit_signatures(world: ComponentPlugin) -> None:
    exports = world.exports
    assert exports["add"] == "func(a: u32, b: u32) -> u32"
    assert exports["swap"] == (
        "func(img: record { width: u32, height: u32, data: list<u8> }) -> "
        "record { width: u32, height: u32, data: list<u8> }"
    )
    assert exports["res"] == "func(x: s32) -> result<s32, string>"
    assert exports["math/triple"] == "func(x: u32) -> u32"
    assert exports["util/triple"] == "func(x: u32) -> u32"
    # Two interfaces named "math" both export "double": listed by their full names.
    assert "math/double" not in exports
    assert "test:demo/math@1.0.0#double" in exports
    assert "test:other/math#double" in exports


def test_interface_functions_by_short_and_qualified_names(world: ComponentPlugin) -> None:
    assert world.invoke("math/triple", 3) == 9
    assert world.invoke("test:demo/math@1.0.0#triple", 3) == 9
    assert world.invoke("test:demo/math@1.0.0#double", 4) == 8
    assert world.invoke("test:other/math#double", 5) == 10
    assert world.invoke("util/triple", 5) == 15


def test_an_ambiguous_short_name_is_refused_naming_both(world: ComponentPlugin) -> None:
    with pytest.raises(ExportNotFoundError) as info:
        world.invoke("math/double", 1)
    assert "test:demo/math@1.0.0#double" in str(info.value)
    assert "test:other/math#double" in str(info.value)


def test_an_unknown_name_lists_the_exports(world: ComponentPlugin) -> None:
    with pytest.raises(ExportNotFoundError, match="add"):
        world.invoke("nope")


def test_scalars_both_ways(world: ComponentPlugin) -> None:
    assert world.invoke("not", False) is True
    assert world.invoke("neg", 5) == -5
    assert world.invoke("big", 2**64 - 2) == 2**64 - 1
    assert world.invoke("mix", 1.5, 2) == 3.5
    assert world.invoke("next-char", "a") == "b"
    assert world.invoke("next-char", "\U0001f600") == "\U0001f601"
    assert world.invoke("echo", "héllo wörld") == "héllo wörld"
    assert world.invoke("echo", "") == ""


def test_bytes_and_lists(world: ComponentPlugin) -> None:
    assert world.invoke("echo-bytes", b"\x00\x01\xff") == b"\x00\x01\xff"
    assert world.invoke("echo-bytes", bytearray(b"ab")) == b"ab"
    assert world.invoke("echo-bytes", memoryview(b"cd")) == b"cd"
    assert world.invoke("echo-bytes", b"") == b""
    assert world.invoke("size", bytes(1000)) == 1000
    assert world.invoke("sum", [1, 2, 2**32 - 1]) == 2**32 + 2
    assert world.invoke("sum", []) == 0
    assert world.invoke("sum", (5, 6)) == 11


def test_records_from_dicts_or_objects_come_back_with_attributes(world: ComponentPlugin) -> None:
    out = world.invoke("swap", {"width": 2, "height": 3, "data": b"abc"})
    assert isinstance(out, Record)
    assert (out.width, out.height, out.data) == (3, 2, b"abc")
    assert out == Record(width=3, height=2, data=b"abc")
    # Any object with the attributes works, the Record that came back included.
    assert world.invoke("swap", out) == Record(width=2, height=3, data=b"abc")


def test_tuples_options_enums_flags_variants(world: ComponentPlugin) -> None:
    assert world.invoke("pair", (255, -(2**63))) == (-(2**63), 255)
    assert world.invoke("opt", None) is None
    assert world.invoke("opt", 4) == 5
    assert world.invoke("next-color", "blue") == "red"
    assert world.invoke("flip", {"read"}) == {"write", "exec"}
    assert world.invoke("flip", set()) == {"read", "write", "exec"}
    assert world.invoke("same-shape", Variant("txt", "hi")) == Variant("txt", "hi")
    assert world.invoke("same-shape", {"tag": "num", "value": 7}) == Variant("num", 7)
    assert world.invoke("same-shape", Variant("nothing")) == Variant("nothing", None)


def test_result_is_the_value_or_a_guest_error_carrying_e(world: ComponentPlugin) -> None:
    assert world.invoke("res", 21) == 42
    with pytest.raises(GuestError) as info:
        world.invoke("res", -1)
    assert info.value.value == "negative"  # type: ignore[attr-defined]
    assert "negative" in str(info.value)


@pytest.mark.parametrize(
    ("function", "args", "match"),
    [
        ("add", (2**32, 1), "out of range for u32"),
        ("add", (-1, 1), "out of range for u32"),
        ("add", (True, 1), "expected an int"),
        ("add", (1.0, 1), "expected an int"),
        ("neg", (128,), "out of range for s8"),
        ("big", (2**64,), "out of range for u64"),
        ("not", (1,), "expected a bool"),
        ("next-char", ("ab",), "one character"),
        ("next-char", ("\ud800",), "surrogate"),
        ("echo", ("\udc00",), "surrogates"),
        ("echo", (b"x",), "expected a str"),
        ("echo-bytes", ("x",), "expected bytes"),
        ("sum", ([1, -1],), r"xs\[1\]"),
        ("swap", ({"width": 1, "height": 2},), "needs a field 'data'"),
        ("swap", ({"width": 1, "height": 2**40, "data": b""},), "img.height"),
        ("pair", ((1,),), "tuple of 2"),
        ("next-color", ("purple",), "one of"),
        ("flip", ({"read", "fly"},), "unknown flags"),
        ("same-shape", (Variant("circle", 1),), "tag"),
        ("same-shape", (Variant("nothing", 3),), "no payload"),
        ("add", (1,), "takes 2 argument"),
    ],
)
def test_values_that_do_not_fit_are_signature_errors_before_running(
    world: ComponentPlugin, function: str, args: tuple[Any, ...], match: str
) -> None:
    with pytest.raises(SignatureError, match=match):
        world.invoke(function, *args)


def test_fuel_is_per_call_and_a_trap_does_not_poison_the_next_call(world: ComponentPlugin) -> None:
    for _ in range(2):
        with pytest.raises(plugsafe.FuelExhausted) as info:
            world.invoke("spin")
        assert info.value.phase == "call"
        assert world.invoke("add", 1, 1) == 2
    with pytest.raises(plugsafe.PluginTrap) as trap:
        world.invoke("boom")
    assert "unreachable" in str(trap.value)
    assert world.invoke("add", 2, 2) == 4


def test_timeout_is_a_deadline_exceeded(chost: Host) -> None:
    with chost.load(WORLD.encode(), policy=Policy(timeout=0.05)) as plugin:
        with pytest.raises(plugsafe.DeadlineExceeded):
            plugin.invoke("spin")
        assert plugin.invoke("add", 3, 4) == 7


def test_the_memory_cap_applies_to_a_components_memory(chost: Host) -> None:
    with chost.load(WORLD.encode(), policy=Policy(memory=1 << 20)) as plugin:
        assert plugin.invoke("grow", 8) == 1  # 1 page -> 9 pages: under 16
        assert plugin.invoke("grow", 8) == -1  # 17 pages: over 1 MiB, refused
        assert plugin.invoke("grow", 6) == 9  # up to the cap exactly


def test_imports_are_denied_by_default_every_offender_listed(chost: Host) -> None:
    with pytest.raises(plugsafe.ImportNotAllowedError) as info:
        chost.load(IMPORTS.encode())
    listed = str(info.value)
    assert "test:host/logging" in listed and "host-log" in listed
    assert "test:host/clock" in listed and "now" in listed
    assert "wasi:cli/environment@0.2.0" in listed
    assert len(info.value.problems) == 3


def test_wasi_imports_need_the_policy_to_grant_wasi(chost: Host) -> None:
    with pytest.raises(plugsafe.ImportNotAllowedError, match="Wasi"):
        chost.load(WASI_ONLY.encode())
    with chost.load(WASI_ONLY.encode(), policy=Policy(wasi=plugsafe.Wasi())) as plugin:
        assert plugin.invoke("seven") == 7


def test_allow_accepts_wit_interface_and_function_names() -> None:
    policy = Policy(allow={"test:host/logging", "test:host/clock@1.0.0#now", "log"})
    assert "test:host/logging" in policy.allow
    with pytest.raises(plugsafe.PolicyError):
        Policy(allow={"test:host/logging#Bad Name"})


def test_resources_are_refused_at_load(chost: Host) -> None:
    with pytest.raises(plugsafe.PluginLoadError, match="resources are not supported"):
        chost.load(RESOURCE.encode())


def test_close_and_context_manager(chost: Host) -> None:
    plugin = chost.load(WORLD.encode())
    with plugin:
        assert not plugin.closed
    assert plugin.closed
    with pytest.raises(plugsafe.PluginClosedError):
        plugin.invoke("add", 1, 2)
    plugin.close()  # idempotent


def test_host_close_closes_components() -> None:
    with Host() as host:
        plugin = host.load(WORLD.encode())
    assert plugin.closed


def test_policies_differing_in_limits_share_one_compile(chost: Host) -> None:
    loader = chost._components
    before = len(loader._compiled)
    # Another component (one more data segment), so the count below is about this one alone.
    text = WORLD.replace("(global $bump", '(data (i32.const 300) "x")\n    (global $bump').encode()
    with chost.load(text, policy=Policy(memory=1 << 20, timeout=2.0)):
        pass
    with chost.load(text, policy=Policy(memory=1 << 21, timeout=None)) as plugin:
        assert plugin.invoke("add", 1, 2) == 3
    assert len(loader._compiled) == before + 1


def test_disk_cache_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Host(cache_dir=tmp_path) as host, host.load(WORLD.encode()) as plugin:
        assert plugin.invoke("add", 1, 2) == 3
    assert any(p.is_file() for p in tmp_path.rglob("*"))

    def no_compiling(*_args: object) -> None:
        raise AssertionError("compiled again: the disk cache was not used")

    monkeypatch.setattr(plugsafe._runtime._component, "compile_component", no_compiling)
    with Host(cache_dir=tmp_path) as host, host.load(WORLD.encode()) as plugin:
        assert plugin.invoke("math/triple", 2) == 6


def test_max_module_size_names_the_setting(chost: Host) -> None:
    binary = plugsafe._runtime.wat_to_wasm(WORLD)
    with pytest.raises(plugsafe.InvalidModuleError, match="max_module_size"):
        chost.load(binary, policy=Policy(max_module_size=1024))


def test_invalid_component_bytes_are_invalid_module_errors(chost: Host) -> None:
    binary = plugsafe._runtime.wat_to_wasm(WORLD)
    # (The 8-byte preamble alone is a valid, empty component.)
    for broken in (binary[:9], binary[:40], binary[: len(binary) // 2]):
        with pytest.raises(plugsafe.InvalidModuleError):
            chost.load(broken)


def test_float_edge_values(world: ComponentPlugin) -> None:
    assert world.invoke("mix", math.inf, 1.0) == math.inf
    assert math.isnan(world.invoke("mix", 0.0, math.nan))


def test_an_initial_memory_over_the_cap_is_a_memory_limit_at_load(chost: Host) -> None:
    big = WORLD.replace('(memory (export "memory") 1)', '(memory (export "memory") 20)')
    with pytest.raises(plugsafe.MemoryLimitExceeded) as info:
        chost.load(big.encode(), policy=Policy(memory=1 << 20))
    assert info.value.phase == "load"


def test_fuel_stops_a_start_function_that_loops_at_load(chost: Host) -> None:
    looping = WORLD.replace(
        '(func (export "boom") unreachable)',
        '(func (export "boom") unreachable)\n    (func $start (loop br 0)) (start $start)',
    )
    with pytest.raises(plugsafe.FuelExhausted) as info:
        chost.load(looping.encode(), policy=Policy(fuel=10_000))
    assert info.value.phase == "load"


def test_records_accept_snake_case_for_kebab_case_fields(chost: Host) -> None:
    # The image-service world's resize takes new-width/new-height; a record field named
    # "new-width" is given as new_width (or as the WIT name in a dict).
    assert plugsafe._runtime._component.snake("new-width") == "new_width"
    from plugsafe._runtime._component import VType, normalise

    ty = VType("record", (VType("u32"), VType("u32")), ("new-width", "new-height"))
    assert normalise({"new_width": 1, "new-height": 2}, ty, "r") == (1, 2)

    class Size:
        new_width = 3
        new_height = 4

    assert normalise(Size(), ty, "r") == (3, 4)


def test_wasi_grants_exactly_the_policys_arguments(chost: Host) -> None:
    wasi = plugsafe.Wasi(args=["prog", "--flag", "x"])
    with chost.load(WASI_ARGS.encode(), policy=Policy(wasi=wasi)) as plugin:
        assert plugin.invoke("count-args") == 3
    with chost.load(WASI_ARGS.encode(), policy=Policy(wasi=plugsafe.Wasi())) as plugin:
        assert plugin.invoke("count-args") == 0


def test_network_wasi_is_never_granted(chost: Host) -> None:
    with pytest.raises(plugsafe.ImportNotAllowedError) as info:
        chost.load(SOCKETS.encode(), policy=Policy(wasi=plugsafe.Wasi()))
    assert [p.module for p in info.value.problems] == ["wasi:sockets/instance-network@0.2.0"]
    assert "network" in str(info.value)


def test_a_thread_without_room_for_max_stack_is_refused(world: ComponentPlugin) -> None:
    caught: list[BaseException] = []

    def run() -> None:
        try:
            world.invoke("add", 1, 2)
        except BaseException as exc:
            caught.append(exc)

    old = threading.stack_size(256 * 1024)
    try:
        t = threading.Thread(target=run)
        t.start()
        t.join()
    finally:
        threading.stack_size(old)
    assert len(caught) == 1 and isinstance(caught[0], plugsafe.StackLimitExceeded)
    assert caught[0].limit == "max_stack"  # type: ignore[attr-defined]


def test_a_component_called_from_a_host_function_of_a_module() -> None:
    # A module's host function calls the component: the calls nest on one thread.
    results: list[int] = []
    with Host() as host:
        comp = host.load_component(WORLD.encode())

        @host.function
        def via_component(x: int) -> int:
            value = comp.invoke("add", x, 1)
            results.append(value)
            return int(value)

        guest = """
        (module
          (import "plugsafe" "via_component" (func $v (param i64) (result i64)))
          (func (export "run") (param i64) (result i64) (call $v (local.get 0))))
        """
        with host.load(guest.encode(), policy=Policy(allow={"via_component"})) as plugin:
            assert plugin.invoke("run", 41) == 42
    assert results == [42]


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_inspect_shows_the_world(tmp_path: Path) -> None:
    path = tmp_path / "world.wasm"
    path.write_bytes(plugsafe._runtime.wat_to_wasm(IMPORTS))
    code, out, _ = _cli("inspect", str(path))
    assert code == 0
    assert "format:      component" in out
    assert "test:host/logging (instance)" in out
    assert "host-log: func(msg: string)" in out
    assert "seven: func() -> u32" in out
    code, out, _ = _cli("inspect", "--json", str(path))
    report = json.loads(out)
    assert report["exports"] == {"seven": "func() -> u32"}


def test_cli_run_takes_json_arguments_and_prints_json(tmp_path: Path) -> None:
    path = tmp_path / "world.wasm"
    path.write_bytes(plugsafe._runtime.wat_to_wasm(WORLD))
    code, out, _ = _cli("run", str(path), "add", "--input", "[2, 3]")
    assert (code, json.loads(out)) == (0, 5)
    img = '{"width": 2, "height": 3, "data": {"base64": "AAE="}}'
    code, out, _ = _cli("run", str(path), "swap", "--input", img)
    assert json.loads(out) == {"width": 3, "height": 2, "data": {"base64": "AAE="}}
    code, out, _ = _cli("run", str(path), "add", "--json", "--input", "[4294967296, 1]")
    report = json.loads(out)
    assert code == 5 and report["error"]["type"] == "SignatureError"
    code, out, _ = _cli("run", str(path), "spin", "--fuel", "1000", "--json", "--input", "")
    assert code == 4 and json.loads(out)["error"]["type"] == "FuelExhausted"


def test_cli_check_lists_every_offender(tmp_path: Path) -> None:
    path = tmp_path / "imports.wasm"
    path.write_bytes(plugsafe._runtime.wat_to_wasm(IMPORTS))
    code, out, _ = _cli("check", str(path))
    assert code == 1
    assert "test:host/logging#host-log" in out and "test:host/clock#now" in out
    assert "would NOT load" in out
    path.write_bytes(plugsafe._runtime.wat_to_wasm(WORLD))
    code, out, _ = _cli("check", str(path))
    assert (code, out.strip()) == (0, "would load under this policy")


def test_component_imports_call_the_hosts_functions() -> None:
    logged: list[str] = []
    with Host() as host:

        @host.component_function("test:host/logging#host-log")
        def host_log(msg: str) -> None:
            logged.append(msg)

        @host.component_function("test:host/clock#now")
        def now() -> int:
            return 1234

        policy = Policy(allow={"test:host/logging", "test:host/clock#now"})
        with host.load(HOST_CALLS.encode(), policy=policy) as plugin:
            assert plugin.invoke("run", "héllo", 2) == 1234
    assert logged == ["héllo", "héllo"]


def test_component_imports_need_registration_and_allow() -> None:
    with Host() as host:

        @host.component_function("test:host/logging#host-log")
        def host_log(msg: str) -> None:
            pass

        # Registered but not allowed; not registered (clock): both listed.
        with pytest.raises(plugsafe.ImportNotAllowedError) as info:
            host.load(HOST_CALLS.encode(), policy=Policy(allow={"test:host/clock"}))
        reasons = {(p.module, p.reason) for p in info.value.problems}
        assert reasons == {("test:host/logging", "not allowed"), ("test:host/clock", "unknown")}
    with pytest.raises(ValueError, match="not valid"):
        Host().component_function("host-log")


def test_a_failing_host_function_is_a_host_function_error_and_the_next_call_works() -> None:
    calls = {"n": 0}
    with Host() as host:

        @host.component_function("test:host/logging#host-log")
        def host_log(msg: str) -> None:
            calls["n"] += 1
            if msg == "boom":
                raise RuntimeError("the app failed")

        @host.component_function("test:host/clock#now")
        def now() -> int:
            return -1  # not a u64: the app's bug, reported as a HostFunctionError

        policy = Policy(allow={"test:host/logging", "test:host/clock"}, max_host_calls=5)
        with host.load(HOST_CALLS.encode(), policy=policy) as plugin:
            with pytest.raises(plugsafe.HostFunctionError) as info:
                plugin.invoke("run", "boom", 1)
            assert isinstance(info.value.__cause__, RuntimeError)
            with pytest.raises(plugsafe.HostFunctionError, match="out of range for u64"):
                plugin.invoke("run", "fine", 1)
            with pytest.raises(plugsafe.HostCallLimitExceeded):
                plugin.invoke("run", "fine", 10)


def test_a_host_function_cannot_re_enter_its_component() -> None:
    with Host() as host:
        holder: list[ComponentPlugin] = []

        @host.component_function("test:host/logging#host-log")
        def host_log(msg: str) -> None:
            holder[0].invoke("run", "again", 0)

        @host.component_function("test:host/clock#now")
        def now() -> int:
            return 1

        policy = Policy(allow={"test:host/logging", "test:host/clock"})
        with host.load_component(HOST_CALLS.encode(), policy=policy) as plugin:
            holder.append(plugin)
            with pytest.raises(plugsafe.HostFunctionError) as info:
                plugin.invoke("run", "x", 1)
            assert "re-enter" in str(info.value.__cause__)
            assert plugin.invoke("run", "x", 0) == 1
