"""A shared context-manager mixin for objects that must be closed (Host, Plugin)."""

from __future__ import annotations

from types import TracebackType

from typing_extensions import Self

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
