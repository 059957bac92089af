"""attack7: disk-cache entries whose description lies about their artifact.

What the cache trusts (``_cache.py``'s docstring, ``_runtime/_module.py``): an entry whose
sha256 matches, in a directory only this user can write, is one plugsafe wrote; its
description is then believed without asking wasmtime (issue 14: cold start). Only another
process of the same user can write such an entry, and that process can already run code as the
user (the artifact is native code). Whatever it says, though, the policy's import check is not
the only gate: the Linker defines only the host functions the policy allows, so a description
that hides or renames an import cannot let a guest call a function the policy denies. Since
tidy9 a description is also checked against the artifact's own import and export types
(``rt.check_description``): a lie is an unusable entry, compiled again. These tests write such
entries (digest and all) and load them.
"""

from __future__ import annotations

import marshal
from pathlib import Path

import pytest

import plugsafe
from plugsafe import _cache

GUEST = b"""(module
  (import "plugsafe" "secret" (func $secret (result i32)))
  (import "plugsafe" "public" (func $public (result i32)))
  (func (export "leak") (result i32) (call $secret))
  (func (export "fine") (result i32) (call $public)))"""


def _entries(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".")]


def _rewrite(entry: Path, edit: dict[str, object]) -> None:
    """Rewrite ``entry``'s description with ``edit`` applied, its digest made to match."""
    data = entry.read_bytes()
    header = len(_cache._MAGIC) + 32
    body = data[header:]
    split = 4 + int.from_bytes(body[:4], "little")
    description, artifact = marshal.loads(body[4:split]), body[split:]
    assert type(description) is dict
    description.update(edit)
    raw = marshal.dumps(description, 4)
    body = len(raw).to_bytes(4, "little") + raw + artifact
    entry.write_bytes(_cache._MAGIC + _cache.digest(entry.name, body) + body)


def _split_description(entry: Path) -> bytes:
    body = entry.read_bytes()[len(_cache._MAGIC) + 32 :]
    return body[4 : 4 + int.from_bytes(body[:4], "little")]


def _host(tmp_path: Path, calls: list[str]) -> plugsafe.Host:
    host = plugsafe.Host(cache_dir=tmp_path)

    @host.function
    def secret() -> int:
        calls.append("secret")
        return 666

    @host.function
    def public() -> int:
        calls.append("public")
        return 1

    return host


_PUBLIC_ONLY = (("plugsafe", "public", "func", (), ("i32",), ""),)


@pytest.mark.parametrize(
    "lie",
    [
        # No imports at all; only the allowed one; the denied one renamed to the allowed one.
        {"imports": ()},
        {"imports": _PUBLIC_ONLY},
        {"imports": _PUBLIC_ONLY * 2},
    ],
    ids=["none", "allowed-only", "renamed"],
)
def test_a_description_hiding_a_denied_import_lets_no_call_through(
    tmp_path: Path, lie: dict[str, object]
) -> None:
    calls: list[str] = []
    policy = plugsafe.Policy(allow={"public"})
    with _host(tmp_path, calls) as host, pytest.raises(plugsafe.ImportNotAllowedError):
        host.load(GUEST, policy=policy)
    # The refused module was still compiled and stored (the import check comes after).
    [entry] = _entries(tmp_path)
    _rewrite(entry, lie)
    # The lie no longer matches the artifact's imports (rt.check_description, tidy9): the entry
    # is deleted and the module compiled again, so the refusal is the compiler's own. (Before,
    # the lie passed the import check and the Linker, which defines only what the policy
    # allows, refused the real import: both gates hold.)
    with (
        _host(tmp_path, calls) as host,
        pytest.raises(plugsafe.ImportNotAllowedError, match="secret"),
    ):
        host.load(GUEST, policy=policy)
    assert calls == []
    assert marshal.loads(_split_description(entry))["imports"] != lie["imports"]


def test_an_entry_of_a_denied_module_is_not_a_way_around_the_check(tmp_path: Path) -> None:
    # The honest entry: the same refusal from the disk cache as from the compiler.
    calls: list[str] = []
    policy = plugsafe.Policy(allow={"public"})
    for _ in range(2):
        with (
            _host(tmp_path, calls) as host,
            pytest.raises(plugsafe.ImportNotAllowedError, match="secret"),
        ):
            host.load(GUEST, policy=policy)
    assert len(_entries(tmp_path)) == 1 and calls == []
