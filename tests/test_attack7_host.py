"""attack7: Host(max_stack=...) is the int it holds.

wasmtime aborts the whole process (a Rust panic) on a ``max_wasm_stack`` above its 2 MiB async
stack, so ``Host`` checks the range first, where it can still be an exception. It checked an int
subclass through the subclass's own comparisons: one that says it is in range passed with any
value, and the engine made from it killed the process (as attack6 found for Policy and
Pooling's numbers).
"""

from __future__ import annotations

import pytest

from helpers import run_ok

_SCRIPT = """
import plugsafe
class InRange(int):
    def __le__(self, other): return True
    def __ge__(self, other): return True
    def __lt__(self, other): return False
    def __gt__(self, other): return False
try:
    host = plugsafe.Host(max_stack=InRange({value}))
    host.load(b'(module (func (export "f") (result i32) i32.const 1))').invoke("f")
    print("accepted", host._max_stack, type(host._max_stack).__name__)
except ValueError as exc:
    print("refused", exc)
"""


@pytest.mark.parametrize("value", [64 << 20, 4 << 20, 1])
def test_an_int_subclass_cannot_pass_max_stacks_range_check(value: int) -> None:
    out = run_ok(_SCRIPT.format(value=value), timeout=120)
    assert out.startswith("refused max_stack must be from"), out


def test_an_int_subclass_in_range_is_kept_as_the_int_it_holds() -> None:
    assert run_ok(_SCRIPT.format(value=256 * 1024), timeout=120).strip() == "accepted 262144 int"


def test_a_pools_size_is_the_int_it_holds() -> None:
    import plugsafe

    class InRange(int):
        def __le__(self, other: object) -> bool:
            return True

        def __ge__(self, other: object) -> bool:
            return True

    with pytest.raises(ValueError, match="size must be an int from 1 to 1024"):
        plugsafe.PluginPool(b'(module (func (export "f")))', size=InRange(100_000))
    with plugsafe.PluginPool(b'(module (func (export "f")))', size=InRange(2)) as pool:
        assert len(pool._plugins) == 2
