"""tidy9: disk-cache entries that are correctly hashed but lie, or are built to bloat.

The cache believed a description whose sha256 matched (``_cache.py``): an entry that says an
export takes or returns other types than its artifact's code does made the unchecked call
(``wasmtime_func_call_unchecked``, which trusts the caller's slot count and types) crash the
process, and a 5-byte marshal tuple header of 2**31 - 1 items made ``marshal.loads`` allocate
16 GiB before it found there were no items. Such an entry now reads as corrupt: it is deleted
and the module compiled again (docs/performance.md, "The disk cache").

Scenarios that crashed run in a fresh interpreter: an abort must fail the test, not the run.
"""

from __future__ import annotations

import marshal
import os
import random
from pathlib import Path

import pytest

import plugsafe
from plugsafe import _cache
from plugsafe import _runtime as rt

from helpers import run_script
from wat import ECHO

pytestmark = pytest.mark.skipif(os.name != "posix", reason="runs children with rlimits")


def _entries(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".")]


def _split(entry: Path) -> tuple[bytes, bytes]:
    """(description, artifact) of an entry, as ``ArtifactCache.put`` wrote them."""
    body = entry.read_bytes()[len(_cache._MAGIC) + 32 :]
    split = 4 + int.from_bytes(body[:4], "little")
    return body[4:split], body[split:]


def _forge(entry: Path, description: bytes) -> None:
    """Replace ``entry``'s description with ``description``; the digest made to match."""
    artifact = _split(entry)[1]
    body = len(description).to_bytes(4, "little") + description + artifact
    entry.write_bytes(_cache._MAGIC + _cache.digest(entry.name, body) + body)


def _edited(entry: Path, **exports: tuple[tuple[str, ...], tuple[str, ...]]) -> bytes:
    """``entry``'s description with the given exports' (params, results) replaced."""
    data = marshal.loads(_split(entry)[0])
    rows = tuple(
        (n, k, *exports[n], d) if n in exports else (n, k, p, r, d)
        for n, k, p, r, d in data["exports"]
    )
    return marshal.dumps({**data, "exports": rows}, 4)


def _cached(tmp_path: Path) -> Path:
    """Load ECHO once through a Host with a disk cache in ``tmp_path``; its one entry."""
    with plugsafe.Host(cache_dir=tmp_path) as host:
        assert host.load(ECHO.encode()).invoke("add", 2, 3) == 5
    [entry] = _entries(tmp_path)
    return entry


_LOAD_AND_CALL = """
    from pathlib import Path
    import plugsafe
    from wat import ECHO
    with plugsafe.Host(cache_dir=Path({cache!r})) as host:
        plugin = host.load(ECHO.encode())
        print(plugin.invoke("add", 2, 3), plugin.call("echo", b"hi"), flush=True)
"""


@pytest.mark.parametrize(
    "lie",
    [
        # More results than the code returns: the unchecked call reads slots never written.
        {"add": (("i32", "i32"), ("i64", "i64", "i64", "i64", "i64", "i64", "i64", "i64"))},
        # Fewer parameters than the code takes (the call packs 0 slots for 2).
        {"add": ((), ("i32",))},
        # The same counts, other types: the numbers are reinterpreted.
        {"add": (("f64", "f64"), ("f64",))},
        # The ABI's allocator said to return nothing (the host then writes input at 0).
        {"plugsafe_alloc": (("i32",), ())},
        # A control: an edit that changes nothing.
        {"add": (("i32", "i32"), ("i32",)), "echo": (("i32", "i32"), ("i64",))},
    ],
    ids=["more-results", "fewer-params", "other-types", "abi-alloc", "unchanged"],
)
def test_an_entry_lying_about_a_signature_is_compiled_again_not_called(
    tmp_path: Path, lie: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
) -> None:
    entry = _cached(tmp_path)
    honest = _split(entry)
    _forge(entry, _edited(entry, **lie))
    res = run_script(_LOAD_AND_CALL.format(cache=str(tmp_path)))
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr[-3000:]}"
    assert res.stdout.split() == ["5", "b'hi'"]
    if lie != {"add": (("i32", "i32"), ("i32",)), "echo": (("i32", "i32"), ("i64",))}:
        # The lying entry was deleted and the compiled module stored again, truthfully.
        assert marshal.loads(_split(entry)[0]) == marshal.loads(honest[0])


