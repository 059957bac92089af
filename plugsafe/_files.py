"""Reading plugin, policy and input files under a size cap."""

from __future__ import annotations

import io
import os
from typing import IO

from ._errors import InvalidModuleError, PluginLoadError

__all__ = ["read_capped", "read_plugin_file"]


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


def read_plugin_file(path: str | os.PathLike[str], limit: int, *, label: str = "") -> bytes:
    """The bytes of the plugin file ``path``, refused if over ``limit`` bytes.

    Raises PluginLoadError if it cannot be read and InvalidModuleError if it is too big, with
    ``label`` (such as ``"plugin 'x': "``) at the start of either message.
    """
    shown = repr(str(path))
    try:
        with open(path, "rb") as f:
            data = read_capped(f, limit)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise PluginLoadError(f"{label}cannot read plugin file {shown}: {reason}") from exc
    if len(data) > limit:
        raise InvalidModuleError(
            f"{label}{shown} is over the policy's max_module_size of {limit} bytes"
        )
    return data
