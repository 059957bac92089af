"""Which backend this process uses: chosen once, here, when plugsafe is imported."""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

from .._lazymodule import lazy_function
from ._backend import Backend

if TYPE_CHECKING:
    from ._ctypes import CtypesBackend
else:  # the fallback, imported only if it is used (issue 14: cold start)
    CtypesBackend = lazy_function("plugsafe._runtime._ctypes", "CtypesBackend", globals())

__all__ = ["BACKEND", "DEFAULT", "SPEEDUPS", "select_backend"]


def select_backend() -> Backend:
    """cffi unless ``PLUGSAFE_BACKEND=ctypes`` or cffi is unusable here (then warn once).

    Returning both classes as a ``Backend`` is also what makes mypy prove they implement it.
    """
    wanted = os.environ.get("PLUGSAFE_BACKEND", "").strip().lower()
    if wanted == "ctypes":
        return CtypesBackend()
    try:
        from ._cffi import CffiBackend

        return CffiBackend()
    except Exception as exc:  # layouts that do not match this wasmtime
        warnings.warn(
            f"plugsafe: using the slower ctypes call path because the cffi one is unavailable: "
            f"{exc}",
            RuntimeWarning,
            stacklevel=2,
        )
        return CtypesBackend()


DEFAULT: Backend = select_backend()
BACKEND: str = DEFAULT.name
# True if the per-call C call is the compiled one (plugsafe._speedups: built at install where a
# C compiler was found, not turned off with PLUGSAFE_SPEEDUPS=0, and the cffi backend in use).
SPEEDUPS: bool = DEFAULT.compiled
