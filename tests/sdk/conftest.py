"""Fixtures that build the SDK examples and templates from source, once per test session.

Building needs the wasm toolchains (see ``plugins-sdk/build_plugins.py``). When one is missing
the tests that need it are skipped with a message saying what to install, except where the
toolchains are required (``PLUGSAFE_REQUIRE_TOOLCHAINS=1``, which ``.ci/run`` sets, or a true
``CI``), where a missing toolchain is a failure: CI must test the SDKs (``tests/toolchains.py``).

Tests that only need the committed ``.wasm`` files in ``examples/plugins/wasm/`` run anywhere.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import plugsafe

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins-sdk"))

import build_plugins  # noqa: E402 - importable only once plugins-sdk/ is on the path
from buildcache import cached, digest, tool_version  # noqa: E402 - (tests/, as above)

COMMITTED = ROOT / "examples" / "plugins" / "wasm"


def in_ci() -> bool:
    """Whether the suite runs in CI, where missing toolchains must fail instead of skip."""
    return build_plugins.toolchains_required()


@pytest.fixture(scope="session")
def toolchains() -> build_plugins.Toolchains:
    """The wasm toolchains found on this machine (probed once)."""
    return build_plugins.find_toolchains()


RequireFn = Callable[[str], None]


@pytest.fixture(scope="session")
def require(toolchains: build_plugins.Toolchains) -> RequireFn:
    """require("rust" | "c" | "wasi"): skip (or fail in CI) unless that toolchain works."""

    def _require(what: str) -> None:
        try:
            toolchains.require(what)
        except build_plugins.ToolchainMissing as e:
            if in_ci():
                pytest.fail(f"{e} ({build_plugins.REQUIRE_ENV} or CI: toolchains must be here)")
            pytest.skip(f"{build_plugins.SKIP_PREFIX}: {e}")

    return _require


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this session's fresh builds go."""
    return tmp_path_factory.mktemp("plugins")


@pytest.fixture(scope="session")
def fresh_rust(
    toolchains: build_plugins.Toolchains, require: RequireFn, build_dir: Path
) -> dict[str, Path]:
    """The Rust examples built from source: name -> wasm path.

    Kept between runs for the same sources, SDK, build script and rustc (tests/buildcache.py:
    the release build is half a minute)."""
    require("rust")

    def build(out: Path) -> None:
        out.mkdir()
        for path in build_plugins.build_rust_examples(toolchains, build_dir):
            shutil.copyfile(path, out / path.name)

    assert toolchains.rustc is not None and toolchains.cargo is not None
    inputs = [ROOT / "examples" / "plugins" / "rust", build_plugins.SDK / "rust"]
    inputs.append(Path(build_plugins.__file__))
    tools = [
        tool_version(toolchains.rustc, "--version"),
        tool_version(toolchains.cargo, "--version"),
    ]
    key = digest(inputs, *tools)
    kept = cached("rust-examples", key, build)
    return {p.name.removesuffix("-rust.wasm"): p for p in kept.glob("*-rust.wasm")}


@pytest.fixture(scope="session")
def fresh_c(
    toolchains: build_plugins.Toolchains, require: RequireFn, build_dir: Path
) -> dict[str, Path]:
    """The C examples built from source: name -> wasm path."""
    require("c")
    require("wasi")
    paths = build_plugins.build_c_examples(toolchains, build_dir)
    return {p.name.removesuffix("-c.wasm"): p for p in paths}


PluginPath = Callable[[str, str, str], Path]


@pytest.fixture
def plugin_path(request: pytest.FixtureRequest) -> PluginPath:
    """plugin_path(example, lang, source): the wasm file of an example.

    ``source`` is ``"fresh"`` (built from source this session) or ``"committed"`` (the file in
    examples/plugins/wasm/, which needs no toolchain).
    """

    def _path(example: str, lang: str, source: str) -> Path:
        if source == "committed":
            return COMMITTED / f"{example}-{lang}.wasm"
        built: dict[str, Path] = request.getfixturevalue(f"fresh_{lang}")
        return built[example]

    return _path


@pytest.fixture
def host() -> Iterator[plugsafe.Host]:
    """A Host for one test, closed afterwards."""
    with plugsafe.Host() as h:
        yield h
