"""Hostile ABI guests built by hypothesis, run in a worker process.

Each example is a WAT module that speaks the plugsafe ABI (docs/abi.md) but answers as hypothesis
says: the result word of its function, the allocator's answers (0, out of range, the same span
every time, negative as i32, a trap, a loop, a host call of its own), the ABI version, the
arguments it passes to host functions (pointer/length pairs, ``log`` levels, numbers), how the
calls nest (guest -> host -> guest allocator -> host ...) and, now and then, the optional
``plugsafe_input_buffer`` export's answer (any 64-bit word, the edges of memory, a span over the
allocator's or at the end of memory, zero, a trap, a loop, host calls or ``memory.grow`` first,
an answer that changes with every instance, a wrong type). Every call must return or raise a
``PlugsafeError``; anything else, a crash of the worker or a hang fails with the module written
to a temp file.

The default run tries :data:`QUICK_EXAMPLES` modules; ``PLUGSAFE_FUZZ=N`` tries N.
"""

from __future__ import annotations

import base64
import itertools
import json
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import fuzz_budget
from .harness import HERE, IMPORTS, Known, Runner, classify, report

QUICK_EXAMPLES = 150
# The tag of guests whose allocator calls a host function that answers with bytes: the host
# calls the allocator for the answer, which calls the host again, and so on.
RECURSES = "allocator-recursion"
ANSWERS_WITH_BYTES = frozenset({"echo", "blob", "text", "maybe"})
# Failure classes already reported (see test_fuzz_smith.KNOWN_FAILURES for how these work).
# Empty: the allocator recursion (host -> guest allocator -> host ...) that once raised an
# untyped RecursionError (and crashed the ctypes path) is bounded since issue 12: nesting is
# counted per thread and failures at the C boundary trap the guest with a typed error.
KNOWN_FAILURES: tuple[Known, ...] = ()
FUZZ = settings(
    max_examples=fuzz_budget() or QUICK_EXAMPLES,
    deadline=None,
    # The quick run tries the same examples every time (a stable default suite); long runs
    # explore.
    derandomize=fuzz_budget() is None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PAGE = 65536

# i32 values around the edges that matter to a host reading guest pointers and lengths.
EDGES = [0, 1, 7, 1023, 1024, PAGE - 1, PAGE, PAGE + 1, 2 * PAGE, 2**31 - 1, -(2**31), -1, -2]
i32s = st.one_of(st.sampled_from(EDGES), st.integers(-(2**31), 2**31 - 1), st.integers(0, 3 * PAGE))
i64s = st.one_of(
    st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63), 2**32, 2**31]), st.integers(-(2**63), 2**63 - 1)
)
f64s = st.sampled_from(["0", "-0", "1.5", "inf", "-inf", "nan", "nan:0x1", "1e308"])

# A signature that matches none of them, for imports the host must refuse.
WRONG = "(param i32) (result i32)"


@st.composite
def host_calls(draw: st.DrawFn) -> tuple[str, str]:
    """One host call as (function, WAT instruction leaving an i64 or nothing)."""
    name = draw(st.sampled_from(sorted(IMPORTS)))
    if name == "log":
        level = draw(st.one_of(st.integers(0, 4), i32s))
        return (
            name,
            f"(call $log (i32.const {level}) (i32.const {draw(i32s)}) (i32.const {draw(i32s)}))",
        )
    if name == "blob":
        n = draw(st.one_of(st.integers(0, 2 * PAGE), i64s))
        return name, f"(call $blob (i64.const {n}))"
    if name == "num":
        a, b, c = draw(i64s), draw(f64s), draw(i32s)
        return name, f"(call $num (i64.const {a}) (f64.const {b}) (i32.const {c}))"
    # bytes/str arguments: any span, or the function's own input span (valid bytes).
    if draw(st.booleans()):
        return name, f"(call ${name} (local.get $p) (local.get $n))"
    return name, f"(call ${name} (i32.const {draw(i32s)}) (i32.const {draw(i32s)}))"


def _emit(call: tuple[str, str]) -> str:
    """A host call as a statement (its i64, if any, kept in $last)."""
    name, instr = call
    return instr if name == "log" else f"(local.set $last {instr})"


