"""One rule for tests that need a guest toolchain (clang, wasi-libc, rustc with a wasm target).

Where a toolchain is missing such a test is skipped with a reason that starts with
:data:`SKIP_PREFIX` and names the Debian packages to install; ``tests/conftest.py`` counts those
skips in one summary line. Where the toolchains must be there (CI: ``.ci/run`` sets
``PLUGSAFE_REQUIRE_TOOLCHAINS=1``; a true ``CI`` variable counts too) the same test fails
instead, so nothing can silently stop being tested.

The compilers are found the way ``plugins-sdk/build_plugins.py`` finds them, and the same
variables choose others (``CC``, ``RUSTC``, ``CARGO``, ``WASI_SYSROOT``): pointing one at a path
that does not exist is how a test (``tests/test_toolchain_skips.py``) fakes a machine without it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins-sdk"))

# The constants and the rule live in build_plugins.py, which tests/sdk uses as well.
from build_plugins import APT_HINT as INSTALL
from build_plugins import REQUIRE_ENV, SKIP_PREFIX
from build_plugins import toolchains_required as required

__all__ = [
    "INSTALL",
    "REQUIRE_ENV",
    "SKIP_PREFIX",
    "missing",
    "required",
    "rustc_candidates",
    "which",
]


def missing(problem: str, install: str = INSTALL) -> NoReturn:
    """Skip (or, where toolchains are required, fail) because of ``problem``."""
    if required():
        pytest.fail(
            f"{problem}, but {REQUIRE_ENV} (or CI) says the toolchains must be here: {install}"
        )
    pytest.skip(f"{SKIP_PREFIX}: {problem}; install with: {install}")


def which(env: str, default: str) -> str | None:
    """The tool ``env`` names (even if it does not exist: then None), else ``default`` on PATH."""
    chosen = os.environ.get(env)
    if chosen:
        return chosen if Path(chosen).exists() or shutil.which(chosen) else None
    return shutil.which(default)


def rustc_candidates() -> list[str]:
    """rustc binaries to try for wasm targets: ``RUSTC`` alone if set, else Debian's, then PATH's.

    Debian's ``/usr/bin/rustc`` comes first because a rustup install often lacks the wasm
    targets (and cannot download them offline).
    """
    chosen = os.environ.get("RUSTC")
    if chosen:
        return [chosen] if Path(chosen).exists() or shutil.which(chosen) else []
    found = ["/usr/bin/rustc"] if Path("/usr/bin/rustc").exists() else []
    on_path = shutil.which("rustc")
    return list(dict.fromkeys([*found, *([on_path] if on_path else [])]))
