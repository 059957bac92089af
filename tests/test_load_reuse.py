"""Issue 14: what a load of a module the Host has seen before reuses, and what it still checks.

The Linker pool and the import-check memo are attacked in tests/security/test_sec_shared_linker.py;
here the WAT translation kept by the loader.
"""

from __future__ import annotations

import pytest

import plugsafe
from plugsafe import Policy

from wat import ECHO


def test_wat_text_is_translated_once_and_still_checked_per_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from plugsafe import _loader

    calls: list[int] = []
    real = _loader.to_wasm

    def counting(data: bytes, what: str, max_size: int) -> tuple[bytes, str]:
        calls.append(len(data))
        return real(data, what, max_size)  # type: ignore[return-value]

    monkeypatch.setattr(_loader, "to_wasm", counting)
    text = ECHO.encode()
    with plugsafe.Host() as host:
        for _ in range(3):
            p = host.load(text)
            assert p.call("echo", b"hi") == b"hi"
            p.close()
        assert len(calls) == 1
        # The cached translation never lets a module past a smaller policy's size cap.
        with pytest.raises(plugsafe.InvalidModuleError, match="max_module_size"):
            host.load(text, policy=Policy(max_module_size=100))
        # Changed text is translated afresh.
        q = host.load(text + b"\n")
        assert q.call("echo", b"x") == b"x"
        q.close()
        assert len(calls) >= 2