# "refs" calls the funcref it is given: believed to take two i64s, it was handed a number as a
# function reference, and the process aborted (a wasmtime panic, SIGABRT; measured before the
# fix by patching the check out).
REFS = """(module
  (type $t (func))
  (table 1 funcref)
  (func (export "refs") (param funcref externref) (result i32)
    (table.set (i32.const 0) (local.get 0)) (call_indirect (type $t) (i32.const 0)) (i32.const 1))
  (func (export "simd") (param v128) (result i32) (i32.const 2))
  (func (export "typed") (param (ref null $t)) (result i32) (i32.const 3))
  (func (export "num") (param i32) (result i32) (local.get 0)))"""


@pytest.mark.parametrize(
    ("lie", "call"),
    [
        ({"refs": (("i64", "i64"), ("i32",))}, ("refs", 0x41414141, 0)),
        ({"simd": (("i32",), ("i32",))}, ("simd", 1)),
        ({"typed": (("i64",), ("i32",))}, ("typed", 0x41414141)),
        ({"num": (("v128",), ("i32",))}, ("num", 4)),
    ],
    ids=["ref-as-number", "v128-as-number", "typed-ref-as-number", "number-as-v128"],
)
def test_non_numeric_types_said_to_be_numbers_are_caught_without_asking_their_kind(
    tmp_path: Path,
    lie: dict[str, tuple[tuple[str, ...], tuple[str, ...]]],
    call: tuple[object, ...],
) -> None:
    # wasm_valtype_kind aborts the process on v128 and typed references: the check must
    # compare types some other way.
    with plugsafe.Host(cache_dir=tmp_path) as host:
        assert host.load(REFS.encode()).invoke("num", 4) == 4
    [entry] = _entries(tmp_path)
    _forge(entry, _edited(entry, **lie))
    script = f"""
        from pathlib import Path
        import plugsafe
        with plugsafe.Host(cache_dir=Path({str(tmp_path)!r})) as host:
            p = host.load({REFS.encode()!r})
            print([str(p.exports[n]) for n in ("refs", "simd", "typed", "num")], flush=True)
            try:
                print(p.invoke(*{call!r}))
            except plugsafe.SignatureError:
                print("refused")
    """
    res = run_script(script)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr[-3000:]}"
    described, outcome = res.stdout.splitlines()
    assert described == str(
        [
            "func refs(funcref, externref) -> i32",
            "func simd(v128) -> i32",
            "func typed((ref null 0)) -> i32",
            "func num(i32) -> i32",
        ]
    )
    # The truth, from the module compiled again: numbers only go where numbers are taken.
    assert outcome == ("4" if call[0] == "num" else "refused")


@pytest.mark.parametrize(
    "description",
    [
        b"(\xff\xff\xff\x7f",  # a tuple of 2**31 - 1 items, none of them there
        b"[\xff\xff\xff\x7f",  # a list, the same
        b"{\xda\x07importsN\xda\x07exports(\xff\xff\xff\x7f",  # inside the dict
        b"\xa9\x01r\x00\x00\x00\x00",  # a tuple holding itself
        b"\xfb\xda\x07importsr\x00\x00\x00\x00\xda\x07exports)\x000",  # a dict, the same
        b"c" + b"\0" * 40,  # a code object (never made)
        b"{" * 5000,  # deeper than marshal's stack
    ],
    ids=["tuple", "list", "nested", "self-ref", "dict-self-ref", "code", "deep"],
)
def test_a_hostile_description_is_refused_within_its_own_size(
    tmp_path: Path, description: bytes
) -> None:
    entry = _cached(tmp_path)
    _forge(entry, description)
    # 512 MiB of heap: the allocation marshal made (16 GiB) fails; the load must not need it.
    res = run_script(_LOAD_AND_CALL.format(cache=str(tmp_path)), data_limit=512 << 20)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr[-3000:]}"
    assert res.stdout.split() == ["5", "b'hi'"]
    assert _split(entry)[0] != description  # deleted, and written again by the compile


def test_the_description_reader_reads_what_describe_writes() -> None:
    engine = rt.shared_engine(metered=False, max_stack=512 << 10)
    for wat in (ECHO, REFS):
        module = engine.compile(wat.encode())
        extra = {"plugsafe_load": ((1, 2, 3, 4, 5, 6), ((1, None), (0, 2**32), (2**40, 2**63)))}
        raw = module.describe(extra)
        assert rt.load_description(raw) == marshal.loads(raw)
        assert rt.parse_description(raw) == (module.imports, module.exports)


