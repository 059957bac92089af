"""Reading plugin, policy and input files under a size cap."""

from __future__ import annotations

import io
import os
from typing import IO

__all__ = ["read_capped"]


def read_capped(f: IO[bytes], limit: int) -> bytes:
    """Read all of ``f``, but never more than ``limit + 1`` bytes (so "over the cap" shows).

    The file's size is asked first: ``f.read(limit + 1)`` alone makes Python allocate the whole
    ``limit + 1`` bytes even for a tiny file (16 MiB for the default ``max_module_size``), which
    costs more than the rest of loading a cached plugin. Files that report no size (pipes) or
    grow while being read are read on up to the cap.
    """
    try:
        hint = os.fstat(f.fileno()).st_size
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        hint = 0
    data = f.read(min(hint, limit) + 1)
    if hint < len(data) <= limit:
        data += f.read(limit + 1 - len(data))
    return data
