"""Shared fixtures: a Host per test, closed afterwards, and helpers to load inline WAT."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import plugsafe


@pytest.fixture
def host() -> Iterator[plugsafe.Host]:
    with plugsafe.Host() as h:
        yield h


LoadFn = Callable[..., plugsafe.Plugin]


@pytest.fixture
def load(host: plugsafe.Host) -> LoadFn:
    """load(wat_text, **policy_fields) -> Plugin, with name='t'."""

    def _load(wat_text: str, name: str = "t", **policy: object) -> plugsafe.Plugin:
        return host.load(wat_text.encode(), policy=plugsafe.Policy(**policy), name=name)  # type: ignore[arg-type]

    return _load


# Wrong arguments for an (i32, i32) export, and what the SignatureError says about each.
BAD_I32_PAIRS: list[tuple[tuple[object, ...], str]] = [
    ((1,), "takes 2 argument"),
    ((1, 2, 3), "takes 2 argument"),
    (("1", 2), "argument 0 is i32; got str"),
    ((1.5, 2), "argument 0 is i32; got float"),
    ((1, None), "argument 1 is i32; got NoneType"),
    ((2**32, 0), "out of range"),
    ((-(2**31) - 1, 0), "out of range"),
]
