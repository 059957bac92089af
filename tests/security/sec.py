"""Helpers for the adversarial suite: every attack test ends by proving the host is healthy."""

from __future__ import annotations

import plugsafe

from wat import ECHO, abi_module

# Appended to attack modules so the follow-up good call has something to call: ABI ``echo``
# (needs ``abi_module``) or plain ``ok`` returning 7.
ECHO_FN = """
  (func (export "echo") (param $p i32) (param $n i32) (result i64)
    (call $ok (local.get $p) (local.get $n)))"""
OK_FN = '(func (export "ok") (result i32) i32.const 7)'


def attacker(body: str, imports: str = "", memory: str = '(memory (export "memory") 1)') -> str:
    """An ABI guest with ``echo`` plus the attack in ``body``."""
    return abi_module(ECHO_FN + body, imports=imports, memory=memory)


def assert_healthy(host: plugsafe.Host, plugin: plugsafe.Plugin | None = None) -> None:
    """The host still loads and runs a good plugin, and ``plugin`` (if open) still answers."""
    fresh = host.load(ECHO.encode(), name="health-check")
    try:
        assert fresh.call("echo", b"still fine") == b"still fine"
    finally:
        fresh.close()
    if plugin is None or plugin.closed:
        return
    if "echo" in plugin.exports:
        assert plugin.call("echo", b"good call") == b"good call"
    elif "ok" in plugin.exports:
        assert plugin.invoke("ok") == 7
