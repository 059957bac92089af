"""The committed example plugins (which the demo and the apps use) match their sources."""

from __future__ import annotations

import struct
from pathlib import Path

import build_plugins
import pytest

import plugsafe

from . import imageref
from .conftest import COMMITTED, PluginPath

EXPECTED = sorted(
    [f"{name}-rust.wasm" for name in build_plugins.RUST_EXAMPLES]
    + [f"{name}-c.wasm" for name in build_plugins.C_EXAMPLES]
)

IMG = imageref.pattern(9, 6, seed=5)
# Calls whose outcomes must be identical between a fresh build and the committed file.
PROBES: dict[str, list[tuple[str, bytes]]] = {
    "text": [
        ("uppercase", "Hello, straße!".encode()),
        ("word_count", b"one two\nthree"),
        ("word_count", b"\xff"),
    ],
    "image": [
        ("grayscale", IMG.encode()),
        ("resize", struct.pack("<II", 13, 4) + IMG.encode()),
        ("blur", struct.pack("<d", 1.25) + IMG.encode()),
        ("grayscale", IMG.encode()[:-1]),
        ("blur", struct.pack("<d", -1.0) + IMG.encode()),
    ],
    "kv": [("render", b"{a}-{b}-{missing}"), ("visit", b"x"), ("render", b"{oops")],
    "hostile": [("forge_log", b""), ("spin", b""), ("hog", b""), ("recurse", b"")],
}
CASES = [("rust", name) for name in build_plugins.RUST_EXAMPLES] + [
    ("c", name) for name in build_plugins.C_EXAMPLES
]


def outcomes(path: Path) -> list[tuple[str, bytes | str]]:
    """What each probe call returns, or which error it raises and with what message."""
    with plugsafe.Host() as host:

        @host.function
        def kv_get(key: str) -> str | None:
            return {"a": "1", "b": "two"}.get(key)

        @host.function
        def kv_incr(key: str, by: int) -> int:
            return len(key) + by

        policy = plugsafe.Policy(
            fuel=50_000_000,
            timeout=5.0,
            memory=8 * 2**20,
            allow=frozenset({"log", "kv_get", "kv_incr"}),
        )
        results: list[tuple[str, bytes | str]] = []
        with host.load(path, policy=policy, name="probe") as plugin:
            for function, data in PROBES[path.name.split("-")[0]]:
                try:
                    results.append(("ok", plugin.call(function, data)))
                except plugsafe.GuestError as e:
                    results.append(("GuestError", e.message))
                except plugsafe.PlugsafeError as e:
                    results.append((type(e).__name__, ""))
        return results


def test_every_example_is_committed() -> None:
    assert sorted(p.name for p in COMMITTED.glob("*.wasm")) == EXPECTED


def test_committed_plugins_are_small() -> None:
    for path in COMMITTED.glob("*.wasm"):
        assert path.stat().st_size < 64 * 1024, path.name


@pytest.mark.parametrize(("lang", "name"), CASES, ids=[f"{n}-{lang}" for lang, n in CASES])
def test_fresh_build_behaves_like_the_committed_file(
    plugin_path: PluginPath, lang: str, name: str
) -> None:
    fresh = outcomes(plugin_path(name, lang, "fresh"))
    committed = outcomes(plugin_path(name, lang, "committed"))
    assert fresh == committed, (
        f"{name}-{lang}.wasm is stale: run `python plugins-sdk/build_plugins.py "
        "--update-committed` and commit the result"
    )