@st.composite
def allocators(draw: st.DrawFn) -> tuple[str, set[str]]:
    """The body of plugsafe_alloc(n) (a bump allocator unless it misbehaves) and its imports."""
    bump = """(local.set $q (global.get $bump))
      (local.set $end (i32.add (local.get $q) (local.get $n)))
      (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
        (then (if (i32.eq (memory.grow (i32.add (i32.shr_u (i32.sub (local.get $end)
                    (i32.mul (memory.size) (i32.const 65536))) (i32.const 16)) (i32.const 1)))
                  (i32.const -1)) (then (return (i32.const 0))))))
      (global.set $bump (local.get $end))
      (local.get $q)"""
    kind = draw(st.sampled_from(["bump", "bump", "const", "trap", "spin", "nested", "shifted"]))
    if kind == "bump":
        return bump, set()
    if kind == "const":  # the same answer every time: 0, out of range, negative, overlapping
        return f"(i32.const {draw(i32s)})", set()
    if kind == "trap":
        return "unreachable", set()
    if kind == "spin":
        return "(loop $l (br $l)) (i32.const 0)", set()
    if kind == "shifted":  # a bump answer moved by a drawn offset (past the end, or backwards)
        return f"(i32.add (block (result i32) {bump}) (i32.const {draw(i32s)}))", set()
    # nested: the allocator makes host calls of its own first (which may call it again)
    calls = draw(st.lists(host_calls(), min_size=1, max_size=2))
    body = "\n      ".join(_emit(c) for c in calls)
    return f"{body}\n      {bump}", {name for name, _ in calls}


@st.composite
def results(draw: st.DrawFn) -> str:
    """What the function returns: a drawn word, its input, or the last host call's answer."""
    kind = draw(st.sampled_from(["const", "parts", "input", "last"]))
    if kind == "const":
        return f"(i64.const {draw(i64s)})"
    if kind == "parts":  # pointer, error bit and length drawn separately
        ptr, err = draw(i32s) & 0xFFFFFFFF, draw(st.booleans())
        length = draw(st.one_of(st.integers(0, 2 * PAGE), i32s)) & 0x7FFFFFFF
        word = (ptr << 32) | (err << 31) | length
        return f"(i64.const {word - 2**64 if word >= 2**63 else word})"
    if kind == "input":
        bit = "0x80000000" if draw(st.booleans()) else "0"
        return f"""(i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
                (i64.or (i64.const {bit}) (i64.extend_i32_u (local.get $n))))"""
    return "(local.get $last)"


# Exports plugsafe calls itself, with types it must refuse to call (issue 12, class 1): each is
# type-checked before its first call, so these end in a load error or an AbiError, never a call
# through the wrong type (SIGILL, SIGABRT, or an unchecked pointer).
MISTYPED_ALLOCATORS = [
    "(param i32) (result i32 i32) i32.const 1024 i32.const 1024",
    "(param i32)",
    "(result i32) i32.const 1024",
    "(param i64) (result i32) i32.const 1024",
    "(param i32) (result i64) i64.const 1024",
    "(param i32) (result f32) f32.const 1024",
    "(param i32 i32 i32) (result i32) i32.const 1024",
    "(param i32) (result v128) v128.const i32x4 1024 0 0 0",
    "(param v128) (result i32) i32.const 1024",
]
MISTYPED_ENTRIES = [
    "(param i32)",
    "(result i32) i32.const 0",
    "(param v128)",
    "(result v128) v128.const i64x2 0 0",
]


def _word(pointer: int, capacity: int) -> int:
    """``pointer << 32 | capacity`` as the signed i64 WAT's ``i64.const`` takes."""
    word = ((pointer & 0xFFFFFFFF) << 32) | (capacity & 0xFFFFFFFF)
    return word - 2**64 if word >= 2**63 else word


# Pointers and capacities around what matters to the host placing an input: null, the
# allocator's first span (1024), the end of the first and third pages, the top of the 32 bits.
BUF_POINTERS = [0, 1, 8, 1000, 1024, PAGE - 40, PAGE - 1, PAGE, 3 * PAGE - 40, 2**31, 2**32 - 1]
BUF_CAPACITIES = [0, 1, 8, 39, 40, 41, 4096, PAGE, 2**31 - 1, 2**31, 2**32 - 1]


