"""``CallInfo``: what ``plugsafe.current_call()`` returns (issue 14: cold start).

Only a host function that asks which call it serves needs this class: ``plugsafe/__init__.py``
and ``_plugin`` import this module on first use, so a cold start does not make the dataclass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._plugin import Plugin
from ._public import rehome

if TYPE_CHECKING:
    from dataclasses import dataclass
else:  # plugsafe's own, without importing dataclasses (see _dataclass_code)
    from ._dataclass_code import dataclass

__all__ = ["CallInfo"]


@dataclass(frozen=True)
class CallInfo:
    """The plugin call a host function is running in: what ``plugsafe.current_call()`` returns.

    Attributes:
        plugin: the :class:`Plugin` being called.
        function: the export being called (``"(start)"`` while a start function runs,
            ``"_initialize"`` while a reactor initializes, ``"_start"`` under ``Plugin.run``).
        context: what the caller passed as ``context=`` (``None`` if nothing).
    """

    plugin: Plugin
    function: str
    context: Any = None


# Imported when CallInfo is first used: it is plugsafe.CallInfo however it is reached first.
rehome(CallInfo)
