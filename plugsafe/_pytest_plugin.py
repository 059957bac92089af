"""The pytest plugin plugsafe registers (``pytest11`` entry point ``plugsafe``): two fixtures.

The helpers live in :mod:`plugsafe.testing` (documented there, with these fixtures). This
module is the one pytest loads in every session of an environment where plugsafe is installed,
so it stays small and imports ``plugsafe.testing`` only when a test uses ``plugsafe_load``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from plugsafe import Host, Plugin


@pytest.fixture
def plugsafe_host() -> Iterator[Host]:
    """A :class:`plugsafe.Host` for one test, closed afterwards with every plugin it loaded."""
    with Host() as host:
        yield host


@pytest.fixture
def plugsafe_load(plugsafe_host: Host) -> Callable[..., Plugin]:
    """``plugsafe.testing.load_plugin`` bound to ``plugsafe_host``.

    ``plugsafe_load("plugin.wasm", "policy.toml", allow={"kv_get"})`` loads a plugin under a
    policy file, widened by ``allow``.
    """
    import functools

    from plugsafe.testing import load_plugin

    return functools.partial(load_plugin, plugsafe_host)
