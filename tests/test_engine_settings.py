"""Every setting of plugsafe's engines holds, now that they are configured through the C API.

The engine is made without wasmtime-py (issue 14: cold start), so nothing of wasmtime-py's
defaults or setters stands behind it any more: each setting that matters to the sandbox is
checked here by what it does, so that dropping one fails a test: refused features, fuel, epochs,
the stack limit, multi-memory, and (through compiled artifacts, which record them) fuel, epochs
and memory_may_move against an engine configured through wasmtime-py. Parallel compilation is
off for fork safety: tests/test_fork.py compiles in a forked child after its parent did. The
component model is on for component engines only: the component tests need it there.
"""

from __future__ import annotations

from typing import Any

import pytest

from plugsafe import _runtime as rt
from plugsafe._runtime import _hostmem, _lib

PAGE = 65536
STACK = 512 * 1024


def _engine(*, metered: bool = False, max_stack: int = STACK) -> rt.Engine:
    return rt.Engine(metered=metered, max_stack=max_stack)


def _instance(engine: rt.Engine, wat: str, *, fuel: int | None = None, ticks: int = 1 << 40) -> Any:
    module = engine.compile(rt.wat_to_wasm(wat))
    return rt.Instance(
        engine, rt.Linker(engine), module, memory_size=4 * PAGE, memories=2,
        table_elements=100, tables=1, fuel=fuel, deadline_ticks=ticks,
    )  # fmt: skip


def _invoke(inst: Any, name: str, *args: object) -> tuple[Any, ...]:
    ref = inst.func(name)
    assert ref is not None
    return tuple(inst.invoke(ref, args))


# A loop that ends by itself after ``n`` rounds: an engine without the setting under test
# returns instead of trapping (never hangs).
COUNT = """(module (func (export "count") (param $n i32) (result i32)
  (loop $l (local.set $n (i32.sub (local.get $n) (i32.const 1)))
    (br_if $l (i32.gt_s (local.get $n) (i32.const 0))))
  (local.get $n)))"""

DEEP = """(module (func $f (export "deep") (param $n i32) (result i32)
  (if (result i32) (i32.eqz (local.get $n)) (then (i32.const 0))
    (else (i32.add (i32.const 1) (call $f (i32.sub (local.get $n) (i32.const 1))))))))"""


@pytest.mark.parametrize(
    ("feature", "wat"),
    [
        ("threads (shared memory)", "(module (memory 1 1 shared))"),
        (
            "threads (atomics on shared memory)",
            '(module (memory 1 1 shared) (func (export "f") (result i32) '
            "(i32.atomic.load (i32.const 0))))",
        ),
        ("memory64", "(module (memory i64 1))"),
        ("gc", "(module (type (struct (field i32))))"),
    ],
)
def test_features_plugsafe_turns_off_are_refused(feature: str, wat: str) -> None:
    with pytest.raises(rt.WasmFailure):
        _engine().compile(rt.wat_to_wasm(wat))


def test_multi_memory_is_on() -> None:
    inst = _instance(
        _engine(),
        '(module (memory (export "memory") 1) (memory $two 1) (func (export "f") (result i32)'
        " (i32.store $two (i32.const 8) (i32.const 42)) (i32.load $two (i32.const 8))))",
    )
    assert _invoke(inst, "f") == (42,)


def test_fuel_is_metered_on_a_metered_engine_only() -> None:
    with pytest.raises(rt.WasmFailure) as info:
        _invoke(_instance(_engine(metered=True), COUNT, fuel=10_000), "count", 1_000_000)
    assert info.value.trap_code == "OUT_OF_FUEL"
    assert _invoke(_instance(_engine(), COUNT), "count", 1_000_000) == (0,)


def test_epoch_interruption_is_on() -> None:
    # A deadline of 0 ticks has passed at once: only an engine checking epochs traps.
    with pytest.raises(rt.WasmFailure) as info:
        _invoke(_instance(_engine(), COUNT, ticks=0), "count", 10_000_000)
    assert info.value.trap_code == "INTERRUPT"


def test_the_wasm_stack_is_limited_to_max_stack() -> None:
    # 2,000 frames fit in 512 KiB and not in 16 KiB.
    assert _invoke(_instance(_engine(max_stack=STACK), DEEP), "deep", 2_000) == (2_000,)
    with pytest.raises(rt.WasmFailure) as info:
        _invoke(_instance(_engine(max_stack=16 << 10), DEEP), "deep", 2_000)
    assert info.value.trap_code == "STACK_OVERFLOW"


