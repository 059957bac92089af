"""Work for a ``ProcessPoolExecutor`` worker in tests/test_errors_pickle.py.

A module of its own (not the test module) so that a spawned worker imports only this and
plugsafe: the worker finds it by name, on the ``sys.path`` the parent hands it.
"""

from __future__ import annotations

import os

import plugsafe

from wat import ECHO, abi_module

# A plugin whose "ask" export calls the app's host function ``lookup`` once.
ASKS = abi_module(
    """
  (func (export "ask") (param $p i32) (param $n i32) (result i64)
    (drop (call $lookup (i64.const 7)))
    (call $ok (local.get $p) (local.get $n)))
""",
    imports='(import "plugsafe" "lookup" (func $lookup (param i64) (result i64)))',
)


class AppError(Exception):
    """An app's own exception, importable in the parent: it travels as the cause."""


class StubbornError(Exception):
    """An app exception Exception's own pickling cannot rebuild (its __init__ wants 2 args)."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"{key}: {why}")
        self.key = key


def burn_fuel() -> str:
    """Call a plugin that loops until its fuel runs out (raises FuelExhausted)."""
    with plugsafe.Host() as host:
        plugin = host.load(ECHO.encode(), policy=plugsafe.Policy(fuel=10_000), name="burner")
        plugin.invoke("spin")
    return "unreachable"


def host_function_fails(stubborn: bool) -> str:
    """Call a plugin whose host function raises (raises HostFunctionError)."""
    with plugsafe.Host() as host:

        def lookup(key: int) -> int:
            if stubborn:
                raise StubbornError(f"k{key}", "not found")
            raise AppError(f"no key {key}")

        host.function(lookup)
        plugin = host.load(ASKS.encode(), policy=plugsafe.Policy(allow={"lookup"}), name="asker")
        plugin.call("ask", b"x")
    return "unreachable"


def echo(text: str) -> tuple[int, bytes]:
    """A call that works: the worker's pid and the plugin's output."""
    with plugsafe.Host() as host:
        plugin = host.load(ECHO.encode(), name="echo")
        return os.getpid(), plugin.call("echo", text)
