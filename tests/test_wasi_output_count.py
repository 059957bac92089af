"""A custom WASI output's answer reaches the guest only as a count within what it wrote.

wasmtime trusts the count a custom stdout/stderr callback returns; plugsafe's sinks always answer
the whole write, but the C callback (``_runtime._linker._write``) must not pass on anything else
if a sink ever did: more than was offered, or a negative number, becomes a count in range.
"""

from __future__ import annotations

from typing import Any

import pytest

from plugsafe import _runtime as rt

# fd_write of one 5-byte iovec to fd 1; returns the errno and stores nwritten at 100.
WRITER = """(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello")
  (func (export "write") (result i32 i32)
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 5))
    (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 100))
    (i32.load (i32.const 100))))"""


def _write_with(answer: Any) -> tuple[int, int, list[bytes]]:
    seen: list[bytes] = []

    def sink(data: bytes) -> Any:
        seen.append(data)
        return answer

    engine = rt.Engine(metered=False, max_stack=512 * 1024)
    linker = rt.Linker(engine)
    linker.define_wasi()
    cfg = rt.wasi_config(
        args=(), env={}, stdin=b"", stdout=("capture", sink), stderr=("discard", sink),
        preopens=(),
    )  # fmt: skip
    inst = rt.Instance(
        engine, linker, engine.compile(rt.wat_to_wasm(WRITER)), memory_size=65536,
        memories=1, table_elements=10, tables=1, fuel=None, deadline_ticks=1 << 40, wasi=cfg,
    )  # fmt: skip
    ref = inst.func("write")
    assert ref is not None
    errno, written = inst.invoke(ref, ())
    return errno, written, seen


@pytest.mark.parametrize("answer", [None, 5])
def test_a_sink_taking_everything_reports_it_written(answer: Any) -> None:
    assert _write_with(answer) == (0, 5, [b"hello"])


@pytest.mark.parametrize("answer", [6, 1 << 40, (1 << 63) - 1])
def test_a_sink_answering_more_than_it_was_offered_reports_at_most_the_write(answer: int) -> None:
    errno, written, seen = _write_with(answer)
    assert seen[0] == b"hello"
    assert errno == 0 and written <= 5


@pytest.mark.parametrize("answer", [-1, -(1 << 40)])
def test_a_negative_answer_is_never_a_count_past_the_write(answer: int) -> None:
    errno, written, seen = _write_with(answer)
    assert seen[0] == b"hello"
    assert errno != 0 or 0 <= written <= 5