def _reference(metered: bool) -> Any:
    """An engine configured as plugsafe's were through wasmtime-py, written out independently."""
    import wasmtime

    cfg = wasmtime.Config()
    cfg.consume_fuel = metered
    cfg.epoch_interruption = True
    cfg.max_wasm_stack = STACK
    cfg.wasm_threads = False
    cfg.shared_memory = False
    cfg.wasm_memory64 = False
    cfg.wasm_gc = False
    cfg.wasm_component_model = False
    cfg.wasm_multi_memory = True
    cfg.memory_may_move = False
    cfg.parallel_compilation = False
    return wasmtime.Engine(cfg)


@pytest.mark.parametrize("metered", [False, True])
def test_artifacts_match_an_engine_configured_through_wasmtime_py(metered: bool) -> None:
    # wasmtime records what changes compiled code (fuel, epochs, memory_may_move and the other
    # tunables, features) in an artifact and refuses one made with other settings: a setting
    # lost on the way to the C API fails here, both ways round.
    import wasmtime

    wasm = rt.wat_to_wasm(COUNT)
    ours = rt.Engine(metered=metered, max_stack=STACK)
    reference = _reference(metered)
    wasmtime.Module.deserialize(reference, ours.compile(wasm).serialize())
    artifact = bytes(wasmtime.Module(reference, wasm).serialize())
    inst = rt.Instance(
        ours, rt.Linker(ours), ours.deserialize(artifact, rt.describe_binary(wasm)),
        memory_size=PAGE, memories=1, table_elements=10, tables=1,
        fuel=10_000 if metered else None, deadline_ticks=1 << 40,
    )  # fmt: skip
    assert _invoke(inst, "count", 5) == (0,)
    other = _reference(not metered)
    with pytest.raises(wasmtime.WasmtimeError):
        wasmtime.Module.deserialize(other, ours.compile(wasm).serialize())


def test_memory_never_moves() -> None:
    # Growing keeps the memory where it is (the Instance keeps a window on it): what
    # memory_may_move off guarantees (the artifact test above checks the setting itself).
    inst = _instance(
        _engine(),
        '(module (memory (export "memory") 1 1000) (func (export "grow") (param i32) (result i32)'
        " (memory.grow (local.get 0))))",
    )
    base = _lib.lib.wasmtime_memory_data(inst._ctx, inst.memory)
    assert _invoke(inst, "grow", 3) == (1,)
    assert _lib.lib.wasmtime_memory_data(inst._ctx, inst.memory) == base


def test_the_cache_key_settings_are_unchanged() -> None:
    assert _engine(metered=True, max_stack=STACK).settings == (
        f"fuel=True;stack={STACK};epoch;nothreads;no64;nogc;multimem;nomove"
    )
    pooled = rt.Engine(
        metered=False, max_stack=STACK, pooling=rt.PoolLimits(4, 2 * PAGE, 1, 1, 100, PAGE)
    )
    assert pooled.settings == (
        f"fuel=False;stack={STACK};epoch;nothreads;no64;nogc;multimem;nomove"
        f";pool=4,{2 * PAGE},1,1,100"
    )
    components = rt.Engine(metered=True, max_stack=STACK, components=True)
    assert components.settings == (
        f"fuel=True;stack={STACK};epoch;nothreads;no64;nogc;multimem;nomove;components"
        + (";hostmem" if _hostmem.AVAILABLE else "")
    )
    # Its engine is wasmtime-py's (the component API takes nothing else), made from the same
    # settings: a core module compiled on it runs metered, as on a core engine.
    assert components._engine is not None and components.address
    with pytest.raises(rt.WasmFailure) as info:
        _invoke(_instance(components, COUNT, fuel=10_000), "count", 1_000_000)
    assert info.value.trap_code == "OUT_OF_FUEL"


def test_wat_to_wasm_reports_wasmtime_s_message() -> None:
    assert rt.wat_to_wasm("(module)") == b"\0asm\x01\0\0\0"
    with pytest.raises(rt.WasmFailure, match="expected"):
        rt.wat_to_wasm("(module (func (result i32) i32.const)")


def test_compile_takes_text_as_wasmtime_py_did() -> None:
    inst = _instance(_engine(), COUNT)  # (through wat_to_wasm)
    module = _engine().compile(b'(module (func (export "f") (result i32) i32.const 7))')
    assert "f" in module.exports and _invoke(inst, "count", 3) == (0,)


def test_a_compile_error_is_a_wasm_failure_with_wasmtime_s_message() -> None:
    with pytest.raises(rt.WasmFailure, match="magic header"):
        _engine().compile(b"\0not wasm")
