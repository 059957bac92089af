"""`plugsafe new` projects: each builds with its one command, is under 1 KiB, passes its tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import build_plugins
import pytest

from plugsafe._scaffold import new_project

from .conftest import ROOT, RequireFn

BUILT_WASM = {
    "rust": Path("target") / "wasm32-unknown-unknown" / "release" / "hello_plugin.wasm",
    "c": Path("hello_plugin.wasm"),
}


def build(lang: str, project: Path, toolchains: build_plugins.Toolchains) -> Path:
    """Build the project with the command its README gives (``cargo build --release``/``make``)."""
    if lang == "rust":
        build_plugins.cargo_build(toolchains, project, project / "target")
    elif shutil.which("make"):
        res = subprocess.run(
            ["make", f"CC={toolchains.clang}"], cwd=project, capture_output=True, text=True
        )
        assert res.returncode == 0, res.stdout + res.stderr
    else:
        # No make: the same compile the Makefile runs.
        build_plugins.clang_build(
            toolchains, project / "hello_plugin.c", project / "hello_plugin.wasm", include=project
        )
    return project / BUILT_WASM[lang]


@pytest.mark.parametrize("lang", ["rust", "c"])
def test_new_project_builds_small_and_passes_its_own_tests(
    lang: str, tmp_path: Path, require: RequireFn, toolchains: build_plugins.Toolchains
) -> None:
    require(lang)
    project = new_project(lang, "hello-plugin", tmp_path / "hello-plugin")
    wasm = build(lang, project, toolchains)
    assert wasm.stat().st_size < 1024, f"{lang} minimal plugin is {wasm.stat().st_size} bytes"

    # The project's own test file, run the way its README says, against plugsafe from here.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_plugin.py"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 passed" in res.stdout


@pytest.mark.parametrize("lang", ["rust", "c"])
def test_build_script_builds_the_templates_in_place(
    lang: str, tmp_path: Path, require: RequireFn, toolchains: build_plugins.Toolchains
) -> None:
    """The repository's templates build as they are (what plugins-sdk/build_plugins.py does)."""
    require(lang)
    (wasm,) = build_plugins.build_templates(toolchains, tmp_path, langs=[lang])
    assert wasm.stat().st_size < 1024
