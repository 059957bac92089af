"""Byte sizes and durations: parsing them from policy files and printing them for people."""

from __future__ import annotations

import math
from collections.abc import Mapping

# fmt_bytes lives with the errors (their messages need it); re-exported here for the CLI.
from ._errors import PolicyError, fmt_bytes, int_text
from ._lazymodule import import_now
from ._lazyre import lazy_re

__all__ = [
    "GiB",
    "KiB",
    "MiB",
    "describe",
    "fail",
    "fmt_bytes",
    "fmt_duration",
    "parse_duration",
    "parse_size",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
}
# Exact decimal strings: Decimal itself is imported only when a string is parsed (issue 14:
# decimal costs every host ~2 ms at start-up, and only policy files and unit strings need it).
_DURATION_UNITS = {
    "": "1",
    "s": "1",
    "us": "0.000001",
    "µs": "0.000001",
    "ms": "0.001",
    "m": "60",
    "min": "60",
    "h": "3600",
}
# At most 30 digits before the point: enough for any real limit, and it keeps Decimal and int
# conversions cheap whatever a file holds.
_QUANTITY = lazy_re(r"^\s*(\d{1,30}(?:\.\d{0,30})?|\.\d{1,30})\s*([A-Za-zµ]*)\s*$")
# Durations may also carry an exponent ("1e-06s"): how Policy.to_dict writes a float such as
# 1e-06 exactly. Three digits of exponent at most, so Decimal's work stays trivial.
_DURATION = lazy_re(
    r"^\s*(\d{1,30}(?:\.\d{0,30})?(?:[eE][-+]?\d{1,3})?|\.\d{1,30}(?:[eE][-+]?\d{1,3})?)"
    r"\s*([A-Za-zµ]*)\s*$"
)

_SIZE_EXPECTED = 'a size: bytes as an integer >= 0, or a string like "64MiB", "512KiB", "4096B"'
_DURATION_EXPECTED = 'a duration > 0: seconds as a number, or a string like "250ms", "1.5s", "2m"'


def describe(value: object) -> str:
    """Say what ``value`` is, in TOML's words, short enough for an error message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        text = int_text(value)
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, str):
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        # The value came from a file someone else may have written: keep it on one line.
        text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
    elif isinstance(value, Mapping):
        return "a table"
    elif isinstance(value, (list, tuple, set, frozenset)):
        return "an array"
    else:
        return f"a {type(value).__name__} value"
    return text if len(text) <= 60 else text[:57] + "..."


def fail(path: str, expected: str, value: object, field: str | None = None) -> PolicyError:
    """A PolicyError saying what ``path`` expected and what it got."""
    return PolicyError(
        f"{path}: expected {expected}, got {describe(value)}", field=field, path=path
    )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_size(value: object, path: str, field: str | None = None) -> int:
    """Bytes from an integer or a string with a unit (``"64MiB"``, ``"1.5KiB"``, ``"100kB"``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise fail(path, _SIZE_EXPECTED, value, field)
        return value
    if isinstance(value, str):
        m = _QUANTITY.match(value)
        unit = _SIZE_UNITS.get(m.group(2).lower()) if m else None
        if m is not None and unit is not None:
            Decimal = import_now("decimal").Decimal  # never half done across a fork

            n = Decimal(m.group(1)) * unit
            if n == n.to_integral_value():
                return int(n)
            raise PolicyError(
                f"{path}: {describe(value)} is not a whole number of bytes", field=field, path=path
            )
        raise PolicyError(
            f"{path}: expected {_SIZE_EXPECTED} (units: B, KiB, MiB, GiB, kB, MB, GB), "
            f"got {describe(value)}",
            field=field,
            path=path,
        )
    raise fail(path, _SIZE_EXPECTED, value, field)


def parse_duration(
    value: object, path: str, field: str | None = None, *, unit_required: bool = False
) -> float:
    """Seconds from a number or a string with a unit (``"250ms"``, ``"1.5s"``, ``"2m"``).

    With ``unit_required`` (policy files, host config files, the command line, and strings in
    ``Policy(...)``), a bare number (``250``, ``"0.5"``) is refused with a message asking for a
    unit: ``timeout = 250`` meant as milliseconds would otherwise wait four minutes.
    """
    seconds: float | None = None
    if unit_required:
        bare = _is_number(value)
        if isinstance(value, str):
            m = _DURATION.match(value)
            bare = m is not None and not m.group(2)
        if bare:
            number = describe(value).strip('"').strip()
            raise PolicyError(
                f"{path}: {describe(value)} has no unit; write the unit, e.g. "
                f'"{number}s" for seconds or "{number}ms" for milliseconds '
                "(units: us, ms, s, m, h)",
                field=field,
                path=path,
            )
    if _is_number(value):
        seconds = float(value)  # type: ignore[arg-type]
    elif isinstance(value, str):
        m = _DURATION.match(value)
        unit = _DURATION_UNITS.get(m.group(2).lower()) if m else None
        if m is None or unit is None:
            raise PolicyError(
                f"{path}: expected {_DURATION_EXPECTED} (units: us, ms, s, m, h), "
                f"got {describe(value)}",
                field=field,
                path=path,
            )
        Decimal = import_now("decimal").Decimal  # never half done across a fork

        seconds = float(Decimal(m.group(1)) * Decimal(unit))
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise fail(path, _DURATION_EXPECTED, value, field)
    return seconds


def fmt_duration(seconds: float) -> str:
    """``seconds`` as a duration string that :func:`parse_duration` reads back exactly.

    The shortest spelling that round-trips (``"0.25s"``, ``"2s"``, ``"1e-06s"``), always with
    its unit, so that what ``Policy.to_dict`` writes is a valid policy file.
    """
    text = f"{seconds:g}"
    if float(text) != seconds:
        text = repr(seconds)
    return text + "s"
