"""Public classes live at ``plugsafe``: their ``__module__`` and resolved annotations.

Every public class is documented, printed and pickled as ``plugsafe.X``, its public home, not
the private module it happens to be defined in (``plugsafe._plugin.Plugin``). typing resolves a
class's string annotations in the namespace of its ``__module__``, so they are resolved first,
in their own module (``typing.get_type_hints(plugsafe.Policy)`` keeps working).

``plugsafe/__init__.py`` rehomes the classes it imports; a module it imports only when one of
its names is first used (``PluginPool``, issue 14: cold start) rehomes its own at its end, so the
class is ``plugsafe.X`` however it was reached first.
"""

from __future__ import annotations

import typing

__all__ = ["rehome"]


def rehome(*objs: object) -> None:
    """Make each class in ``objs`` ``plugsafe.<name>``; anything else is left alone."""
    for obj in objs:
        if isinstance(obj, type) and obj.__module__ != "plugsafe":
            # The class's own annotations (what inspect.get_annotations returns for a class; every
            # plugsafe module has ``from __future__ import annotations``, so they are in its
            # namespace, as strings): inspect is not imported for this (issue 14: cold start).
            own = vars(obj).get("__annotations__", {})
            if own:
                hints = typing.get_type_hints(obj, include_extras=True)
                obj.__annotations__ = {k: hints[k] for k in own}
            obj.__module__ = "plugsafe"
