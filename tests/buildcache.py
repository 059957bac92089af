"""Slow guest builds kept between test runs, keyed by everything that goes into them.

A componentize-py build takes one to two minutes and the Rust examples' release build half a
minute: run on every test run they were most of the suite's time. ``cached`` keeps a build's
output under ``~/.cache/plugsafe-tests`` (``PLUGSAFE_TEST_CACHE``) named by a digest of its
inputs (the files' contents and relative paths, the build script, the tool's version), so
that the same sources with the same tools build once per machine: what a test then checks
is the output those very inputs give. Any change to an input is another name, a new build.
``PLUGSAFE_TEST_REBUILD=1`` builds everything again (and replaces what was kept).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["CACHE", "REBUILD_ENV", "cached", "digest", "tool_version"]

CACHE = Path(os.environ.get("PLUGSAFE_TEST_CACHE", Path.home() / ".cache" / "plugsafe-tests"))
REBUILD_ENV = "PLUGSAFE_TEST_REBUILD"

# What a build leaves in its sources, or a test run does: never an input.
_NOT_INPUTS = frozenset({"target", "__pycache__", ".plugsafe-cache", ".pytest_cache"})


def _files(path: Path) -> Iterable[tuple[str, Path]]:
    if path.is_file():
        yield path.name, path
        return
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path)
        if f.is_file() and not _NOT_INPUTS.intersection(rel.parts) and f.suffix != ".wasm":
            yield f"{path.name}/{rel.as_posix()}", f


def digest(inputs: Iterable[Path], *extra: str) -> str:
    """A digest of the files ``inputs`` name (a directory: every file below it but build
    outputs) by their contents and relative paths, and of the strings ``extra`` (the tools'
    versions, the build's arguments)."""
    h = hashlib.sha256()
    for text in extra:
        h.update(text.encode() + b"\0")
    for path in inputs:
        for name, f in _files(path):
            h.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def tool_version(*cmd: str) -> str:
    """What ``cmd`` prints (a tool's ``--version``), part of a build's key."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    return (done.stdout + done.stderr).strip()


def cached(name: str, key: str, build: Callable[[Path], None], suffix: str = "") -> Path:
    """The file or directory ``build(path)`` makes at ``path``, kept as
    ``CACHE/name-key<suffix>``:
    built only when it is not kept yet (or ``PLUGSAFE_TEST_REBUILD=1``). A failed build keeps
    nothing; two runs building at once each build, and one's result stays."""
    CACHE.mkdir(parents=True, exist_ok=True, mode=0o700)
    out = CACHE / f"{name}-{key}{suffix}"
    if out.exists() and os.environ.get(REBUILD_ENV) != "1":
        return out
    tmp = CACHE / f".{out.name}.{os.getpid()}.tmp{suffix}"
    _remove(tmp)
    try:
        build(tmp)
        _remove(out)
        os.replace(tmp, out)
    finally:
        _remove(tmp)
    return out


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
