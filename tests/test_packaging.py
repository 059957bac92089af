"""Packaging metadata: one version, the license, and the pytest plugin's entry point."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest

import plugsafe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_version_has_one_source() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "plugsafe._version.__version__"
    assert importlib.metadata.version("plugsafe") == plugsafe.__version__


def test_license_is_apache_2_with_its_text() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    meta = importlib.metadata.metadata("plugsafe")
    if meta.get("Metadata-Version", "0") < "2.4":
        pytest.skip("installed with metadata older than PEP 639 (re-run pip install -e .)")
    assert meta["License-Expression"] == "Apache-2.0"


def test_classifiers_name_each_supported_python() -> None:
    classifiers = PYPROJECT["project"]["classifiers"]
    assert PYPROJECT["project"]["requires-python"] == ">=3.10"
    assert "Programming Language :: Python :: 3.10" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # PEP 639: the expression


def test_pytest_plugin_is_registered() -> None:
    plugins = [
        ep
        for ep in importlib.metadata.distribution("plugsafe").entry_points
        if ep.group == "pytest11"
    ]
    assert [(ep.name, ep.value) for ep in plugins] == [("plugsafe", "plugsafe._pytest_plugin")]
