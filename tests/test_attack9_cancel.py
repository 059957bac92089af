"""attack9: cancelling an async call stops it, whenever the cancel lands.

An async call marks itself running (``CallToken.begin``) and only then arms its deadline
(``Instance.invoke``/``abi_call``). A cancel landing between the two interrupted the call
(its instance's arming made minus infinity, the engine's epoch pushed past the deadline), and
the arming then overwrote the interrupt with a fresh deadline: the cancelled call ran for its
whole timeout, holding the plugin (seen as a later synchronous call's ``DeadlineExceeded``,
"all of it spent waiting for the plugin", after ``asyncio.wait_for`` timeouts under load).
Here the cancel is made to land exactly there, every time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

import plugsafe
from plugsafe import _callpath

from wat import ECHO

TIMEOUT = 4.0
# Well under the timeout: an interrupted call stops in milliseconds (a shared machine: slack).
PROMPT = 2.0


@pytest.fixture
def cancel_right_after_begin(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Every CallToken is cancelled (from another thread, as asyncio's would be) as soon as
    its call has marked itself running, before that call arms its deadline."""
    begin = _callpath.CallToken.begin
    cancelled: list[int] = []

    def begin_then_cancel(
        self: _callpath.CallToken, path: _callpath.CallPath, inst: object
    ) -> None:
        begin(self, path, inst)  # type: ignore[arg-type]
        canceller = threading.Thread(target=self.cancel)
        canceller.start()
        canceller.join()
        cancelled.append(1)

    monkeypatch.setattr(_callpath.CallToken, "begin", begin_then_cancel)
    yield cancelled


@pytest.mark.parametrize("how", ["invoke", "call"])
def test_a_cancel_landing_before_the_deadline_is_armed_still_stops_the_call(
    cancel_right_after_begin: list[int], how: str
) -> None:
    spin = ECHO.replace(
        '(func (export "spin") (loop $l (br $l)))',
        '(func (export "spin") (loop $l (br $l)))'
        ' (func (export "spin_abi") (param i32 i32) (result i64) (loop $l (br $l)) (i64.const 0))',
    )
    with plugsafe.Host() as host:
        plugin = host.load(spin.encode(), policy=plugsafe.Policy(timeout=TIMEOUT))
        assert plugin.invoke("add", 1, 2) == 3
        call = plugin.invoke_async("spin") if how == "invoke" else plugin.call_async("spin_abi")
        began = time.monotonic()
        with pytest.raises(plugsafe.DeadlineExceeded):
            asyncio.run(call)  # type: ignore[arg-type]
        took = time.monotonic() - began
        assert cancel_right_after_begin == [1]
        assert took < PROMPT, f"the cancelled call ran {took:.2f} s of its {TIMEOUT} s timeout"
        # And the plugin is free again at once, for the next caller.
        began = time.monotonic()
        assert plugin.invoke("add", 2, 3) == 5
        assert time.monotonic() - began < PROMPT
