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

import sys
import typing
from typing import Any

from . import _dataclass_code

__all__ = ["rehome", "resolve"]


def rehome(*objs: object) -> None:
    """Make each class in ``objs`` ``plugsafe.<name>``; anything else is left alone."""
    for obj in objs:
        if isinstance(obj, type) and obj.__module__ != "plugsafe":
            # The class's own annotations (what inspect.get_annotations returns for a class; every
            # plugsafe module has ``from __future__ import annotations``, so they are in its
            # namespace, as strings): inspect is not imported for this (issue 14: cold start).
            own = vars(obj).get("__annotations__", {})
            if own:
                obj.__annotations__ = resolve(obj, own)
            obj.__module__ = "plugsafe"


def resolve(cls: type, own: dict[str, Any]) -> dict[str, Any]:
    """``{k: typing.get_type_hints(cls, include_extras=True)[k] for k in own}``, cheaper.

    get_type_hints compiles every annotation string it evaluates (a ForwardRef each): about 5 M
    instructions of a cold start for plugsafe's sixty public annotations. Here a class's
    strings are evaluated as one tuple, in the same namespaces get_type_hints uses for a class
    (its module's, then the class's own, then the builtins), compiled once and then loaded from
    _dataclass_code's cache. Only when every value is one get_type_hints would keep as it is
    (no string or ForwardRef left inside, ``None`` becoming ``NoneType`` as there): anything
    else is left to get_type_hints itself.
    """
    module = sys.modules.get(cls.__module__)
    texts = list(own.values())
    if module is not None and texts and all(type(t) is str for t in texts):
        code = _dataclass_code.eval_code("(" + ",".join(f"({t})" for t in texts) + ",)")
        try:
            values = eval(code, dict(vars(cls)), vars(module))
        except Exception:
            values = None
        if values is not None and all(_kept(v) for v in values):
            return {k: type(None) if v is None else v for k, v in zip(own, values, strict=True)}
    hints = typing.get_type_hints(cls, include_extras=True)
    return {k: hints[k] for k in own}


def _kept(value: object, inside: bool = False) -> bool:
    """Whether get_type_hints leaves ``value`` (an evaluated annotation) as it is."""
    if isinstance(value, (str, tuple, typing.ForwardRef)):
        return False
    if value is None or value is Ellipsis:
        return inside or value is None
    if typing.get_origin(value) is typing.Literal:
        return True  # its strings are values, not forward references
    args = getattr(value, "__args__", None)
    if args is None:
        return isinstance(value, type) or value is typing.Any
    return isinstance(args, tuple) and all(_kept(a, True) for a in args)
