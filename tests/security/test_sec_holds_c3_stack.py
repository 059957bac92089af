"""Issue 12, class 3: the native stack. Each nested plugin call (host function -> another plugin
-> ...) gets a full ``max_stack`` of wasm stack on the *same* thread, so enough nesting overflows
the thread's native stack and kills the process. Correct: nesting depth and the total wasm stack
one thread uses are bounded, and going past the bound is a typed error.
"""

from __future__ import annotations

from child import run_child

C3 = "issue 12 class 3: "

# Plugin ``i``'s ``go(depth, n)`` recurses ``n`` frames (each with 16 f64 locals), then calls host
# function ``nxt(depth)``, which calls plugin ``depth + 1`` the same way. R is chosen per child as
# 90 % of the deepest recursion one plugin survives alone, so every single call is legitimate.
NEST = """
MAX_STACK, LEVELS, THREAD_STACK = {max_stack}, {levels}, {thread_stack}
h = plugsafe.Host(max_stack=MAX_STACK)
plugins = []
R = [0]
def nxt(depth: int) -> int:
    if depth + 1 >= len(plugins):
        return depth + 1
    return plugins[depth + 1].invoke("go", depth + 1, R[0])
h.function(nxt, name="nxt")
wat = '''(module (import "plugsafe" "nxt" (func $nxt (param i64) (result i64)))
  (func $f (export "go") (param $d i64) (param $n i32) (result i64)
    (local f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64 f64)
    (if (result i64) (i32.eqz (local.get $n))
      (then (call $nxt (local.get $d)))
      (else (call $f (local.get $d) (i32.sub (local.get $n) (i32.const 1)))))))'''
pol = plugsafe.Policy(allow={{"nxt"}}, timeout=20)
one = h.load(wat.encode(), policy=pol, name="probe")
plugins.append(one)
lo, hi = 1, 1 << 20
while lo < hi:  # the deepest recursion one plugin survives on its own
    mid = (lo + hi + 1) // 2
    try:
        one.invoke("go", 0, mid)
        lo = mid
    except plugsafe.PluginTrap:
        hi = mid - 1
R[0] = lo * 9 // 10
print("DEPTH", lo, flush=True)
plugins[:] = [h.load(wat.encode(), policy=pol, name=f"p{{i}}") for i in range(LEVELS)]
def run():
    outcome(plugins[0].invoke, "go", 0, R[0])
if THREAD_STACK:
    threading.stack_size(THREAD_STACK)
    t = threading.Thread(target=run)
    t.start()
    t.join()
else:
    run()
"""

MiB = 1024 * 1024


def _nest(max_stack: int, levels: int, thread_stack: int) -> None:
    child = run_child(
        NEST.format(max_stack=max_stack, levels=levels, thread_stack=thread_stack), timeout=120
    )
    child.assert_clean()
    (out,) = child.outcomes()
    # Either every level ran (the bound allows it) or the nesting was refused with a typed error.
    assert out == f"OK {levels}" or out.startswith("TYPED"), child.describe()


def test_c3_six_nested_plugins_at_2_mib_on_an_8_mib_thread() -> None:
    _nest(2 * MiB, 6, 8 * MiB)


def test_c3_many_nested_plugins_at_the_default_stack_on_the_main_thread() -> None:
    _nest(512 * 1024, 40, 0)


def test_c3_two_nested_plugins_on_a_small_thread() -> None:
    # 2 x 512 KiB of wasm stack on a 768 KiB thread.
    _nest(512 * 1024, 2, 768 * 1024)


def test_c3_one_plugin_on_a_thread_smaller_than_max_stack() -> None:
    # A thread made with threading.stack_size(256 KiB) running one plugin allowed 2 MiB.
    _nest(2 * MiB, 1, 256 * 1024)


def test_c3_two_nested_plugins_on_the_main_thread_are_fine() -> None:
    _nest(512 * 1024, 2, 0)
