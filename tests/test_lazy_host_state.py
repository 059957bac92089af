"""Issue 14, goal 5: a short-path call of a plugin with imports leaves its owner, the thread's
room and current_call() to its first host call (CallPath.host_calls_begin). What host functions
see must be the same as before, whether or not earlier calls made host calls."""

from __future__ import annotations

import pytest

import plugsafe
from plugsafe import Policy, _nesting

# "maybe" calls plugsafe.probe $k times (0: none, pure wasm), then returns $k.
PROBE_WAT = """(module (import "plugsafe" "probe" (func $probe))
  (func (export "maybe") (param $k i32) (result i32) (local $i i32)
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get $k)))
      (call $probe)
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (local.get $k)))"""


def _room() -> int:
    return int(_nesting.thread_room().room)


def test_host_functions_see_the_call_after_calls_without_host_calls(
    host: plugsafe.Host,
) -> None:
    seen: list[tuple[object, object, bool, bool]] = []
    box: list[plugsafe.Plugin] = []
    outside = _room()

    @host.function
    def probe() -> None:
        info = plugsafe.current_call()
        assert info is not None
        # Re-entry from the plugin's own host function is refused, not deadlocked.
        with pytest.raises(plugsafe.PluginCallError, match="re-entrant"):
            box[0].invoke("maybe", 0)
        # The call's stack room is counted for calls nested in it.
        seen.append((info.function, info.context, _room() < outside, info.plugin is box[0]))

    p = host.load(PROBE_WAT.encode(), policy=Policy(allow={"probe"}, timeout=5.0))
    box.append(p)
    for k in (0, 0, 2, 0, 1, 0, 0, 3):  # short paths, with and without host calls
        assert p.invoke("maybe", k, context=("ctx", k)) == k
        # Everything a host call set is undone when the call ends.
        assert plugsafe.current_call() is None
        assert _room() == outside
        last = p.last_call
        assert last is not None and last.host_calls == k
    assert seen == [("maybe", ("ctx", k), True, True) for k in (2, 2, 1, 3, 3, 3)]


@pytest.mark.parametrize("quota", [0, 1, 2])
def test_quota_counts_the_first_host_call(host: plugsafe.Host, quota: int) -> None:
    @host.function
    def probe() -> None:
        return None

    p = host.load(PROBE_WAT.encode(), policy=Policy(allow={"probe"}, max_host_calls=quota))
    for _ in range(3):
        assert p.invoke("maybe", 0) == 0
        assert p.invoke("maybe", quota) == quota  # exactly the quota: allowed
        with pytest.raises(plugsafe.HostCallLimitExceeded):
            p.invoke("maybe", quota + 1)
    assert plugsafe.current_call() is None


def test_close_from_a_host_function_of_a_short_path_call(host: plugsafe.Host) -> None:
    box: list[plugsafe.Plugin] = []

    @host.function
    def probe() -> None:
        box[0].close()  # from inside its own call: completed as the call ends

    p = host.load(PROBE_WAT.encode(), policy=Policy(allow={"probe"}))
    box.append(p)
    assert p.invoke("maybe", 0) == 0
    assert p.invoke("maybe", 0) == 0  # now on the short path
    assert p.invoke("maybe", 1) == 1
    with pytest.raises(plugsafe.PluginClosedError):
        p.invoke("maybe", 0)
