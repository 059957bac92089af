"""attack4: what issue 14 made lazy, used first from many threads at once, after a fork, and
from a signal handler; and ``_sha``'s switch from the built-in SHA-256 to OpenSSL's.

Each first use runs in a fresh interpreter (the parent has long used everything), so it really
is the first; a crash, a hang or an untyped error fails one test.
"""

from __future__ import annotations

import hashlib
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugsafe import _sha

from child import run_child

# The first uses of everything made lazy: the lazily imported public classes, a lazy pattern
# (a size with a unit), the lazy loggers (a plugin that logs), _sha (a load hashes the bytes),
# the components' runtime half (a component's Record), and a load and call.
FIRST_USES = """
LOGS = '(import "plugsafe" "log" (func $log (param i32 i32 i32)))'
LOGGER = abi_module('''
  (data (i32.const 512) "hello")
  (func (export "say") (param $p i32) (param $n i32) (result i64)
    (call $log (i32.const 2) (i32.const 512) (i32.const 5))
    (call $ok (local.get $p) (local.get $n)))''', imports=LOGS)

def first_uses(host, k):
    seen = [plugsafe.PluginPool, plugsafe.Record, plugsafe.Variant]
    policy = plugsafe.Policy(memory="1MiB", timeout="250ms", allow={"log"})
    assert policy.memory == 1 << 20
    p = host.load(LOGGER.encode(), policy=policy, name=f"lazy-{k}")
    assert p.call("say", b"x%d" % k) == b"x%d" % k
    p.close()
    rec = plugsafe.Record(a=1)
    assert rec.a == 1
    pool = plugsafe.PluginPool(LOGGER.encode(), policy, size=1, host=host, name=f"pool-{k}")
    assert pool.call("say", b"p") == b"p"
    pool.close()
    return tuple(id(x) for x in seen)
"""


def test_first_uses_from_many_threads_at_once_agree() -> None:
    child = run_child(
        FIRST_USES
        + """
host = plugsafe.Host()
barrier = threading.Barrier(12)
got = []
def worker(k):
    barrier.wait()
    got.append(outcome(first_uses, host, k))
threads = [threading.Thread(target=worker, args=(k,)) for k in range(12)]
for t in threads: t.start()
for t in threads: t.join()
assert len(set(got)) == 1, got  # every thread saw the same classes
print("DONE")
""",
        timeout=120,
    )
    child.assert_clean()
    assert child.lines[-1] == "DONE" and len(child.outcomes()) == 12, child.describe()


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
@pytest.mark.parametrize("module", ["plugsafe._pool", "decimal", "logging", "concurrent.futures"])
def test_a_fork_while_another_thread_makes_a_first_use_leaves_the_child_working(
    module: str,
) -> None:
    # Another thread is inside a lazy first use's import (held there by a finder, which runs
    # under the module's import lock) when the main thread forks: the child must not
    # inherit that lock held by a thread it does not have (it hung at its own first use).
    child = run_child(
        FIRST_USES
        + f"""
import faulthandler
inside = threading.Event()
class Hold:
    # First on sys.meta_path: asked under the module's import lock, before any finder.
    def find_spec(self, name, path=None, target=None):
        if name == {module!r} and threading.current_thread() is not main:
            inside.set()
            time.sleep(0.5)
        return None
main = threading.current_thread()
sys.meta_path.insert(0, Hold())
host = plugsafe.Host()
t = threading.Thread(target=outcome, args=(first_uses, host, 0)); t.start()
assert inside.wait(10)
pid = os.fork()
if pid == 0:
    faulthandler.dump_traceback_later(20, exit=True)  # a hang: exit code 1, with stacks
    try:
        r = first_uses(plugsafe.Host(), 99)
        os._exit(0 if r else 3)
    except BaseException as e:
        sys.stderr.write("child: %r\\n" % e)
        os._exit(4)
_, status = os.waitpid(pid, 0)
t.join()
print("CHILD", os.waitstatus_to_exitcode(status))
""",
        timeout=90,
    )
    child.assert_clean()
    assert child.lines[-1] == "CHILD 0", child.describe()


@pytest.mark.skipif(sys.platform == "win32", reason="signals")
def test_first_uses_in_a_signal_handler() -> None:
    # A handler runs between two bytecodes of the main thread, here while it sleeps.
    child = run_child(
        FIRST_USES
        + """
import signal
host = plugsafe.Host()
done = []
def handler(signum, frame):
    done.append(outcome(first_uses, host, 1))
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.05)
deadline = time.monotonic() + 30
while not done and time.monotonic() < deadline:
    time.sleep(0.01)
print("DONE", len(done))
""",
        timeout=60,
    )
    child.assert_clean()
    assert child.lines[-1] == "DONE 1", child.describe()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    sizes=st.lists(
        st.one_of(
            st.integers(0, 64),
            st.sampled_from([_sha._BUDGET - 1, _sha._BUDGET, _sha._BUDGET + 1]),
            st.integers(1, 300 * 1024),
        ),
        min_size=1,
        max_size=6,
    ),
    left=st.one_of(st.sampled_from([0, 1, _sha._BUDGET]), st.integers(0, _sha._BUDGET)),
    seed=st.binary(min_size=1, max_size=8),
    kind=st.sampled_from(["bytes", "bytearray", "memoryview"]),
)
def test_sha_gives_hashlibs_digest_on_either_side_of_the_switch(
    monkeypatch: pytest.MonkeyPatch, sizes: list[int], left: int, seed: bytes, kind: str
) -> None:
    # Which implementation hashes depends on the budget left and on whether hashlib was
    # imported: every split of a process's hashing across the switch gives the same digests.
    with monkeypatch.context() as m:
        m.delitem(sys.modules, "hashlib")  # as before the app imported it
        m.setattr(_sha, "_left", [left])
        for size in sizes:
            data = (seed * (size // len(seed) + 1))[:size]
            given_data: bytes | bytearray | memoryview = (
                data
                if kind == "bytes"
                else bytearray(data)
                if kind == "bytearray"
                else memoryview(data)
            )
            h = _sha.sha256(given_data)
            want = hashlib.sha256(data)
            assert h.digest() == want.digest()
            assert h.hexdigest() == want.hexdigest()
        assert 0 <= _sha._left[0] <= left
