#!/usr/bin/env python3
"""Build this plugin, or run its unit tests, with a Rust toolchain that can.

Usage (only the Python standard library is needed)::

    python build.py          # -> target/wasm32-unknown-unknown/release/plugsafe_template.wasm
    python build.py test     # cargo test: the unit tests in src/, on this machine
    python build.py --check  # only say which toolchain would be used, or what to install

Building needs a ``cargo`` and a ``rustc`` that has the ``wasm32-unknown-unknown`` standard
library. The first ``cargo``/``rustc`` on PATH (often rustup's) may lack it, and rustup cannot
download it offline, so this script tries, in order: ``CARGO`` and ``RUSTC`` if set, the pair on
PATH, then Debian's ``/usr/bin/cargo`` and ``/usr/bin/rustc``. If none works it says exactly what
to install. Nothing is downloaded: cargo runs ``--offline`` (the project has no dependencies
outside the ``plugsafe-sdk/`` copy it carries).

A ``Cargo.lock`` written by a newer cargo (lock file version 4, cargo 1.78+) cannot be read by
an older one; since this project has no registry dependencies, the lock file holds nothing worth
keeping, and the script removes it and builds again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = "wasm32-unknown-unknown"
INSTALL = (
    "Debian/Ubuntu: apt-get install rustc cargo libstd-rust-dev-wasm32 "
    f"(then: python build.py); with rustup, online: rustup target add {TARGET}"
)


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, check=False)
    except OSError as e:
        return subprocess.CompletedProcess(cmd, 127, "", str(e))


def _candidates() -> list[tuple[str, str]]:
    """(cargo, rustc) pairs to try, most specific first, without duplicates."""
    pairs = []
    if os.environ.get("CARGO") or os.environ.get("RUSTC"):
        pairs.append(
            (
                os.environ.get("CARGO") or shutil.which("cargo") or "cargo",
                os.environ.get("RUSTC") or shutil.which("rustc") or "rustc",
            )
        )
    on_path = (shutil.which("cargo"), shutil.which("rustc"))
    if on_path[0] and on_path[1]:
        pairs.append((on_path[0], on_path[1]))
    if Path("/usr/bin/cargo").exists() and Path("/usr/bin/rustc").exists():
        pairs.append(("/usr/bin/cargo", "/usr/bin/rustc"))
    return list(dict.fromkeys(pairs))


def _has_wasm_std(rustc: str) -> bool:
    probe = _run([rustc, "--print", "target-libdir", "--target", TARGET])
    libdir = Path(probe.stdout.strip()) if probe.returncode == 0 else None
    return libdir is not None and libdir.is_dir() and any(libdir.glob("libcore-*"))


def find_toolchain(wasm: bool) -> tuple[str, str] | str:
    """The (cargo, rustc) to use, or a message saying what was tried and what to install."""
    tried = []
    for cargo, rustc in _candidates():
        if _run([cargo, "--version"]).returncode != 0:
            tried.append(f"{cargo}: cannot run")
        elif wasm and not _has_wasm_std(rustc):
            tried.append(f"{rustc}: no {TARGET} standard library")
        else:
            return cargo, rustc
    return (
        f"no Rust toolchain here can build for {TARGET} "
        f"(tried: {'; '.join(tried) or 'no cargo and rustc found'}).\nInstall one: {INSTALL}"
    )


def cargo(args: list[str], wasm: bool) -> int:
    """Run ``cargo ARGS --offline`` with a working toolchain; returns the exit code."""
    found = find_toolchain(wasm)
    if isinstance(found, str):
        print(f"error: {found}", file=sys.stderr)
        return 1
    cargo_bin, rustc = found
    env = {**os.environ, "RUSTC": rustc}
    cmd = [cargo_bin, *args, "--offline"]
    res = _run(cmd, env)
    lock = HERE / "Cargo.lock"
    if res.returncode != 0 and "lock file" in res.stderr and lock.exists():
        print(f"note: {lock.name} was written by a newer cargo; removing it", file=sys.stderr)
        lock.unlink()
        res = _run(cmd, env)
    sys.stderr.write(res.stderr)
    sys.stderr.flush()
    sys.stdout.write(res.stdout)
    return res.returncode


def main(argv: list[str]) -> int:
    """Command-line entry point."""
    if argv[:1] == ["--check"]:
        found = find_toolchain(wasm=True)
        print(found if isinstance(found, str) else f"cargo {found[0]}, rustc {found[1]}")
        return 1 if isinstance(found, str) else 0
    if argv[:1] == ["test"]:
        return cargo(["test", *argv[1:]], wasm=False)
    if argv:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    code = cargo(["build", "--release", "--target", TARGET], wasm=True)
    if code == 0:
        built = HERE / "target" / TARGET / "release"
        for wasm in sorted(built.glob("*.wasm")):
            print(f"built {wasm.relative_to(HERE)} ({wasm.stat().st_size} bytes)")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
