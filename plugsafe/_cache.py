"""An on-disk cache of compiled modules, so a fresh process skips the compiler.

Deserializing a compiled artifact runs native code that wasmtime produced, so a crafted artifact
can take over the process. This cache therefore only ever deserializes entries it wrote itself:

- the directory must be owned by the current user and not writable by anyone else (it is created
  with mode 0700); otherwise the cache is not used at all, with one warning;
- an entry is named by a key over the module's sha256, the wasmtime version, the engine settings
  and the plugsafe version, and it carries the sha256 of its contents (the artifact and the
  module's import/export description) *and of its key*, checked before use: an entry moved
  under another module's name (a swapped or copied file) is corrupt, never that module's code
  (attack13: two modules of the same shape passed every other check with each other's entry);
- an entry that is corrupt (wrong header, wrong digest, or refused by wasmtime) is deleted and the
  module is compiled again. Entries are written to a temporary file and renamed into place, so a
  crash never leaves half an entry.

What this cannot protect against is another process running as the same user that writes a
well-formed entry on purpose: anything that can do that can already run code as that user. What
such an entry *says* is still checked by its readers, because believing it is how a lie would
turn into a crash rather than into code that process chose to run: the loader reads the
description with a bounded reader and compares it with the artifact's types as wasmtime reports
them (``_runtime.load_description``, ``check_description``), and what the entry says of the
binary (its counts, its largest body, its memories) with the binary being loaded, whose sha256
named the entry (``_wasmshape.measure``, section headers only), and a component's entry's fuel
for its data segments with the count read again from the binary (``_component``); an entry that
fails is corrupt.
An anomaly, not a plausible attack (the writer could run code already), but a lie must become a
cache miss, never a wrong decision (cache11).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import warnings
from pathlib import Path

from . import _sha as hashlib  # hashlib.sha256 without OpenSSL at start-up (see _sha)
from ._lazymodule import import_now

__all__ = ["ArtifactCache", "default_cache_dir", "digest"]

# v2: after the digest, a 4-byte length and the module's description, then the artifact.
# v3: the digest covers the entry's key as well (:func:`digest`).
_MAGIC = b"plugsafe-artifact-v3\n"
_DIGEST = 32
_LENGTH = 4


def digest(key: str, body: bytes) -> bytes:
    """The sha256 an entry stored under ``key`` carries for ``body``: over the key too, so the
    entry is intact under that name only."""
    return hashlib.sha256(key.encode() + b"\0" + body).digest()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/plugsafe`` (``~/.cache/plugsafe`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "plugsafe"


class CacheShelf:
    """The artifact caches of one directory, one per salt, made on first use.

    Modules and components keep their entries under salts of their own (what the entries hold
    and which engine compiled them), so neither ever reads the other's. Safe from many threads.
    """

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._by_salt: dict[str, ArtifactCache] = {}

    def get(self, salt: str) -> ArtifactCache | None:
        """The cache for ``salt``; None when there is no directory (no disk cache at all)."""
        if self.directory is None:
            return None
        with self._lock:
            cache = self._by_salt.get(salt)
            if cache is None:
                cache = self._by_salt[salt] = ArtifactCache(self.directory, salt=salt)
            return cache


class ArtifactCache:
    """Compiled-module artifacts on disk, keyed by module hash and everything that shapes code."""

    def __init__(self, directory: str | os.PathLike[str], *, salt: str) -> None:
        self.directory = Path(directory)
        self._salt = salt.encode()
        self.usable = self._prepare()

    def _prepare(self) -> bool:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = self.directory.stat()
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
            warnings.warn(f"plugsafe: not caching compiled plugins: {exc}", stacklevel=3)
            return False
        owner_ok = not hasattr(os, "getuid") or st.st_uid == os.getuid()
        if not owner_ok or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            warnings.warn(
                f"plugsafe: not caching compiled plugins in {self.directory}: it must be owned "
                "by this user and writable by no one else (mode 0700)",
                stacklevel=3,
            )
            return False
        return True

    def key(self, wasm_digest: bytes) -> str:
        """The entry name for a module with sha256 ``wasm_digest``."""
        return hashlib.sha256(self._salt + b"\0" + wasm_digest).hexdigest()

    def get(self, key: str) -> tuple[bytes, bytes] | None:
        """(description, artifact) stored under ``key`` if intact; None (entry removed) else."""
        if not self.usable:
            return None
        path = self.directory / key
        try:
            data = path.read_bytes()
        except OSError:
            return None
        header = len(_MAGIC) + _DIGEST
        body = data[header:]
        if (
            not data.startswith(_MAGIC)
            or len(body) <= _LENGTH
            or digest(key, body) != data[len(_MAGIC) : header]
        ):
            self.discard(key)
            return None
        split = _LENGTH + int.from_bytes(body[:_LENGTH], "little")
        if split >= len(body):
            self.discard(key)
            return None
        return body[_LENGTH:split], body[split:]

    def put(self, key: str, artifact: bytes, description: bytes) -> None:
        """Store an entry under ``key`` atomically; failures only cost a later recompile."""
        if not self.usable:
            return
        body = len(description).to_bytes(_LENGTH, "little") + description + artifact
        sealed = digest(key, body)
        # Imported here (issue 14): only a compile writes an entry, and tempfile (with random,
        # shutil, bz2, lzma) is a few milliseconds of every process's cold start. Never half
        # done across a fork (_lazymodule).
        tempfile = import_now("tempfile")

        try:
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(_MAGIC + sealed + body)
                os.replace(tmp, self.directory / key)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            warnings.warn(f"plugsafe: could not write to the plugin cache: {exc}", stacklevel=2)

    def discard(self, key: str) -> None:
        """Remove an entry (a corrupt one, or one wasmtime refused)."""
        with contextlib.suppress(OSError):
            (self.directory / key).unlink()
