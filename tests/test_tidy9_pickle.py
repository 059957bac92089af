"""tidy9: a pickled Policy, Pooling, Wasi or Preopen is validated again when unpickled.

Unpickling a dataclass sets its ``__dict__`` from the pickle (``copyreg.__newobj__`` or its
reconstructor, then the state), without ``__init__``: a pickle made by hand, or by an older
plugsafe whose checks were looser, made a frozen Policy with any field (a negative fuel, a
memory cap of -1) that the runtime then trusted. A Preopen even kept the directory it had been
checked for in a private field, read instead of ``host``: a pickle could name one directory and
preopen another. Each now runs the constructor's own checks on its pickled fields
(``__setstate__``), and so do ``copy.copy`` and ``copy.deepcopy``.
"""

from __future__ import annotations

import copy
import copyreg
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

import plugsafe
from plugsafe import Pooling, Preopen, Wasi


class _Forged:
    """Pickles as an instance of ``cls`` with exactly ``state`` (what an old or crafted pickle
    holds: the class, then its ``__dict__``)."""

    def __init__(self, cls: type, state: object) -> None:
        self.cls, self.state = cls, state

    def __reduce__(self) -> tuple[Any, ...]:
        # (copyreg's reconstructor: what protocols 0 and 1 write for any object.)
        return (copyreg._reconstructor, (self.cls, object, None), self.state)


def _forged(obj: object, **changes: object) -> bytes:
    """A pickle of ``obj`` with ``changes`` to its fields (those given ``_DROP`` removed)."""
    state = dict(vars(obj))
    for name, value in changes.items():
        if value is _DROP:
            del state[name]
        else:
            state[name] = value
    return pickle.dumps(_Forged(type(obj), state))


_DROP = object()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("fuel", -5),
        ("memory", -1),
        ("timeout", float("nan")),
        ("max_module_size", 0),
        ("allow", frozenset({"not a name"})),
        ("allow", "log"),
        ("wasi", "yes"),
        ("fresh_instance", 1),
        ("compile_memory", 10),
    ],
)
def test_a_policy_pickle_with_a_bad_field_is_refused(field: str, value: object) -> None:
    with pytest.raises(plugsafe.PolicyError) as info:
        pickle.loads(_forged(plugsafe.Policy(), **{field: value}))
    assert info.value.field == field


def test_a_policy_pickle_with_an_unknown_field_or_no_dict_is_refused() -> None:
    with pytest.raises(plugsafe.PolicyError, match="fuell"):
        pickle.loads(_forged(plugsafe.Policy(), fuell=5))
    with pytest.raises(plugsafe.PolicyError):
        pickle.loads(pickle.dumps(_Forged(plugsafe.Policy, ("fuel", 5))))


def test_a_policy_pickle_of_an_older_version_gets_the_new_fields_defaults() -> None:
    old = _forged(plugsafe.Policy(fuel=10), compile_memory=_DROP, max_nesting=_DROP)
    policy = pickle.loads(old)
    assert policy == plugsafe.Policy(fuel=10)


def test_a_policy_round_trips_through_pickle_and_copy(tmp_path: Path) -> None:
    policy = plugsafe.Policy(
        fuel=1000,
        memory="2MiB",
        allow={"log"},
        wasi=Wasi(args=["prog", "x"], env={"A": "b"}, preopens=[Preopen(tmp_path, "/data")]),
    )
    for again in (pickle.loads(pickle.dumps(policy)), copy.copy(policy), copy.deepcopy(policy)):
        assert again == policy
        assert again.wasi is not None
        assert again.wasi.preopens[0].checked_host() == os.path.abspath(tmp_path)
    # A plain str subclass in a field is read as the str (as the constructor does).
    assert type(pickle.loads(pickle.dumps(policy)).wasi.args[0]) is str  # type: ignore[union-attr]


def test_an_unpickled_policy_still_loads_and_runs() -> None:
    policy = pickle.loads(pickle.dumps(plugsafe.Policy(fuel=10_000)))
    with plugsafe.Host() as host:
        plugin = host.load(b'(module (func (export "f") (result i32) i32.const 7))', policy=policy)
        assert plugin.invoke("f") == 7


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("instances", 0),
        ("memory_size", 100),
        ("memories", True),
        ("keep_resident", 2**40),
        ("table_elements", "many"),
    ],
)
def test_a_pooling_pickle_with_a_bad_field_is_refused(field: str, value: object) -> None:
    pooling = Pooling(instances=4, memory_size="1MiB")
    assert pickle.loads(pickle.dumps(pooling)) == pooling
    with pytest.raises(plugsafe.PolicyError) as info:
        pickle.loads(_forged(pooling, **{field: value}))
    assert info.value.field == field


@pytest.mark.parametrize(
    "changes",
    [
        {"args": ("a\0b",)},
        {"env": {"A=B": "c"}},
        {"stdout": "everywhere"},
        {"stdin": "text"},
        {"preopens": ("/tmp",)},
    ],
)
def test_a_wasi_pickle_with_a_bad_field_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(plugsafe.PolicyError):
        pickle.loads(_forged(Wasi(), **changes))


def test_a_preopen_pickle_cannot_name_one_directory_and_open_another(tmp_path: Path) -> None:
    inner = tmp_path / "granted"
    inner.mkdir()
    wasi = Wasi(preopens=[Preopen(inner, "/data")])
    [preopen] = wasi.preopens
    assert preopen.checked_host() == str(inner)
    # The private field the check keeps, forged to the parent directory.
    forged = pickle.loads(_forged(preopen, _host=str(tmp_path)))
    assert forged.checked_host() == str(inner)
    # And inside a Wasi: its preopens are checked again too.
    state = dict(vars(wasi), preopens=(_Forged(Preopen, dict(vars(preopen), host="/nowhere")),))
    with pytest.raises(plugsafe.PolicyError, match="nowhere"):
        pickle.loads(pickle.dumps(_Forged(Wasi, state)))
