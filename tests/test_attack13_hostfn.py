"""attack13: a host function raising an exception whose ``str()`` raises.

The ``HostFunctionError`` message quotes the app's exception (``raised KeyError: 'x'``); its
``__str__`` is the app's code. A module's host function then ended as a bare ``PluginTrap``
("host function 'boom' failed": the cause lost), a component's raised the ``__str__``'s own
``RuntimeError`` from ``invoke``, undocumented. Both are now the ``HostFunctionError`` that
docs/errors.md promises, the exception its ``__cause__``, its text ``<BadStr: str() raised>``.
"""

from __future__ import annotations

from typing import NoReturn

import pytest
from component_wat import HOST_CALLS

import plugsafe


class _BadStr(Exception):
    def __str__(self) -> NoReturn:
        raise RuntimeError("the app's __str__")


def test_a_module_host_function_raising_an_unprintable_error_is_a_host_function_error() -> None:
    with plugsafe.Host() as host:

        @host.function
        def boom() -> int:
            raise _BadStr

        guest = b"""(module (import "plugsafe" "boom" (func $b (result i32)))
          (func (export "f") (result i32) (call $b))
          (func (export "ok") (result i32) i32.const 7))"""
        plugin = host.load(guest, policy=plugsafe.Policy(allow={"boom"}))
        with pytest.raises(plugsafe.HostFunctionError) as info:
            plugin.invoke("f")
        assert type(info.value.__cause__) is _BadStr
        assert "<_BadStr: str() raised>" in str(info.value)
        assert info.value.cause_message == "<_BadStr: str() raised>"
        assert plugin.invoke("ok") == 7


def test_a_component_host_function_raising_an_unprintable_error_is_a_host_function_error() -> None:
    with plugsafe.Host() as host:

        @host.component_function("test:host/logging#host-log")
        def host_log(msg: str) -> None:
            if msg == "boom":
                raise _BadStr

        @host.component_function("test:host/clock#now")
        def now() -> int:
            return 5

        policy = plugsafe.Policy(allow={"test:host/logging", "test:host/clock"})
        with host.load_component(HOST_CALLS.encode(), policy=policy) as plugin:
            with pytest.raises(plugsafe.HostFunctionError) as info:
                plugin.invoke("run", "boom", 1)
            assert type(info.value.__cause__) is _BadStr
            assert "<_BadStr: str() raised>" in str(info.value)
            assert plugin.invoke("run", "fine", 1) == 5


class _NoName(type):
    @property
    def __name__(cls) -> str:  # type: ignore[override]
        raise RuntimeError("the app's metaclass")


class _Nameless(Exception, metaclass=_NoName):
    def __str__(self) -> NoReturn:
        raise RuntimeError("the app's __str__")


def test_an_error_whose_class_will_not_say_its_name_is_still_a_host_function_error() -> None:
    # (lead13) The message names the class by the name it was made with (_errors.type_name),
    # never by asking it: a metaclass's __name__ may raise too.
    with plugsafe.Host() as host:

        @host.function
        def boom() -> int:
            raise _Nameless

        guest = b"""(module (import "plugsafe" "boom" (func $b (result i32)))
          (func (export "f") (result i32) (call $b)))"""
        plugin = host.load(guest, policy=plugsafe.Policy(allow={"boom"}))
        with pytest.raises(plugsafe.HostFunctionError) as info:
            plugin.invoke("f")
        assert type(info.value.__cause__) is _Nameless
        assert "<_Nameless: str() raised>" in str(info.value)
