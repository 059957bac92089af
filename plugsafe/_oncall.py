"""``Host(on_call=...)``: every call of a plugin the Host loaded, reported when it ends.

One way for module plugins (``Plugin``, and through them pools) and components: the stats of
the call the plugin recorded for this thread, or, for a call refused before it ran (bad
input, an unknown export, closed), its duration and its error alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from ._log import lazy_logger
from ._types import CallStats

__all__ = ["OnCall", "reported"]

T = TypeVar("T")
# Host(on_call=...): called with the CallStats of every call.
OnCall = Callable[[CallStats], object]
_perf_counter = time.perf_counter
_log = lazy_logger("plugsafe")


def reported(
    on_call: OnCall,
    plugin: str,
    function: str,
    context: Any,
    op: Callable[[], T],
    last: Callable[[], object],
    stats: Callable[[Any, type[BaseException] | None, Any], CallStats],
) -> T:
    """Run the call ``op`` and report it to ``on_call``. ``last()`` reads what the plugin
    recorded of this thread's last call (None: nothing yet), ``stats(last, error, context)``
    makes its CallStats: a record that did not change means the call never ran."""
    before = last()
    start = _perf_counter()
    error: type[BaseException] | None = None
    try:
        return op()
    except BaseException as exc:
        error = type(exc)
        raise
    finally:
        try:
            after = last()
            if after is None or after is before or after == before:
                # Refused before it ran (bad input, an unknown export, closed, ...).
                report = CallStats(
                    None, _perf_counter() - start, 0, 0, plugin, function, error, context
                )
            else:
                report = stats(after, error, context)
            on_call(report)
        except Exception:
            # A metrics callback must never change what the call returns or raises.
            _log.exception(
                "the on_call callback failed after a call of plugin %r (%s); ignored",
                plugin,
                function,
            )
