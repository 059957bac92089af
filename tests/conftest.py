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
