"""Attack pass 6: hostile values for Pooling and Policy (what the app hands plugsafe).

A subclass of int (or float, or str) whose comparisons, ``__index__`` or ``__hash__`` lie
must not carry an out-of-range limit past the checks; ``keep_resident`` over the slot is
refused with a reason; every message says what the field accepts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

import plugsafe
from plugsafe import Policy, PolicyError, Pooling

MiB = 1024 * 1024
_ECHO = b'(module (memory (export "memory") 1) (func (export "f") (result i32) (i32.const 5)))'


class _Liar(int):
    """Says yes to every range check and lies about its value when asked."""

    def __index__(self) -> int:
        return 7

    def __int__(self) -> int:
        return 9

    def __lt__(self, other: object) -> bool:
        return False

    def __gt__(self, other: object) -> bool:
        return False

    def __le__(self, other: object) -> bool:
        return True

    def __ge__(self, other: object) -> bool:
        return True

    def __mod__(self, other: object) -> int:
        return 0


class _LiarFloat(float):
    def __float__(self) -> float:
        return 1e300

    def __le__(self, other: object) -> bool:
        return True

    def __lt__(self, other: object) -> bool:
        return True

    def __gt__(self, other: object) -> bool:
        return True

    def __ge__(self, other: object) -> bool:
        return True


def test_keep_resident_over_the_slot_is_refused_and_says_why() -> None:
    with pytest.raises(PolicyError) as info:
        Pooling(instances=1, memory_size="1MiB", keep_resident="1GiB")
    assert info.value.field == "keep_resident"
    assert str(info.value) == (
        "keep_resident (1 GiB) is over memory_size (1 MiB): a slot can keep at most its "
        "memory_size resident"
    )
    # Exactly the slot is fine; one byte over is not.
    assert Pooling(1, MiB, keep_resident=MiB).keep_resident == MiB
    with pytest.raises(PolicyError, match="over memory_size"):
        Pooling(1, MiB, keep_resident=MiB + 1)


@pytest.mark.parametrize("field", ["memory_size", "keep_resident"])
@pytest.mark.parametrize("bad", [-1, True, 1.5, float("nan"), 2**64, None, b"64"])
def test_pooling_size_messages_say_that_strings_are_accepted(field: str, bad: object) -> None:
    kwargs: dict[str, Any] = {"instances": 1, "memory_size": MiB, field: bad}
    with pytest.raises(PolicyError) as info:
        Pooling(**kwargs)
    assert info.value.field == field
    assert "must be an int" not in str(info.value)
    assert 'a string with a unit such as "16MiB"' in str(info.value)
    assert "4 GiB" in str(info.value)


@pytest.mark.parametrize("field", ["instances", "memories", "tables", "table_elements"])
@pytest.mark.parametrize("bad", [0, -3, True, 2.0, float("inf"), "1", 10**30])
def test_pooling_counts_are_ints_in_range(field: str, bad: object) -> None:
    kwargs: dict[str, Any] = {"instances": 1, "memory_size": MiB, field: bad}
    with pytest.raises(PolicyError, match=rf"^{field} must be an int from 1 to \d+, got ") as info:
        Pooling(**kwargs)
    assert info.value.field == field


@pytest.mark.parametrize(
    "field", ["instances", "memory_size", "memories", "tables", "table_elements", "keep_resident"]
)
def test_pooling_reads_an_int_subclass_as_the_int_it_holds(field: str) -> None:
    for bad in (_Liar(-3), _Liar(2**40)):
        kwargs: dict[str, Any] = {"instances": 1, "memory_size": MiB, field: bad}
        with pytest.raises(PolicyError) as info:
            Pooling(**kwargs)
        assert info.value.field == field
    good = {"instances": 2, "memory_size": MiB, "memories": 2, "tables": 2}
    good.update({"table_elements": 10, "keep_resident": 4096})
    made = Pooling(**{**good, field: _Liar(good[field])})
    value = getattr(made, field)
    assert type(value) is int and value == good[field]  # stored plain, not the liar
    assert made == Pooling(**good) and hash(made) == hash(Pooling(**good))


@pytest.mark.parametrize(
    ("field", "lo"),
    [
        ("fuel", 0),
        ("memory", 0),
        ("max_module_size", 8),
        ("max_host_calls", 0),
        ("max_input", 0),
        ("log_messages", 0),
        ("max_table_elements", 0),
    ],
)
def test_policy_reads_an_int_subclass_as_the_int_it_holds(field: str, lo: int) -> None:
    # Before: Policy(fuel=_Liar(-3)) was accepted and the load died in an untyped
    # OverflowError; Policy(max_module_size=_Liar(-3)) let every module through.
    for bad in (_Liar(lo - 1), _Liar(2**70)):
        with pytest.raises(PolicyError, match=rf"^{field}: expected an integer from {lo} to"):
            Policy(**{field: bad})
    policy = Policy(**{field: _Liar(5_000_000)})
    assert type(getattr(policy, field)) is int and getattr(policy, field) == 5_000_000
    assert policy == Policy(**{field: 5_000_000})


def test_policy_reads_a_float_subclass_as_the_float_it_holds() -> None:
    with pytest.raises(PolicyError, match=r"^timeout: expected seconds > 0"):
        Policy(timeout=_LiarFloat(-2.0))
    policy = Policy(timeout=_LiarFloat(0.5), compile_timeout=_LiarFloat(2.0))
    assert type(policy.timeout) is float and policy.timeout == 0.5
    assert type(policy.compile_timeout) is float and policy.compile_timeout == 2.0


def test_an_allowed_name_cannot_lie_about_which_name_it_is() -> None:
    class Anything(str):
        def __hash__(self) -> int:
            return hash("secret")

        def __eq__(self, other: object) -> bool:
            return True

    policy = Policy(allow=[Anything("log")])
    assert policy.allow == frozenset({"log"})
    assert all(type(name) is str for name in policy.allow)
    assert "secret" not in policy.allow
    # And the plugin that imports "secret" is refused at load, as with a plain "log".
    wat = b'(module (import "plugsafe" "secret" (func)) (func (export "f")))'
    with plugsafe.Host() as host:

        @host.function
        def secret() -> None:
            pass

        with pytest.raises(plugsafe.PlugsafeError, match="secret"):
            host.load(wat, policy=policy)


def test_a_liar_fuel_runs_with_the_fuel_it_holds() -> None:
    with plugsafe.Host() as host:
        plugin = host.load(_ECHO, policy=Policy(fuel=_Liar(1000)))
        assert plugin.invoke("f") == 5


_WASI_OPEN = """(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "secret.txt")
  (func (export "probe") (result i32)
    (call $open (i32.const 3) (i32.const 0) (i32.const 16) (i32.const 10) (i32.const 0)
                (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 64))))"""


def test_a_preopen_is_the_directory_that_was_checked(tmp_path: Any) -> None:
    # Before: Preopen._check read os.fspath(host) once, and every new instance read it
    # again: a path-like answering another directory the second time gave the plugin a
    # directory nobody checked (here, one holding secret.txt; it could be "/").
    checked, other = tmp_path / "checked", tmp_path / "other"
    checked.mkdir()
    other.mkdir()
    (other / "secret.txt").write_text("secret")

    class Flip(os.PathLike[str]):
        def __init__(self) -> None:
            self.calls = 0

        def __fspath__(self) -> str:
            self.calls += 1
            return str(checked if self.calls == 1 else other)

    wasi = plugsafe.Wasi(preopens=[plugsafe.Preopen(Flip(), "/data")])
    with plugsafe.Host() as host:
        plugin = host.load(_WASI_OPEN.encode(), policy=Policy(wasi=wasi))
        assert plugin.invoke("probe") == 44  # ENOENT: the checked directory has no secret
        fresh = host.load(_WASI_OPEN.encode(), policy=Policy(wasi=wasi, fresh_instance=True))
        assert fresh.invoke("probe") == 44 and fresh.invoke("probe") == 44


class _Shifty(Mapping[str, str]):
    """items() says one thing, the mapping protocol (what dict() reads) another."""

    def __init__(self, shown: dict[str, str], real: dict[str, str]) -> None:
        self.shown, self.real = shown, real

    def items(self) -> Any:
        return self.shown.items()

    def __getitem__(self, key: str) -> str:
        return self.real[key]

    def __iter__(self) -> Any:
        return iter(self.real)

    def __len__(self) -> int:
        return len(self.real)


class _ShiftySeq(Sequence[str]):
    """Each iteration over it yields something else."""

    def __init__(self, *rounds: tuple[str, ...]) -> None:
        self.rounds = list(rounds)

    def __iter__(self) -> Any:
        return iter(self.rounds.pop(0) if len(self.rounds) > 1 else self.rounds[0])

    def __getitem__(self, i: Any) -> Any:
        return self.rounds[-1][i]

    def __len__(self) -> int:
        return len(self.rounds[-1])


def test_wasi_keeps_what_it_checked() -> None:
    # What the checks read is what is kept: a mapping or sequence answering differently the
    # second time must not slip a NUL or a bad name past them.
    # (Before: the env was checked through items() and copied through the mapping protocol,
    # the args checked in two passes and copied in a third.)
    assert plugsafe.Wasi(env=_Shifty({"OK": "fine"}, {"BAD=NAME": "x\0y"})).env == {"OK": "fine"}
    assert plugsafe.Wasi(args=_ShiftySeq(("a",), ("a",), ("b\0c",))).args == ("a",)
    with pytest.raises(PolicyError, match="NUL"):
        plugsafe.Wasi(args=_ShiftySeq(("a\0",), ("a",), ("b",)))

    class Sneaky(str):
        def __contains__(self, other: object) -> bool:
            return False  # "\0" in it: never

        def startswith(self, *args: Any) -> bool:
            return True

    with pytest.raises(PolicyError, match="NUL"):
        plugsafe.Wasi(args=[Sneaky("a\0b")])
    with pytest.raises(PolicyError, match="NUL"):
        plugsafe.Wasi(env={"A": Sneaky("a\0b")})
    with pytest.raises(PolicyError, match="guest"):
        plugsafe.Wasi(preopens=[plugsafe.Preopen("/", Sneaky("relative"))])
    wasi = plugsafe.Wasi(args=[Sneaky("x")], env={"A": Sneaky("v")})
    assert type(wasi.args[0]) is str and type(wasi.env["A"]) is str
