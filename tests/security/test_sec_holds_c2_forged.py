"""Issue 12, class 2: forged results. When the code around a host function fails (not the host
function itself: the trampoline, the result encoding, the nested allocator call), the exception
must never escape into cffi/ctypes. If it does, they return "success" with whatever the result
slot held (the guest's own argument): the guest reads a value the host never produced.

Correct: any failure at the C boundary traps the guest, and the call raises a typed error.
"""

from __future__ import annotations

from child import run_child

C2 = "issue 12 class 2: "

# ``is_admin(uid)`` always answers 0. The guest's plugsafe_alloc asks is_admin(777) and then calls
# ``get`` (a bytes result, which the host places through plugsafe_alloc again), up to ``limit``
# levels deep: guest -> host -> guest allocator -> host -> ... Python's recursion limit is hit
# somewhere along that path, at a different spot for each (recursion limit, depth) pair. Any
# non-zero is_admin answer the guest saw is returned as the output: a forged result.
FORGE = """
BACKEND_NOTE = os.environ.get("PLUGSAFE_BACKEND", "default")
h = plugsafe.Host(max_stack=2 * 1024 * 1024)
@h.function
def is_admin(uid: int) -> int:
    return 0
ran = [0]
@h.function
def get() -> bytes:
    ran[0] += 1
    return b"payload"
wat = '''(module
  (import "plugsafe" "is_admin" (func $is_admin (param i64) (result i64)))
  (import "plugsafe" "get" (func $get (result i64)))
  (memory (export "memory") 1)
  (global $forged (mut i64) (i64.const 0))
  (global $depth (mut i32) (i32.const 0))
  (global $limit (mut i32) (i32.const 0))
  (func (export "plugsafe_abi_version") (result i32) i32.const 1)
  (func (export "plugsafe_alloc") (param i32) (result i32) (local $r i64)
    (global.set $depth (i32.add (global.get $depth) (i32.const 1)))
    (local.set $r (call $is_admin (i64.const 777)))
    (if (i64.ne (local.get $r) (i64.const 0)) (then (global.set $forged (local.get $r))))
    (if (i32.lt_u (global.get $depth) (global.get $limit)) (then (drop (call $get))))
    i32.const 1024)
  (func (export "probe") (param $p i32) (param $n i32) (result i64)
    (global.set $depth (i32.const 0))
    (global.set $forged (i64.const 0))
    (global.set $limit (i32.load8_u (local.get $p)))
    (drop (call $get))
    (i64.store (i32.const 0) (global.get $forged))
    (i64.const 8)))'''
p = h.load(wat.encode(), policy=plugsafe.Policy(allow={{"is_admin", "get"}}, timeout=10))
forged = []
kinds = set()
for limit in range({lo}, {hi}):
    for depth in range(1, 120, 3):
        ran[0] = 0
        sys.setrecursionlimit(limit)
        try:
            out = p.call("probe", bytes([depth]))
        except plugsafe.PlugsafeError as e:
            kinds.add("TYPED " + type(e).__name__)
            continue
        except RecursionError:
            # Before the guest ran, the app's own recursion is to blame; after, plugsafe's.
            kinds.add("UNTYPED RecursionError" if ran[0] else "app RecursionError")
            continue
        except BaseException as e:
            kinds.add("UNTYPED " + type(e).__name__)
            continue
        finally:
            sys.setrecursionlimit(10000)
        value = int.from_bytes(out, "little", signed=True)
        if value != 0:
            forged.append((limit, depth, value))
print("KINDS", sorted(kinds), flush=True)
print("FORGED", forged[:5], len(forged), flush=True)
"""


def _forge(env: dict[str, str] | None = None) -> None:
    child = run_child(FORGE.format(lo=60, hi=100), timeout=300, env=env)
    assert not child.timed_out and child.returncode == 0, child.describe()
    forged = next(ln for ln in child.lines if ln.startswith("FORGED"))
    assert forged.endswith(" 0"), child.describe()
    kinds = next(ln for ln in child.lines if ln.startswith("KINDS"))
    assert "UNTYPED" not in kinds, child.describe()
    # Nothing printed by cffi/ctypes about an exception it swallowed in a callback.
    assert "callback" not in child.stderr.lower(), child.describe()


def test_c2_recursion_limit_inside_nested_host_calls_never_forges_a_result() -> None:
    _forge()


def test_c2_recursion_limit_inside_nested_host_calls_never_forges_a_result_ctypes() -> None:
    _forge({"PLUGSAFE_BACKEND": "ctypes"})
