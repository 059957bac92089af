"""Functions a component's world imports itself (``import log: func(msg: string);``).

They are registered and allowed as ``"#log"``: the ``interface#function`` form with no
interface (a bare ``"log"`` stays refused at registration: it is far more often an interface
function written without its interface). Fixtures are component text (no toolchain).
"""

from __future__ import annotations

import pytest

import plugsafe
from plugsafe import Host, Policy

# The world imports "log" and "now" directly (no interface), and "run" calls both.
WORLD_IMPORTS = rb"""
(component
  (import "log" (func $log (param "msg" string)))
  (import "now" (func $now (result u64)))
  (core module $mem
    (memory (export "memory") 1)
    (global $b (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $b) (i32.sub (local.get 2) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get 2))))
      (global.set $b (i32.add (local.get $p) (local.get 3)))
      (local.get $p)))
  (core instance $mi (instantiate $mem))
  (core func $host-log (canon lower (func $log) (memory (core memory $mi "memory"))))
  (core func $now (canon lower (func $now)))
  (core module $m
    (import "host" "log" (func $log (param i32 i32)))
    (import "host" "now" (func $now (result i64)))
    (func (export "run") (param $p i32) (param $n i32) (result i64)
      (call $log (local.get $p) (local.get $n))
      (call $now)))
  (core instance $i (instantiate $m
    (with "host" (instance (export "log" (func $host-log)) (export "now" (func $now))))))
  (func (export "run") (param "msg" string) (result u64)
    (canon lift (core func $i "run") (memory (core memory $mi "memory"))
      (realloc (core func $mi "realloc"))))
)
"""


def test_world_function_imports_are_denied_by_default_every_offender_listed() -> None:
    with Host() as host, pytest.raises(plugsafe.ImportNotAllowedError) as info:
        host.load(WORLD_IMPORTS)
    problems = {(p.module, p.name, p.reason) for p in info.value.problems}
    assert problems == {("(world)", "log", "unknown"), ("(world)", "now", "unknown")}
    assert "func(msg: string)" in str(info.value)


def test_a_registered_world_function_needs_the_policy_to_allow_it() -> None:
    with Host() as host:

        @host.component_function("#log")
        def log(msg: str) -> None:
            pass

        @host.component_function("#now")
        def now() -> int:
            return 1

        with pytest.raises(plugsafe.ImportNotAllowedError) as info:
            host.load(WORLD_IMPORTS, policy=Policy(allow={"#log"}))
        problems = {(p.name, p.reason) for p in info.value.problems}
        assert problems == {("now", "not allowed")}
        assert "'#now'" in str(info.value)
        # The bare name allows a module's host function "now", not the component's import.
        with pytest.raises(plugsafe.ImportNotAllowedError):
            host.load(WORLD_IMPORTS, policy=Policy(allow={"#log", "now"}))


def test_allowed_world_functions_are_called_with_converted_values() -> None:
    got: list[str] = []
    with Host() as host:

        @host.component_function("#log")
        def log(msg: str) -> None:
            got.append(msg)

        @host.component_function("#now")
        def now() -> int:
            return 2**40 + 3

        policy = Policy(allow={"#log", "#now"}, max_host_calls=10)
        with host.load_component(WORLD_IMPORTS, policy=policy) as plugin:
            assert plugin.imports == ("log", "now")
            assert plugin.invoke("run", "héllo") == 2**40 + 3
            assert got == ["héllo"]
            stats = plugin.last_call
            assert stats is not None and stats.host_calls == 2


def test_a_failing_world_function_is_a_host_function_error_and_the_next_call_works() -> None:
    with Host() as host:
        state = {"fail": True}

        @host.component_function("#log")
        def log(msg: str) -> None:
            if state["fail"]:
                raise KeyError(msg)

        @host.component_function("#now")
        def now() -> int:
            return -1  # not a u64: the app's bug

        policy = Policy(allow={"#log", "#now"})
        with host.load_component(WORLD_IMPORTS, policy=policy) as plugin:
            with pytest.raises(plugsafe.HostFunctionError) as info:
                plugin.invoke("run", "x")
            assert info.value.function == "log" and isinstance(info.value.__cause__, KeyError)
            state["fail"] = False
            with pytest.raises(plugsafe.HostFunctionError, match="'now'"):
                plugin.invoke("run", "x")  # log passes now; now's result does not fit


def test_world_function_names_are_checked() -> None:
    host = Host()
    try:
        for bad in ("#", "#Log", "#-log", "#log#x", "log#", "#log-"):
            with pytest.raises(ValueError, match="not valid"):
                host.component_function(bad)
        with pytest.raises(plugsafe.PolicyError):
            Policy(allow={"#Log"})
        assert "#host-log" in Policy(allow={"#host-log"}).allow
    finally:
        host.close()
