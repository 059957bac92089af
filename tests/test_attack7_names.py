"""attack7: a function name that is a str subclass is the str it holds.

``invoke`` refuses the WASI entry points (``_start`` runs only through ``run()``,
``_initialize`` once per instance, by plugsafe) by comparing the name, and then looks the
function up by it. A ``str`` subclass answering the comparison one way and the lookup another
(its own ``__eq__``/``__hash__``/``encode``) passed the check and ran ``_initialize`` again on a
live instance. attack6 made policy names read as the plain value they hold; call names now do
the same on the general path (the short paths take exact ``str`` only).
"""

from __future__ import annotations

import sys

import pytest

import plugsafe

from conftest import LoadFn
from helpers import run_ok

REACTOR = """(module (global $g (mut i32) (i32.const 0))
  (func (export "_initialize") (global.set $g (i32.add (global.get $g) (i32.const 100))))
  (func (export "get") (result i32) (global.get $g)))"""


class Liar(str):
    """Not equal to anything while plugsafe's checks compare it; itself for every lookup."""

    def __eq__(self, other: object) -> bool:
        if sys._getframe(1).f_code.co_name in ("check_invoke", "call_abi", "check_abi"):
            return False
        return str.__eq__(self, other)

    __hash__ = str.__hash__


class Renamed(str):
    """Looks like ``get`` to Python, but names ``_initialize`` to the runtime."""

    def encode(self, *args: object, **kwargs: object) -> bytes:
        return b"_initialize"


@pytest.mark.parametrize("make", [Liar, lambda _: Renamed("get")], ids=["liar", "renamed"])
@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_str_subclass_cannot_invoke_a_wasi_entry_point(
    load: LoadFn, make: type[str], asynchronous: bool
) -> None:
    p = load(REACTOR)
    assert p.invoke("get") == 100  # _initialize ran once, at load
    name = make("_initialize")
    try:
        if asynchronous:
            import asyncio

            asyncio.run(p.invoke_async(name))
        else:
            p.invoke(name)
    except plugsafe.SignatureError as exc:
        assert "WASI entry point" in str(exc)
    # It did not run again, whatever the call answered.
    assert p.invoke("get") == 100


def test_a_str_subclass_names_the_function_it_holds(load: LoadFn) -> None:
    p = load(REACTOR)
    for _ in range(3):
        assert p.invoke(Renamed("get")) == 100


_OTHER_SIGNATURE = """
import plugsafe
n = 400
wat = ("(module (func (export \\"small\\")) (func (export \\"big\\") (result " + "i64 " * n
       + ")" + " (i64.const -1)" * n + "))").encode()
class Renamed(str):
    def encode(self, *args, **kwargs):
        return b"big"
host = plugsafe.Host()
p = host.load(wat)
for _ in range(20):
    assert p.invoke(Renamed("small")) is None
    assert p.invoke("small") is None
print("ok")
"""


def test_a_str_subclass_cannot_call_one_export_through_anothers_signature() -> None:
    # ``small`` () -> () was described, and ``big`` (400 i64 results) called on its one-slot
    # buffer: wasmtime wrote past it and the process died.
    assert run_ok(_OTHER_SIGNATURE, timeout=120).strip() == "ok"
