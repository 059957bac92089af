"""attack8: WASI settings reach wasmtime's C API as UTF-8 C strings (``_linker.wasi_config``).

A str that UTF-8 cannot encode (a lone surrogate: what ``os.fsdecode`` makes of a non-UTF-8
file name, or what a policy built from decoded bytes may hold) passed every check of ``Wasi``
and then failed each load with a bare ``UnicodeEncodeError`` from deep in the runtime, not a
PlugsafeError. They are refused when the ``Wasi`` is made, as a NUL is, with a PolicyError.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import plugsafe
from plugsafe import Policy, PolicyError, Preopen, Wasi

from wat import WASI_WRITER as WRITER


@pytest.mark.parametrize(
    "settings",
    [
        {"args": ["prog", "\udcff"]},
        {"env": {"NAME": "va\udcfflue"}},
        {"env": {"N\udcffAME": "value"}},
    ],
    ids=["args", "env-value", "env-name"],
)
def test_text_utf8_cannot_encode_is_a_policy_error(settings: dict[str, object]) -> None:
    with pytest.raises(PolicyError, match="UTF-8") as info:
        Wasi(**settings)  # type: ignore[arg-type]
    assert info.value.field == "wasi"


def test_a_guest_path_utf8_cannot_encode_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="UTF-8"):
        Wasi(preopens=[Preopen(str(tmp_path), "/d\udcff")])


def test_a_host_directory_whose_name_is_not_utf8_is_a_policy_error(tmp_path: Path) -> None:
    # A real directory: Linux names are bytes, Python hands this one over with surrogates.
    raw = os.path.join(os.fsencode(tmp_path), b"\xff\xfe")
    try:
        os.mkdir(raw)
    except OSError as exc:  # pragma: no cover - a file system that wants UTF-8 names
        pytest.skip(f"cannot make a non-UTF-8 name here: {exc}")
    with pytest.raises(PolicyError, match="UTF-8"):
        Wasi(preopens=[Preopen(os.fsdecode(raw), "/d")])


def test_valid_text_still_loads_and_runs() -> None:
    with plugsafe.Host() as host:
        policy = Policy(wasi=Wasi(args=["prog", "ünï"], env={"É": "ü\u2603"}))
        plugin = host.load(WRITER, policy=policy)
        assert plugin.invoke("write") == 0


# A WASI command: writes its first argument's length to stdout as one byte, then returns.
ARGLEN = b"""(module
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $sizes (i32.const 0) (i32.const 4)))
    (i32.store8 (i32.const 64) (i32.load (i32.const 4)))
    (i32.store (i32.const 16) (i32.const 64))
    (i32.store (i32.const 20) (i32.const 1))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 32)))))"""


@pytest.mark.parametrize("arg", ["a\x00--admin", "\udcff"], ids=["nul", "surrogate"])
def test_run_args_wasmtime_cannot_take_are_refused(arg: str) -> None:
    # A NUL cut the argument short in C without a word (the guest saw "a"); a surrogate raised
    # a bare UnicodeEncodeError from inside the runtime.
    with plugsafe.Host() as host:
        plugin = host.load(ARGLEN, policy=Policy(wasi=Wasi()))
        assert plugin.run(["prog", "abc"]).stdout == bytes([len(b"prog\0abc\0")])
        with pytest.raises(PolicyError):
            plugin.run(["prog", arg])
        assert plugin.run(["prog", "abcd"]).stdout == bytes([len(b"prog\0abcd\0")])


def _entries() -> int:
    from plugsafe._runtime import _linker

    return _linker.outputs_alive()  # Python sinks and native captures alike


def test_a_preopened_directory_gone_at_load_is_a_load_error(tmp_path: Path) -> None:
    # The policy checked the directory when it was made; it can be gone by the time a plugin
    # loads. wasmtime then refuses the preopen: a bare WasmFailure escaped Host.load.
    gone = tmp_path / "data"
    gone.mkdir()
    policy = Policy(wasi=Wasi(stdout="capture", preopens=[Preopen(str(gone), "/data")]))
    before = _entries()
    gone.rmdir()
    with plugsafe.Host() as host:
        with pytest.raises(plugsafe.PluginLoadError, match="/data"):
            host.load(WRITER, policy=policy)
        gone.mkdir()
        assert host.load(WRITER, policy=policy).invoke("write") == 0
    assert _entries() == before


def test_a_preopened_directory_gone_before_a_call_is_a_call_error(tmp_path: Path) -> None:
    gone = tmp_path / "data"
    gone.mkdir()
    fresh = Policy(wasi=Wasi(preopens=[Preopen(str(gone), "/data")]), fresh_instance=True)
    with plugsafe.Host() as host:
        plugin = host.load(WRITER, policy=fresh)
        command = host.load(ARGLEN, policy=fresh)
        assert plugin.invoke("write") == 0
        gone.rmdir()
        # Every call of a fresh_instance plugin, and every run(), preopens it again.
        with pytest.raises(plugsafe.PluginCallError, match="/data"):
            plugin.invoke("write")
        with pytest.raises(plugsafe.PluginCallError, match="/data"):
            command.run(["x"])
        gone.mkdir()
        assert plugin.invoke("write") == 0
        assert command.run(["x"]).stdout == b"\x02"


# Opens "data/f" under the preopen (fd 3) and reads up to 16 bytes of it into memory at 256;
# returns how many it read (or -1 if the open failed).
READER = b"""(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read"
    (func $read (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "f")
  (func (export "read") (result i32)
    (if (call $open (i32.const 3) (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 0)
                    (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 32))
      (then (return (i32.const -1))))
    (i32.store (i32.const 40) (i32.const 256))
    (i32.store (i32.const 44) (i32.const 16))
    (drop (call $read (i32.load (i32.const 32)) (i32.const 40) (i32.const 1) (i32.const 48)))
    (i32.load (i32.const 48))))"""


def test_a_relative_preopen_is_the_directory_that_was_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The policy checked "data" under one working directory; every instance preopened "data"
    # again, relative to whatever the working directory was by then: after a chdir, another
    # directory than the one checked (and reviewed) was the plugin's.
    checked, elsewhere = tmp_path / "a", tmp_path / "b"
    for base, text in ((checked, b"checked"), (elsewhere, b"secret-data")):
        (base / "data").mkdir(parents=True)
        (base / "data" / "f").write_bytes(text)
    monkeypatch.chdir(checked)
    policy = Policy(wasi=Wasi(preopens=[Preopen("data", "/data")]))
    monkeypatch.chdir(elsewhere)
    with plugsafe.Host() as host:
        plugin = host.load(READER, policy=policy)
        assert plugin.invoke("read") == len(b"checked")
        assert plugin.memory.read(256, 7) == b"checked"