@st.composite
def input_buffers(draw: st.DrawFn) -> tuple[str, set[str]]:
    """The optional ``plugsafe_input_buffer`` export (docs/abi.md, "The input buffer"), or none.

    Returns its WAT and the host functions it calls.
    """
    kind = draw(
        st.sampled_from(
            ["none"] * 6
            + ["inside"] * 4
            + ["edges", "edges", "word", "grow", "calls", "counter", "trap", "spin", "mistyped"]
        )
    )
    if kind == "none":
        return "", set()
    if kind == "mistyped":  # never called (a warning at load), inputs through the allocator
        wat = draw(
            st.sampled_from(
                [
                    '(func (export "plugsafe_input_buffer") (result i32) (i32.const 1024))',
                    '(func (export "plugsafe_input_buffer") (param i32) (result i64) '
                    "(i64.const 0x40000001000))",
                    '(func (export "plugsafe_input_buffer") (result i64 i64) '
                    "(i64.const 0x40000001000) (i64.const 0))",
                    '(func (export "plugsafe_input_buffer") (result v128) '
                    "(v128.const i64x2 0x40000001000 0))",
                    '(global (export "plugsafe_input_buffer") i64 (i64.const 0x40000001000))',
                ]
            )
        )
        return wat, set()
    word = _word(draw(st.sampled_from(BUF_POINTERS)), draw(st.sampled_from(BUF_CAPACITIES)))
    if kind == "inside":  # inside a first page: used (over the allocator's spans, the output)
        capacity = draw(st.sampled_from([1, 8, 39, 40, 64]))
        pointer = draw(st.sampled_from([8, 1000, 1024, 1040, 4096, PAGE - capacity]))
        word = _word(pointer, capacity)
        kind = draw(st.sampled_from(["inside", "inside", "grow", "calls", "counter"]))
    if kind == "word":
        word = draw(i64s)
    answer = f"(i64.const {word})"
    calls: list[tuple[str, str]] = []
    if kind == "grow":  # memory grown before answering: a span only inside the grown memory
        answer = f"(drop (memory.grow (i32.const {draw(st.integers(0, 2))}))) {answer}"
    elif kind == "calls":  # host calls first (which may call the allocator, or log)
        calls = draw(st.lists(host_calls(), min_size=1, max_size=2))
        answer = "\n    ".join(_emit(c) for c in calls) + f"\n    {answer}"
    elif kind == "counter":  # a different buffer for every instance asked (and every ask)
        step = draw(st.sampled_from([8, 40, PAGE, 2**31]))
        answer = f"""(global.set $asked (i32.add (global.get $asked) (i32.const 1)))
    (i64.or (i64.const {word})
      (i64.shl (i64.extend_i32_u (i32.mul (global.get $asked) (i32.const {step})))
               (i64.const 32)))"""
    elif kind == "trap":
        answer = "unreachable"
    elif kind == "spin":
        answer = "(loop $l (br $l)) (i64.const 0)"
    wat = f"""(global $asked (mut i32) (i32.const 0))
  (func (export "plugsafe_input_buffer") (result i64)
    (local $p i32) (local $n i32) (local $last i64)
    {answer})"""
    return wat, {name for name, _ in calls}


@st.composite
def exports_plugsafe_calls(draw: st.DrawFn, alloc: str) -> tuple[str, bool]:
    """The ABI version, allocator and ``_initialize`` exports, now and then mistyped or missing.

    Returns their WAT and whether the allocator is the real (well-typed) one.
    """
    version = draw(st.sampled_from([1] * 8 + [0, 2, -1]))
    version_fn = draw(
        st.sampled_from(
            [f"(result i32) (i32.const {version})"] * 12
            + ["", "(param i32) (result i32) (i32.const 1)", "(result i64) (i64.const 1)"]
        )
    )
    wat = f'(func (export "plugsafe_abi_version") {version_fn})' if version_fn else ""
    real = draw(st.integers(0, 9)) > 0
    if real:
        wat += f"""
  (func $alloc (export "plugsafe_alloc") (param $n i32) (result i32)
      (local $q i32) (local $end i32) (local $p i32) (local $last i64)
      {alloc})"""
    else:
        wat += f'\n  (func (export "plugsafe_alloc") {draw(st.sampled_from(MISTYPED_ALLOCATORS))})'
    if draw(st.integers(0, 19)) == 0:
        entry = draw(st.sampled_from(["", *MISTYPED_ENTRIES]))
        wat += f'\n  (func (export "_initialize") {entry})'
    return wat, real


