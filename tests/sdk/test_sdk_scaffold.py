"""plugsafe._scaffold.new_project, which `plugsafe new` calls (no toolchain needed)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from plugsafe import _scaffold
from plugsafe._scaffold import new_project

from .conftest import ROOT, in_ci


def all_text(project: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(project.rglob("*")) if p.is_file())


def test_rust_project(tmp_path: Path) -> None:
    project = new_project("rust", "my-plugin", tmp_path / "my-plugin")
    assert project == (tmp_path / "my-plugin").resolve()
    for rel in (
        "Cargo.toml",
        ".cargo/config.toml",
        "src/lib.rs",
        "policy.toml",
        "test_plugin.py",
        "README.md",
        ".gitignore",
        "plugsafe-sdk/Cargo.toml",
        "plugsafe-sdk/src/lib.rs",
    ):
        assert (project / rel).is_file(), rel
    cargo = (project / "Cargo.toml").read_text()
    assert 'name = "my_plugin"' in cargo
    assert 'path = "plugsafe-sdk"' in cargo
    assert "my_plugin.wasm" in (project / "test_plugin.py").read_text()
    assert "plugsafe_template" not in all_text(project)
    assert not (project / "plugsafe-sdk" / "target").exists()


def test_c_project(tmp_path: Path) -> None:
    project = new_project("c", "filter2", tmp_path / "f")
    names = sorted(p.name for p in project.iterdir())
    assert names == sorted(
        [
            ".gitignore",
            "Makefile",
            "README.md",
            "filter2.c",
            "plugsafe.h",
            "policy.toml",
            "test_plugin.py",
        ]
    )
    assert "SDK ?= .\n" in (project / "Makefile").read_text()
    assert "plugsafe_template" not in all_text(project)
    assert (project / "plugsafe.h").read_bytes() == (ROOT / "plugins-sdk/c/plugsafe.h").read_bytes()


def test_empty_destination_directory_is_fine(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    assert (new_project("c", "p", tmp_path / "p") / "p.c").is_file()


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        new_project("rust", "p", tmp_path / "p")
    assert (tmp_path / "p" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no staging left behind


@pytest.mark.parametrize("name", ["", "1abc", "has space", "a/b", "../up", "x" * 65, "é"])
def test_rejects_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="invalid plugin name"):
        new_project("c", name, tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_rejects_unknown_language(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown plugin language 'go'"):
        new_project("go", "p", tmp_path / "p")


def test_finds_templates_in_a_source_checkout() -> None:
    assert _scaffold.sdk_root() == ROOT / "plugins-sdk"


def test_works_from_a_built_wheel(tmp_path: Path) -> None:
    """A regular install gets the templates as package data (the setup.py build hook)."""
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if res.returncode != 0:
        message = f"could not build a wheel: {res.stderr[-2000:]}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    (wheel,) = tmp_path.glob("plugsafe-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
        names = zf.namelist()
    assert "plugsafe/_sdk/c/plugsafe.h" in names
    assert "plugsafe/_sdk/templates/rust/src/lib.rs" in names
    assert not [n for n in names if n.endswith(".wasm") or "/target/" in n]
    script = (
        "import sys; from plugsafe import _scaffold as s; "
        "p = s.new_project('rust', 'w', sys.argv[1]); print(s.sdk_root())"
    )
    res = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "proj")],
        env={"PYTHONPATH": str(site), "PATH": ""},
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(site / "plugsafe" / "_sdk")
    assert (tmp_path / "proj" / "plugsafe-sdk" / "src" / "lib.rs").is_file()
