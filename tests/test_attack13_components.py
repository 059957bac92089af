"""attack13: a component's ``invoke`` arguments that raise while they are converted.

docs/errors.md ("Arguments from the app"): an ``Exception`` raised by an argument's conversion,
its class's attributes or its ``__class__`` is a ``SignatureError`` naming the argument, with
that exception as ``__cause__``; a ``PlugsafeError`` propagates as itself, a ``BaseException``
that is not an ``Exception`` too; no wasm runs and the plugin goes on. Modules kept this since
attack7; a component's ``invoke`` let the app's exception out bare (a record field's property,
a list's iterator, an unhashable flag, a raising ``__class__``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import pytest
from component_wat import WORLD

import plugsafe


class _Image:
    width = 1
    height = 1

    @property
    def data(self) -> NoReturn:
        raise RuntimeError("the app's property")


class _LyingMap(dict[str, Any]):
    def __contains__(self, key: object) -> NoReturn:
        raise KeyError("the app's mapping")


def _failing() -> Iterator[int]:
    yield 1
    raise ValueError("the app's generator")


class _NoIter:
    def __iter__(self) -> NoReturn:
        raise OSError("the app's iterable")


class _Unhashable:
    __hash__ = None  # type: ignore[assignment]


class _ClassRaises:
    @property  # type: ignore[misc]
    def __class__(self) -> NoReturn:  # type: ignore[override]
        raise RuntimeError("the app's __class__")


class _Interrupting:
    def __iter__(self) -> NoReturn:
        raise KeyboardInterrupt


# (function, a maker of the argument (pytest would ask the argument itself for an id), the
# exception it raises, the parameter's name)
CASES = [
    ("swap", _Image, RuntimeError, "img"),
    ("swap", lambda: _LyingMap(width=1, height=1, data=b""), KeyError, "img"),
    ("sum", _failing, ValueError, "xs"),
    ("sum", _NoIter, OSError, "xs"),
    ("sum", lambda: [_ClassRaises()], RuntimeError, "xs"),
    ("flip", lambda: [_Unhashable()], TypeError, "f"),
    ("opt", _ClassRaises, RuntimeError, "x"),
    ("same-shape", lambda: {"tag": "num", "value": _ClassRaises()}, RuntimeError, "v"),
    ("echo", _ClassRaises, RuntimeError, "s"),
]


@pytest.fixture(scope="module")
def world() -> Iterator[plugsafe.ComponentPlugin]:
    with plugsafe.Host() as host:
        plugin = host.load(WORLD.encode(), policy=plugsafe.Policy(fuel=1_000_000))
        assert isinstance(plugin, plugsafe.ComponentPlugin)
        yield plugin


@pytest.mark.parametrize(("function", "make", "cause", "name"), CASES)
def test_an_argument_raising_in_its_conversion_is_a_signature_error_with_its_cause(
    world: plugsafe.ComponentPlugin,
    function: str,
    make: Callable[[], Any],
    cause: type,
    name: str,
) -> None:
    with pytest.raises(plugsafe.SignatureError, match=f"argument {name!r}") as info:
        world.invoke(function, make())
    assert type(info.value.__cause__) is cause
    assert world.invoke("add", 2, 3) == 5  # no wasm ran; the plugin goes on


def test_an_interrupt_in_an_arguments_conversion_propagates_as_itself(
    world: plugsafe.ComponentPlugin,
) -> None:
    with pytest.raises(KeyboardInterrupt):
        world.invoke("sum", _Interrupting())
    assert world.invoke("add", 2, 3) == 5


def test_a_plugsafe_error_in_an_arguments_conversion_propagates_as_itself(
    world: plugsafe.ComponentPlugin,
) -> None:
    class _Calls:
        def __iter__(self) -> NoReturn:
            raise plugsafe.PluginClosedError("raised by the app's iterable")

    with pytest.raises(plugsafe.PluginClosedError):
        world.invoke("sum", _Calls())
    assert world.invoke("add", 2, 3) == 5
