"""A shared context-manager mixin for objects that must be closed (Host, Plugin)."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TYPE_CHECKING

# typing_extensions costs ~15 ms of CPU to import on 3.11 (it builds its whole backport
# namespace; on 3.10 it imports inspect, ast, dis and tokenize too), more than anything else
# plugsafe itself imports; every host would pay it at start-up for one annotation (issue 14:
# cold start). The standard library has Self since 3.11. Before, type checkers take
# typing_extensions' and the running program a TypeVar of the same meaning: annotations are
# strings here (``from __future__ import annotations``), so only typing.get_type_hints reads
# it, and there it resolves.
if sys.version_info >= (3, 11):
    from typing import Self
elif TYPE_CHECKING:
    from typing_extensions import Self
else:  # pragma: no cover - Python 3.10 at run time
    from typing import TypeVar

    Self = TypeVar("Self", bound="Closing")

__all__ = ["Closing"]


class Closing:
    """``with obj:`` calls ``obj.close()`` on exit, whatever happened inside."""

    def close(self) -> None:  # pragma: no cover - always overridden
        """Release what the object holds."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
