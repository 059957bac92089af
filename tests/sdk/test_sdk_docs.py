"""The code in the SDK README and the guides compiles and does what the text says."""

from __future__ import annotations

import re
from pathlib import Path

import build_plugins
import pytest

import plugsafe
from plugsafe._scaffold import new_project

from .conftest import ROOT, RequireFn


def code_blocks(doc: Path, lang: str) -> list[str]:
    """The fenced code blocks of one language in a Markdown file."""
    return re.findall(rf"```{lang}\n(.*?)```", doc.read_text(), re.S)


def test_rust_readme_plugin(
    require: RequireFn, toolchains: build_plugins.Toolchains, tmp_path: Path
) -> None:
    """The complete plugin in plugins-sdk/rust/README.md is under 20 lines and works."""
    require("rust")
    (code,) = code_blocks(ROOT / "plugins-sdk" / "rust" / "README.md", "rust")
    assert len(code.splitlines()) < 20
    project = tmp_path / "greet"
    (project / "src").mkdir(parents=True)
    (project / ".cargo").mkdir()
    (project / "src" / "lib.rs").write_text(code)
    sdk = (ROOT / "plugins-sdk" / "rust").as_posix()
    (project / "Cargo.toml").write_text(
        '[package]\nname = "greet"\nversion = "0.1.0"\nedition = "2021"\n'
        '[lib]\ncrate-type = ["cdylib"]\n'
        f'[dependencies]\nplugsafe = {{ path = "{sdk}" }}\n'
    )
    (project / ".cargo" / "config.toml").write_text('[build]\ntarget = "wasm32-unknown-unknown"\n')
    release = build_plugins.cargo_build(toolchains, project, project / "target")
    with plugsafe.Host() as host:

        @host.function
        def kv_get(key: str) -> str | None:
            return {"ada": "Countess "}.get(key)

        policy = plugsafe.Policy(allow=frozenset({"log", "kv_get"}))
        with host.load(release / "greet.wasm", policy=policy) as plugin:
            assert plugin.call("greet", "ada") == b"Hello, Countess ada!"


def test_c_guide_examples(
    require: RequireFn, toolchains: build_plugins.Toolchains, tmp_path: Path
) -> None:
    """The functions docs/guest-c.md adds to a new project build and behave as described."""
    require("c")
    blocks = code_blocks(ROOT / "docs" / "guest-c.md", "c")
    added = [b for b in blocks if "PLUGSAFE_EXPORT(count)" in b or "PLUGSAFE_EXPORT(title)" in b]
    assert len(added) == 2
    project = new_project("c", "wordy", tmp_path / "wordy")
    source = project / "wordy.c"
    source.write_text(source.read_text() + "\n" + "\n".join(added))
    wasm = build_plugins.clang_build(toolchains, source, project / "wordy.wasm", include=project)
    with plugsafe.Host() as host:

        @host.function
        def kv_get(key: str) -> str | None:
            return {"a": "Alpha"}.get(key)

        @host.function
        def kv_incr(key: str, by: int) -> int:
            return by

        policy = plugsafe.Policy(allow=frozenset({"kv_get", "kv_incr"}))
        with host.load(wasm, policy=policy) as plugin:
            assert plugin.call("count", "three small words") == b"3"
            assert plugin.call("title", "a") == b"Alpha"
            with pytest.raises(plugsafe.GuestError) as info:
                plugin.call("title", "b")
            assert info.value.message == "no such key"


def test_rust_guide_host_functions_and_their_test(
    require: RequireFn, toolchains: build_plugins.Toolchains, tmp_path: Path
) -> None:
    """docs/guest-rust.md step 7: the plugin's `visit` and the test with stubs that the guide
    shows, added to a new project, build and pass (4 tests: the template's 3 and the guide's)."""
    import os
    import subprocess
    import sys

    require("rust")
    doc = ROOT / "docs" / "guest-rust.md"
    (rust,) = [b for b in code_blocks(doc, "rust") if "fn visit" in b]
    (python,) = [b for b in code_blocks(doc, "python") if "def test_visit" in b]
    project = new_project("rust", "visits", tmp_path / "visits")
    lib = project / "src" / "lib.rs"
    lib.write_text(
        lib.read_text().replace(
            "plugsafe::export!(shout);", rust + "\nplugsafe::export!(shout, visit);"
        )
    )
    tests = project / "test_plugin.py"
    tests.write_text(tests.read_text() + "\n\n" + python)
    assert toolchains.cargo is not None and toolchains.rustc is not None
    env = {**os.environ, "CARGO": toolchains.cargo, "RUSTC": toolchains.rustc}
    env.pop("CARGO_TARGET_DIR", None)
    for cmd in (["build.py"], ["-m", "pytest", "-q", "-p", "no:cacheprovider", "test_plugin.py"]):
        res = subprocess.run(
            [sys.executable, *cmd],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0, res.stdout + res.stderr
    assert "4 passed" in res.stdout
