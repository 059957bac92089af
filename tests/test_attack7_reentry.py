"""attack7: re-entering a plugin on the thread whose short-path call holds its lock, with no
Python frame of the re-entering code in between.

A short-path call holds the plugin's lock with no owner (before its first host call, or for a
plugin without imports). A call of the same plugin on that thread while it runs (from a signal
handler, or from an argument's ``__index__`` while the arguments are packed) must be refused
at once: the lock is this thread's own and waiting for it never ends. attack6 recognised such a
call by a frame of the plugin's call below the asking call's own frames, skipping every call-path
frame of the plugin on top of the stack as "the asking call's own": when the re-entering
callable is ``plugin.invoke`` itself (bound, or in a ``functools.partial``: a signal handler
``partial(plugin.invoke, "tick")``, ``signal.signal(SIG, plugin.invoke)``), no frame separates
it from the interrupted call, whose frame was skipped too: the call waited for ever (without a
timeout; with one, it ended as a ``DeadlineExceeded`` that blamed "another thread").
"""

from __future__ import annotations

import pytest

from helpers import REENTRY_PLUGIN, last_json, run_ok

_SCRIPT = (
    REENTRY_PLUGIN
    + """
how = {how!r}
outer = None
try:
    if how == "index":
        # An argument whose __index__ is the plugin's own invoke: runs while the outer call
        # packs its arguments, the lock held.
        Arg = type("Arg", (), {{"__index__": functools.partial(p.invoke, "quiet")}})
        outer = p.invoke("one", Arg())
    else:
        handler = functools.partial(p.invoke, "quiet") if how == "partial" else p.invoke
        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.005)
        outer = p.invoke("busy", 1)
    error = None
except Exception as e:
    error = [type(e).__name__, isinstance(e, plugsafe.PlugsafeError), str(e)]
signal.signal(signal.SIGALRM, signal.SIG_DFL)
after = p.invoke("quiet")
again = p.invoke("one", 5)
print(json.dumps({{"outer": outer, "error": error, "after": after, "again": again}}))
"""
)


@pytest.mark.parametrize("imports", [True, False])
@pytest.mark.parametrize("how", ["index", "partial", "bound"])
def test_reentering_through_the_plugins_own_invoke_is_refused_not_hung(
    imports: bool, how: str
) -> None:
    out = run_ok(
        _SCRIPT.format(imports=imports, how=how),
        timeout=60,
        hang="the re-entering call waited for ever for its own thread's lock",
    )
    report = last_json(out)
    # The re-entering call was refused as re-entry (typed), which ended the call it interrupted
    # (the handler's, or __index__'s, exception propagates from there) ...
    assert report["outer"] is None
    name, typed, message = report["error"]  # type: ignore[misc]
    assert (name, typed) == ("PluginCallError", True), report
    assert "re-entrant calls are not allowed" in message
    # ... and the plugin is neither locked nor owned afterwards.
    assert report["after"] == 7 and report["again"] == 5
