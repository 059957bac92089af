"""Test helpers for plugin authors and app developers, and the pytest plugin that offers them.

Installing plugsafe registers a pytest plugin (the ``pytest11`` entry point ``plugsafe``), so
two fixtures are there in every test without an import:

* ``plugsafe_host``: a :class:`plugsafe.Host` for one test, closed after it (every plugin it
  loaded too, even when the test fails).
* ``plugsafe_load``: :func:`load_plugin` bound to that host.

The helpers are imported from ``plugsafe.testing``::

    from plugsafe.testing import assert_within_policy, load_plugin, stub

    def test_greets(plugsafe_host):
        @stub(plugsafe_host)                       # a host function that records its calls
        def lookup(key: str) -> str | None:
            return "Lovelace"

        plugin = load_plugin(plugsafe_host, "greet.wasm", "policy.toml", allow={"lookup"})
        assert plugin.call("greet", b"ada") == b"Hello, Lovelace!"
        assert lookup.calls == [("ada",)]
        assert_within_policy(plugin, headroom=0.5)  # used at most half of each limit

This module needs no pytest (the fixtures live in the plugin module, which imports this one
only when a fixture is used); its assertions raise ``AssertionError`` for any test runner.
Nothing here runs on plugsafe's call path: the helpers only read what a call already recorded
(``Plugin.last_call``), and a stub costs one list append per host call on top of the function.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from plugsafe import CallStats, Host, Plugin, Policy

__all__ = [
    "HostCall",
    "StubFunction",
    "assert_imports_only",
    "assert_within_policy",
    "load_plugin",
    "stub",
]

R = TypeVar("R")

PolicySource = Policy | str | os.PathLike[str] | None


def load_plugin(
    host: Host,
    source: str | os.PathLike[str] | bytes,
    policy: PolicySource = None,
    *,
    allow: Collection[str] = (),
    name: str | None = None,
) -> Plugin:
    """Load ``source`` into ``host`` under a policy file, exactly as a host app would.

    Args:
        host: the Host to load into (the ``plugsafe_host`` fixture in a test).
        source: the plugin: a path to a ``.wasm``/``.wat`` file, or the module as bytes.
        policy: a policy file (``policy.toml``, read with :meth:`Policy.from_toml`), a
            :class:`Policy`, or ``None`` for ``Policy()``.
        allow: host function names to allow on top of the policy's own ``allow``: the way to
            widen a policy in a test when the plugin starts importing a new function (register
            it first, e.g. with :func:`stub`). Widen the policy file too, for the host app.
        name: the plugin's name in errors and logs (the file's stem by default).

    Raises:
        PolicyError: the policy file is unreadable or invalid, or ``allow`` names a function
            the host does not have.
        PluginLoadError: whatever :meth:`Host.load` raises (an import the policy does not
            allow is an :class:`ImportNotAllowedError` listing every one).
    """
    if policy is None:
        loaded = Policy()
    elif isinstance(policy, Policy):
        loaded = policy
    else:
        loaded = Policy.from_toml(policy)
    if allow:
        loaded = loaded.replace(allow=loaded.allow | frozenset(allow))
    return host.load(source, policy=loaded, name=name)


@dataclass(frozen=True)
class HostCall:
    """One call a plugin made to a :class:`StubFunction`: its arguments and what it got back.

    ``error`` is the exception the stub's function raised (the plugin then saw the call fail),
    else ``None``.
    """

    args: tuple[Any, ...]
    result: Any = None
    error: BaseException | None = None


@dataclass
class StubFunction(Generic[R]):
    """A host function that records every call a plugin makes to it (made by :func:`stub`).

    Call it from the test like the function it wraps. ``calls`` lists each call's arguments
    (``[("ada",), ("bob",)]``), ``history`` the full :class:`HostCall` records.
    """

    name: str
    fn: Callable[..., R]
    history: list[HostCall] = field(default_factory=list)

    @property
    def calls(self) -> list[tuple[Any, ...]]:
        """The arguments of every call so far, in order."""
        return [call.args for call in self.history]

    @property
    def call_count(self) -> int:
        """How many times the plugin called this function."""
        return len(self.history)

    def __call__(self, *args: Any) -> R:
        try:
            result = self.fn(*args)
        except BaseException as exc:
            # Recorded, then re-raised: plugsafe turns it into the HostFunctionError the
            # plugin's caller sees, as it would for the real function.
            self.history.append(HostCall(args, None, exc))
            raise
        self.history.append(HostCall(args, result))
        return result


def stub(host: Host, *, name: str | None = None) -> Callable[[Callable[..., R]], StubFunction[R]]:
    """Register the decorated function with ``host`` as a host function that records its calls.

    The function's annotations give the wasm signature, as with :meth:`Host.function`; its
    return value is what the plugin gets. The policy must still ``allow`` the name (see
    ``load_plugin(..., allow=...)``)::

        @stub(plugsafe_host)
        def kv_get(key: str) -> str | None:
            return {"ada": "Lovelace"}.get(key)

        ...
        assert kv_get.calls == [("ada",)]

    Args:
        host: the Host to register with.
        name: the name plugins import (``plugsafe.<name>``); the function's name by default.
    """

    def register(fn: Callable[..., R]) -> StubFunction[R]:
        fname = name if name is not None else fn.__name__
        recorder = StubFunction(fname, fn)

        # A plain function for Host.function to read the annotations from: functools.wraps
        # copies them and sets __wrapped__, through which inspect and typing find the rest.
        @functools.wraps(fn)
        def recorded(*args: Any) -> R:
            return recorder(*args)

        host.function(recorded, name=fname)
        return recorder

    return register


def _limits(policy: Policy, stats: CallStats) -> list[tuple[str, float, float | None]]:
    """(what, used, allowed) for every limit a CallStats can be compared with."""
    return [
        ("fuel", stats.fuel_consumed or 0, policy.fuel),
        ("timeout (s)", stats.duration, policy.timeout),
        ("memory (bytes)", stats.memory_bytes, policy.memory),
        ("host calls", stats.host_calls, policy.max_host_calls),
    ]


def assert_within_policy(
    plugin: Plugin,
    stats: CallStats | None = None,
    *,
    policy: Policy | None = None,
    headroom: float = 1.0,
) -> CallStats:
    """Assert that a call stayed within ``headroom`` times each limit of the plugin's policy.

    Checks fuel, wall-clock time, memory and host calls of ``stats`` (by default the plugin's
    last call) against ``policy`` (by default the one the plugin was loaded under). With
    ``headroom=0.5`` the call may use at most half of each limit, so a test fails well before
    a slightly larger input would make the plugin fail in production. Unlimited (``None``)
    limits are not checked. Time is the one noisy measure: give it room on a busy machine.

    Returns:
        The stats checked.

    Raises:
        AssertionError: naming every limit the call went over, with the numbers.
    """
    if not 0 < headroom <= 1:
        raise ValueError(f"headroom must be in (0, 1], got {headroom!r}")
    if stats is None:
        stats = plugin.last_call
        if stats is None:
            raise AssertionError(f"plugin {plugin.name!r} has not been called yet")
    policy = plugin.policy if policy is None else policy
    over = [
        f"{what}: used {used:g} of {allowed:g}"
        + (f" (more than {headroom:.0%} of it)" if headroom < 1 else "")
        for what, used, allowed in _limits(policy, stats)
        if allowed is not None and used > allowed * headroom
    ]
    if over:
        raise AssertionError(f"plugin {plugin.name!r} went over its policy: " + "; ".join(over))
    return stats


def assert_imports_only(plugin: Plugin, allowed: Collection[str]) -> None:
    """Assert that the plugin imports no host function outside ``allowed``.

    A load already refuses imports the policy does not allow; this catches a plugin that
    starts importing more than a test expects (say, after an SDK upgrade) while the policy is
    still wide enough. ``allowed`` holds ``plugsafe`` function names (``"log"``); WASI and
    other modules' imports count as ``"module.name"``.

    Raises:
        AssertionError: listing the unexpected imports.
    """
    names = {
        imp.name if imp.module == "plugsafe" else f"{imp.module}.{imp.name}"
        for imp in plugin.imports
    }
    extra = sorted(names - set(allowed))
    if extra:
        raise AssertionError(
            f"plugin {plugin.name!r} imports {', '.join(extra)} beyond {sorted(allowed)}"
        )
