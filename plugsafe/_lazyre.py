"""Regular expressions compiled when first used, not at ``import plugsafe``.

Issue 14 (cold start): plugsafe's modules defined about twenty patterns at their top, and
compiling one runs ``re``'s parser and compiler in Python (about 5 % of a fresh process's
``import plugsafe``), mostly for patterns only rare paths use (policy files, components, typo
messages). :func:`lazy_re` returns a stand-in that compiles on first use and then keeps the
compiled pattern's methods and attributes on itself, so every later use is one attribute lookup
away from the real ``re.Pattern`` method, as before.
"""

from __future__ import annotations

import re
from typing import Any, cast, overload

__all__ = ["lazy_re"]

# Everything a re.Pattern offers (kept on the stand-in once compiled).
_ATTRS = (
    "findall",
    "finditer",
    "flags",
    "fullmatch",
    "groupindex",
    "groups",
    "match",
    "pattern",
    "scanner",
    "search",
    "split",
    "sub",
    "subn",
)


class _LazyPattern:
    def __init__(self, pattern: str | bytes, flags: int) -> None:
        self._source: tuple[Any, int] = (pattern, flags)

    def __getattr__(self, attr: str) -> Any:
        # Only for attributes the instance does not have yet: all of a Pattern's, until now.
        if attr.startswith("__"):  # copy, pickle and friends probing
            raise AttributeError(attr)
        compiled = re.compile(*self._source)
        # Two threads may both get here: each compiles the same pattern (re caches it) and
        # stores equal attributes; nothing half-made is ever seen.
        for name in _ATTRS:
            self.__dict__[name] = getattr(compiled, name)
        return getattr(compiled, attr)

    def __repr__(self) -> str:
        return f"lazy_re({self._source[0]!r})"


@overload
def lazy_re(pattern: str, flags: int = 0) -> re.Pattern[str]: ...
@overload
def lazy_re(pattern: bytes, flags: int = 0) -> re.Pattern[bytes]: ...
def lazy_re(pattern: str | bytes, flags: int = 0) -> re.Pattern[Any]:
    """``re.compile(pattern, flags)``, compiled when the pattern is first used."""
    return cast("re.Pattern[Any]", _LazyPattern(pattern, flags))
