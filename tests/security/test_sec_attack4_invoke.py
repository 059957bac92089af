"""attack4: invoke's remembered function when the instance changes during the call.

The short path of ``Plugin.invoke`` remembers the last function it called (``CallPath._aim``)
and forgets it whenever the instance changes (``CallPath._forget``). A host function can change
the instance in the middle of a call (it may close its own plugin: the release waits for the
call to end); the call must still return what the function returned, in the shape ``invoke``
documents (one result: the value itself), not the shape the forgotten state implies.
"""

from __future__ import annotations

import plugsafe
from plugsafe import Policy

from sec import assert_healthy

WAT = b"""(module
  (import "plugsafe" "closer" (func $closer (param i64) (result i64)))
  (memory (export "memory") 1)
  (func (export "f") (param i64) (result i64) (call $closer (local.get 0)))
  (func (export "two") (param i64) (result i64 i64)
    (call $closer (local.get 0)) (i64.const 7)))"""


def test_a_plugin_closed_by_its_host_function_mid_invoke_returns_the_plain_result(
    host: plugsafe.Host,
) -> None:
    plugins: list[plugsafe.Plugin] = []

    @host.function
    def closer(x: int) -> int:
        if x == 1:
            plugins[0].close()
        return x

    p = host.load(WAT, policy=Policy(allow={"closer"}))
    plugins.append(p)
    assert p.invoke("f", 5) == 5  # aims the short path at "f"
    # Closed from inside the call: the call still ends with f's one result, as a value.
    assert p.invoke("f", 1) == 1
    assert p.closed
    assert_healthy(host)


def test_two_results_stay_a_tuple_when_the_plugin_is_closed_mid_invoke(
    host: plugsafe.Host,
) -> None:
    plugins: list[plugsafe.Plugin] = []

    @host.function
    def closer(x: int) -> int:
        if x == 1:
            plugins[0].close()
        return x

    p = host.load(WAT, policy=Policy(allow={"closer"}))
    plugins.append(p)
    assert p.invoke("two", 5) == (5, 7)
    assert p.invoke("two", 1) == (1, 7)
    assert_healthy(host)
