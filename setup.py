"""Build hooks: ship the guest SDKs and plugin templates in the package as ``plugsafe/_sdk/``,
and build the optional compiled call into wasm (``plugsafe._speedups``).

Everything else about the build is in ``pyproject.toml``. ``plugsafe new`` (``plugsafe._scaffold``)
copies templates from ``plugsafe/_sdk/`` in a regular install, and from ``plugins-sdk/`` in a
source checkout installed with ``pip install -e .``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

SDK_SOURCE = Path(__file__).resolve().parent / "plugins-sdk"
SDK_PARTS = ("c", "rust", "templates")
# Build outputs and caches never belong in the package.
IGNORE = shutil.ignore_patterns(
    "target", "Cargo.lock", "*.wasm", "__pycache__", ".pytest_cache", ".benchmarks", "*.pyc"
)


class BuildPyWithSdk(build_py):
    """build_py that also copies plugins-sdk/{c,rust,templates} into plugsafe/_sdk/."""

    def run(self) -> None:
        super().run()
        if not SDK_SOURCE.is_dir():
            return
        dest = Path(self.build_lib) / "plugsafe" / "_sdk"
        for part in SDK_PARTS:
            shutil.copytree(SDK_SOURCE / part, dest / part, ignore=IGNORE, dirs_exist_ok=True)


# plugsafe/_speedups.c (issue 14, goal 5): the per-call C call without cffi's ABI-mode call.
# Optional: without a C compiler or Python's headers the build warns and goes on, and the
# cffi backend calls through cffi as before (plugsafe._runtime.SPEEDUPS says which is in use).
SPEEDUPS = Extension("plugsafe._speedups", ["plugsafe/_speedups.c"], optional=True)

setup(cmdclass={"build_py": BuildPyWithSdk}, ext_modules=[SPEEDUPS])