@pytest.mark.parametrize(
    "value",
    [
        {"imports": (), "exports": ()},
        {"a": (None, -1, 0, 2**31 - 1, -(2**31), 2**31, -(2**31) - 1, 2**100, -(2**100))},
        {"é": ("ünï", "x" * 300, "", ("deep", ("er", ()))[:1])},
        {"s": ("same", "same", "same")},
    ],
)
def test_the_reader_agrees_with_marshal(value: dict[str, object]) -> None:
    raw = marshal.dumps(value, 4)
    assert rt.load_description(raw) == value
    # Truncated anywhere: unreadable, never an exception.
    for cut in range(len(raw)):
        assert rt.load_description(raw[:cut]) is None


def test_anything_but_the_describe_subset_is_unreadable() -> None:
    for value in ([1], {1: 2}, b"x", 1.5, True, frozenset(), {"a": [1]}, {"a": 1.0}, ("a",)):
        assert rt.load_description(marshal.dumps(value, 4)) is None
    assert rt.load_description(marshal.dumps({"a": 1}, 4) + b"N") is None  # trailing bytes
    # Deeper than describe nests (a row's parameter list is 3 tuples deep), also through
    # back-references to tuples made higher up (marshal refers to a tuple it wrote before).
    shared = ("x",)
    twice = (shared,)
    deep = marshal.dumps({"a": (shared, twice, (twice,))}, 4)
    assert b"r" in deep and rt.load_description(deep) is None
    assert rt.load_description(marshal.dumps({"a": (shared, twice)}, 4)) == {"a": (shared, twice)}
    assert rt.load_description(marshal.dumps({"a": ((((),),),)}, 4)) is None
    assert rt.load_description(marshal.dumps({"a": (((),),)}, 4)) == {"a": (((),),)}


def test_a_stored_shape_that_disagrees_with_the_artifact_is_compiled_again(tmp_path: Path) -> None:
    # The precheck's measurements kept with the entry decide a later policy's structural caps
    # without reading the binary: counts that disagree with the (checked) imports and exports
    # make the entry unusable.
    entry = _cached(tmp_path)
    data = marshal.loads(_split(entry)[0])
    counts, memories = data["plugsafe_load"]
    _forge(
        entry,
        marshal.dumps({**data, "plugsafe_load": ((counts[0], 0, 1, *counts[3:]), memories)}, 4),
    )
    with plugsafe.Host(cache_dir=tmp_path) as host:
        with pytest.raises(plugsafe.InvalidModuleError, match="exports"):
            host.load(ECHO.encode(), policy=plugsafe.Policy(max_exports=2))
        assert not entry.exists()  # deleted; the precheck then refused the module
        host.load(ECHO.encode())
    assert marshal.loads(_split(entry)[0]) == data  # compiled again, the truth stored


def test_mutated_descriptions_read_as_marshal_reads_them_or_not_at_all() -> None:
    # Seeded mutations of real descriptions (bit flips, type codes, cuts, insertions): the
    # reader never raises, and whatever it accepts is what marshal makes of the same bytes.
    engine = rt.shared_engine(metered=False, max_stack=512 << 10)
    extra = {"plugsafe_load": ((1, 2, 3, 4, 5, 6), ((1, None), (1, 2**32)))}
    seeds = [engine.compile(w.encode()).describe(extra) for w in (ECHO, REFS)]
    accepted = 0
    for seed in range(3000):
        rnd = random.Random(seed)
        raw = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 4)):
            i = rnd.randrange(len(raw))
            op = rnd.randrange(4)
            if op == 0:
                raw[i] ^= 1 << rnd.randrange(8)
            elif op == 1:
                raw[i] = rnd.choice(b"()[{0NrzZaAuti\xff\x7f\x00\x80\xa9\xdb\xec")
            elif op == 2:
                del raw[i : i + rnd.randint(1, 8)]
            else:
                raw[i:i] = rnd.randbytes(rnd.randint(1, 6))
        got = rt.load_description(bytes(raw))
        if got is not None:
            accepted += 1
            assert got == marshal.loads(bytes(raw)), seed
    assert accepted > 50  # (the mutations do reach past the first byte)