@st.composite
def guests(draw: st.DrawFn) -> tuple[str, frozenset[str], tuple[str, ...]]:
    """A hostile guest's WAT, the host functions its policy allows, and its tags."""
    alloc, alloc_imports = draw(allocators())
    abi_exports, real_alloc = draw(exports_plugsafe_calls(alloc))
    inbuf, inbuf_imports = draw(input_buffers())
    calls = draw(st.lists(host_calls(), max_size=4))
    used = alloc_imports | inbuf_imports | {name for name, _ in calls}
    imports = [f'(import "plugsafe" "{n}" (func ${n} {IMPORTS[n]}))' for n in sorted(used)]
    if draw(st.integers(0, 19)) == 0:  # now and then an import the host must refuse
        imports.append(
            f'(import "plugsafe" "{draw(st.sampled_from(sorted(IMPORTS)))}" (func {WRONG}))'
        )
    lo = draw(st.sampled_from([0, 1, 1, 2]))
    hi = draw(st.sampled_from(["", "", str(max(lo, 1)), "3", "40"]))
    body = "\n    ".join(_emit(c) for c in calls)
    wat = f"""(module
  {" ".join(imports)}
  (memory (export "memory") {lo} {hi})
  (global $bump (mut i32) (i32.const 1024))
  {abi_exports}
  {inbuf}
  (func (export "trap") unreachable)
  (func (export "f") (param $p i32) (param $n i32) (result i64) (local $last i64)
    (global.set $bump (i32.const 1024))
    {body}
    {draw(results())}))"""
    allow = used if draw(st.integers(0, 9)) else used - {draw(st.sampled_from(sorted(IMPORTS)))}
    # Only a real allocator is ever called: a mistyped one cannot recurse.
    recurses = real_alloc and (alloc_imports | inbuf_imports) & ANSWERS_WITH_BYTES
    tags = (RECURSES,) if recurses else ()
    return wat, frozenset(allow), tags


policies = st.fixed_dictionaries(
    {
        "fuel": st.sampled_from([100_000, 1_000_000, None]),
        "timeout": st.just(0.1),
        "memory": st.sampled_from([PAGE, 4 * PAGE, 2 * 1024 * 1024]),
        "max_output": st.sampled_from([0, 10, 2**20]),
        "max_host_arg_size": st.sampled_from([0, 16, 2**20]),
        "max_host_calls": st.sampled_from([3, 1000, None]),
        "log_messages": st.sampled_from([0, 2, 100]),
        "log_message_size": st.sampled_from([1, 4096]),
        "fresh_instance": st.booleans(),
    }
)

_ids = itertools.count()


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    r = Runner(wall=30.0)
    yield r
    r.close()


def test_hostile_abi_guests_return_or_fail_typed(
    runner: Runner, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Load each guest and call ``f`` with each input: values or PlugsafeErrors, nothing else."""
    known: dict[str, list[str]] = {}

    @FUZZ
    @given(
        guest=guests(),
        policy=policies,
        inputs=st.lists(st.binary(max_size=40), min_size=1, max_size=3),
        trap_at=st.one_of(st.none(), st.integers(0, 3)),
    )
    def check(
        guest: tuple[str, frozenset[str], tuple[str, ...]],
        policy: dict[str, object],
        inputs: list[bytes],
        trap_at: int | None,
    ) -> None:
        wat, allow, tags = guest
        ops: list[list[object]] = [["call", "f", data.hex()] for data in inputs]
        ops.append(["invoke", "f", [0, 0]])
        if trap_at is not None:  # a trap between calls: the next call runs on a new instance
            ops.insert(min(trap_at, len(inputs)), ["invoke", "trap", []])
        case = {
            "wasm": base64.b64encode(wat.encode()).decode(),
            "policy": {**policy, "allow": sorted(allow)},
            "ops": ops,
        }
        outcome = runner.run(case, next(_ids))
        if not outcome.failed:
            return
        name = classify(outcome, KNOWN_FAILURES, tags)
        if name is not None:
            known.setdefault(name, []).append(outcome.detail)
            return
        path = Path(tmp_path_factory.mktemp("abi-failure")) / "guest.wat"
        path.write_text(wat)
        repro = (
            f"python {HERE / 'harness.py'} --abi {path} "
            f"{shlex.quote(json.dumps({'policy': case['policy'], 'ops': ops}))}"
        )
        pytest.fail(report("hostile ABI guest", outcome, path, repro), pytrace=False)

    check()
    if known:
        pytest.xfail(
            "known failure classes: "
            + "; ".join(f"{k} ({len(v)} examples, e.g. {v[0]})" for k, v in known.items())
        )
