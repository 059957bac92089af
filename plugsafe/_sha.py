"""SHA-256 without loading OpenSSL for the first few hashes of a process.

Issue 14 (cold start): ``import hashlib`` loads OpenSSL's ``libcrypto`` and initialises it,
about 3 % of a fresh process's ``import plugsafe``, while a cold start hashes a few kilobytes
(the plugin's bytes, the cache entry). CPython's own SHA-256 (``_sha2``; ``_sha256`` before
3.12) needs nothing loaded but is several times slower per byte, so it hashes only the first
``_BUDGET`` bytes of the process (about what importing hashlib costs in time); after that, or
when the app imported hashlib itself, every hash is OpenSSL's. The digests are the same
(SHA-256 is SHA-256): only who computes them changes. A process that hashes a lot pays at most
about the import twice over; one that hashes little never loads OpenSSL.

Used as ``from . import _sha as hashlib`` by the modules that only ever call
``hashlib.sha256(data)`` once per digest (no ``update``).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Protocol

from ._lazymodule import import_now

__all__ = ["sha256"]


if TYPE_CHECKING:  # typing only (issue 14: a Protocol class costs ~0.4 M instructions to make)

    class Hash(Protocol):
        """What plugsafe uses of a hash object (hashlib's and the built-in's alike)."""

        def digest(self) -> bytes: ...

        def hexdigest(self) -> str: ...


def _builtin() -> Any:
    for name in ("_sha2", "_sha256"):  # CPython 3.12+, then 3.10-3.11
        try:
            return import_now(name).sha256
        except (ImportError, AttributeError):
            continue
    return None  # pragma: no cover - a Python built without them: hashlib from the start


_BUILTIN = _builtin()
# Bytes the built-in may hash in this process before OpenSSL is loaded: at its 150-300 MB/s,
# about 1-2 ms of hashing, roughly what importing hashlib costs.
_BUDGET = 256 * 1024
_left = [_BUDGET]


def sha256(data: bytes | bytearray | memoryview) -> Hash:
    """``hashlib.sha256(data)``: the built-in's while the budget lasts, then OpenSSL's."""
    if _BUILTIN is not None and "hashlib" not in sys.modules:
        size = memoryview(data).nbytes
        # Threads may race on the counter: at worst a hash or two more by the built-in.
        if size <= _left[0]:
            _left[0] -= size
            return _BUILTIN(data)  # type: ignore[no-any-return]
    hashlib: Any = import_now("hashlib")  # never half done across a fork (_lazymodule)
    return hashlib.sha256(data)  # type: ignore[no-any-return]
