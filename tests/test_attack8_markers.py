"""attack8: a plugin cannot pass its own text off as another plugin's host-function failure.

A host callback that fails returns a trap whose message carries a marker naming its record and
function; ``failure_from_addresses`` turns a message with a marker into that function's failure
(its recorded exception, its sink, the record spent for a spare). The marker was
``[plugsafe-host#<record>.<function>]``, small counters anyone can guess, and a plugin can put
any text into a message wasmtime writes: its function names (the name section) are in every
trap's backtrace, its text is quoted by the WAT parser's errors, its export names by the
validator's. Since the runtime's rewrite onto the C API (cold7) compile and WAT errors went
through the same conversion too. So a hostile plugin could:

- make its own trap read as another plugin's host failure, spend that plugin's Linker, steal
  the exception that plugin's host function had recorded, feed that plugin's error sink;
- make a load fail with a bare IndexError (a marker naming a function a record does not have).

The marker now holds a secret of this process; text a plugin wrote never matches it.
"""

from __future__ import annotations

import pytest

import plugsafe
from plugsafe import Host, Policy
from plugsafe._runtime import _backend

# Calls the host function boom, which always raises.
CALLER = b"""(module (import "plugsafe" "boom" (func $b (param i32) (result i32)))
  (func (export "f") (result i32) (call $b (i32.const 1))))"""


class Refused(ValueError):
    pass


@pytest.fixture
def host_and_victim() -> tuple[Host, plugsafe.Plugin]:
    host = Host()

    @host.function
    def boom(x: int) -> int:
        raise Refused("host says no")

    victim = host.load(CALLER, policy=Policy(allow={"boom"}))
    return host, victim


def _guessed_markers() -> list[str]:
    # Every record alive, every function index it could have and one past, spare or not: all
    # a plugin could guess of the old format.
    out = []
    for ident in list(_backend._RECORDS.keys()):
        for function in (0, 1, 7):
            for spare in ("", " spare"):
                out.append(f"[plugsafe-host#{ident}.{function}{spare}]")
    return out


def _victim_still_reports_its_own_failure(victim: plugsafe.Plugin) -> None:
    with pytest.raises(plugsafe.HostFunctionError) as info:
        victim.invoke("f")
    assert isinstance(info.value.__cause__, Refused), info.value
    assert "host says no" in str(info.value)


def test_a_trap_naming_a_marker_in_its_backtrace_is_the_plugins_own_trap(
    host_and_victim: tuple[Host, plugsafe.Plugin],
) -> None:
    host, victim = host_and_victim
    _victim_still_reports_its_own_failure(victim)
    for marker in _guessed_markers():
        # The function's name (name section) is in the trap's backtrace.
        forger = host.load(f'(module (func $"{marker}" (export "g") unreachable))'.encode())
        with pytest.raises(plugsafe.PluginTrap) as info:
            forger.invoke("g")
        assert type(info.value) is plugsafe.PluginTrap
        assert "unreachable" in str(info.value), info.value
        forger.close()
        _victim_still_reports_its_own_failure(victim)


def test_a_wat_error_quoting_a_marker_is_an_invalid_module(
    host_and_victim: tuple[Host, plugsafe.Plugin],
) -> None:
    host, victim = host_and_victim
    for marker in _guessed_markers():
        with pytest.raises(plugsafe.InvalidModuleError) as info:
            host.load(f'(module (func (export "g"))) {marker}'.encode())
        assert "HostCallbackFailed" not in str(info.value)
        assert "extra tokens" in str(info.value) or "expected" in str(info.value), info.value
    _victim_still_reports_its_own_failure(victim)


def test_a_validation_error_quoting_a_marker_is_an_invalid_module(
    host_and_victim: tuple[Host, plugsafe.Plugin],
) -> None:
    host, victim = host_and_victim
    for marker in _guessed_markers():
        # Duplicate export names: the validator's message quotes the name.
        wat = f'(module (func (export "{marker}")) (func (export "{marker}")))'
        with pytest.raises(plugsafe.InvalidModuleError) as info:
            host.load(wat.encode())
        assert "duplicate export" in str(info.value), info.value
    _victim_still_reports_its_own_failure(victim)


def test_a_real_host_failure_is_still_recognised(
    host_and_victim: tuple[Host, plugsafe.Plugin],
) -> None:
    # The same plugin, its host function failing many times: each is that failure.
    _host, victim = host_and_victim
    for _ in range(5):
        _victim_still_reports_its_own_failure(victim)
