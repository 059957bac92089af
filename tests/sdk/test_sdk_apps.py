"""The example host apps run against the committed plugins (no toolchain needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from . import imageref
from .conftest import ROOT


def run_app(name: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run examples/<name>_app.py and return the finished process."""
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{name}_app.py"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("lang", ["rust", "c"])
def test_text_app(lang: str) -> None:
    res = run_app("text", "--lang", lang, stdin="one two\nthree\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "ONE TWO\nTHREE\n\n3 words, 2 lines, 14 characters\n"


@pytest.mark.parametrize("lang", ["rust", "c"])
def test_kv_app(lang: str) -> None:
    res = run_app(
        "kv", "--lang", lang, "Hi {name} in {city}{nothing}", "--visit", "a", "--visit", "a"
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["Hi Ada in London", "a: 1 visits", "a: 2 visits"]
    assert 'WARNING plugsafe.plugin.kv: no value for key "nothing"' in res.stderr


@pytest.mark.parametrize("lang", ["rust", "c"])
def test_image_app(lang: str, tmp_path: Path) -> None:
    res = run_app("image", str(tmp_path), "--lang", lang, "--width", "20", "--height", "10")
    assert res.returncode == 0, res.stderr
    for name in ("grayscale", "resized", "blurred"):
        assert (tmp_path / f"{name}.ppm").read_bytes().startswith(b"P6\n")
    assert (tmp_path / "resized.ppm").read_bytes().startswith(b"P6\n20 10\n255\n")
    # Feed one output back in as a PPM file: the reader and the plugin agree.
    again = tmp_path / "again"
    res = run_app("image", str(again), "--lang", lang, "--input", str(tmp_path / "resized.ppm"))
    assert res.returncode == 0, res.stderr
    pixels = (tmp_path / "resized.ppm").read_bytes()[len(b"P6\n20 10\n255\n") :]
    grey = imageref.grayscale(imageref.Image(20, 10, pixels))
    assert (again / "grayscale.ppm").read_bytes() == b"P6\n20 10\n255\n" + grey.pixels


def test_hostile_app_stops_everything() -> None:
    res = run_app("hostile")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    for expected in (
        "stopped: FuelExhausted",
        "stopped: DeadlineExceeded",
        "stopped: MemoryLimitExceeded",
        "stopped: PluginTrap",
        "contained",
    ):
        assert expected in out, expected
    assert "NOT STOPPED" not in out
    assert "innocent\\nCRITICAL" in res.stderr  # the forged newline arrives escaped
