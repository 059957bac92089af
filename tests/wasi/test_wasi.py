"""WASI as an explicit, narrow capability, tested on C programs built with wasi-libc."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import plugsafe
from plugsafe import Policy, Preopen, Wasi

import toolchains

Build = Callable[..., Path]


# -- granting and refusing ---------------------------------------------------------------------


def test_wasi_imports_are_refused_without_the_capability(build_wasi: Build) -> None:
    with plugsafe.Host() as host, pytest.raises(plugsafe.ImportNotAllowedError) as info:
        host.load(build_wasi("filter.c"))
    assert all(p.module == "wasi_snapshot_preview1" for p in info.value.problems)
    assert "WASI is not enabled" in str(info.value)


def test_defaults_grant_nothing(build_wasi: Build) -> None:
    os.environ.setdefault("HOME", "/root")
    with plugsafe.Host() as host:
        p = host.load(build_wasi("filter.c"), policy=Policy(wasi=Wasi()))
        result = p.run()
    assert result.exit_code == 0
    assert result.stdout == b""  # empty stdin
    # no argv, and none of the host's environment
    assert result.stderr == b"argc=0 HOME=- LANG=-\n"


def test_command_filters_stdin_to_stdout(build_wasi: Build) -> None:
    wasi = Wasi(args=["filter", "--flag"], env={"LANG": "C"}, stdin=b"hello, world")
    with plugsafe.Host() as host:
        p = host.load(build_wasi("filter.c"), policy=Policy(wasi=wasi))
        r = p.run()
        assert (r.exit_code, r.stdout) == (0, b"HELLO, WORLD")
        assert r.stderr == b"argc=2 [filter] [--flag] HOME=- LANG=C\n"
        # run() may replace args and stdin; each run gets a fresh instance.
        r2 = p.run(args=["filter", "x", "7"], stdin=b"abc")
        assert (r2.exit_code, r2.stdout) == (7, b"ABC")
        assert not r2.stdout_truncated


def test_captured_output_is_capped_and_the_cap_reported(build_wasi: Build) -> None:
    wasi = Wasi(stdin=b"x" * 10_000)
    with plugsafe.Host() as host:
        p = host.load(build_wasi("filter.c"), policy=Policy(wasi=wasi, max_output=100))
        r = p.run()
    assert r.stdout == b"X" * 100 and r.stdout_truncated
    assert r.exit_code == 0  # the program saw every write succeed


def test_discarded_output(build_wasi: Build) -> None:
    wasi = Wasi(stdin=b"abc", stdout="discard", stderr="discard")
    with plugsafe.Host() as host:
        r = host.load(build_wasi("filter.c"), policy=Policy(wasi=wasi)).run()
    assert (r.stdout, r.stderr) == (b"", b"")


def test_entry_points_are_not_invoked_directly(build_wasi: Build) -> None:
    with plugsafe.Host() as host:
        p = host.load(build_wasi("filter.c"), policy=Policy(wasi=Wasi(), max_input=10))
        with pytest.raises(plugsafe.SignatureError, match="use run"):
            p.invoke("_start")
        with pytest.raises(plugsafe.AbiError, match="max_input"):
            p.run(stdin=b"x" * 11)
        r = host.load(build_wasi("reactor.c", reactor=True), policy=Policy(wasi=Wasi()))
        with pytest.raises(plugsafe.SignatureError, match="calls it itself"):
            r.invoke("_initialize")


def test_run_needs_wasi_and_a_command(build_wasi: Build) -> None:
    with plugsafe.Host() as host:
        reactor = host.load(build_wasi("reactor.c", reactor=True), policy=Policy(wasi=Wasi()))
        with pytest.raises(plugsafe.ExportNotFoundError, match="_start"):
            reactor.run()
        plain = host.load(b'(module (func (export "_start")))')
        with pytest.raises(plugsafe.PluginCallError, match="no WASI capability"):
            plain.run()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"args": "prog"}, "wasi.args"),
        ({"env": {"A=B": "x"}}, "wasi.env"),
        ({"env": {"A": 1}}, "wasi.env.A"),
        ({"stdout": "tty"}, "wasi.stdout"),
        ({"stdin": "text"}, "wasi.stdin"),
        ({"preopens": [Preopen(host="/no/such/dir", guest="/d")]}, "wasi.preopens[0].host"),
        ({"preopens": [Preopen(host="/tmp", guest="d")]}, "wasi.preopens[0].guest"),
    ],
)
def test_bad_wasi_settings_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(plugsafe.PolicyError) as info:
        Wasi(**kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith(field)


# -- reactors --------------------------------------------------------------------------------


def test_reactor_initialize_runs_once_and_again_after_a_trap(build_wasi: Build) -> None:
    with plugsafe.Host() as host:
        p = host.load(build_wasi("reactor.c", reactor=True), policy=Policy(wasi=Wasi()))
        assert p.invoke("initialized") == 42  # the constructor ran through _initialize
        assert [p.invoke("count") for _ in range(3)] == [1, 2, 3]  # ... and only once
        with pytest.raises(plugsafe.PluginTrap):
            p.invoke("crash")
        assert p.invoke("initialized") == 42  # the fresh instance was initialised too
        assert p.invoke("count") == 1


def test_reactor_speaks_the_abi_with_malloc(build_wasi: Build) -> None:
    with plugsafe.Host() as host:
        p = host.load(build_wasi("reactor.c", reactor=True), policy=Policy(wasi=Wasi()))
        for n in (1, 100, 100_000):
            data = bytes(range(256)) * (n // 256) + b"x" * (n % 256)
            assert p.call("reverse", data) == data[::-1]


def test_proc_exit_from_a_call_carries_the_code(build_wasi: Build) -> None:
    with plugsafe.Host() as host:
        p = host.load(build_wasi("reactor.c", reactor=True), policy=Policy(wasi=Wasi()))
        with pytest.raises(plugsafe.PluginExitError) as info:
            p.invoke("do_exit", 3)
        assert info.value.exit_code == 3
        assert p.invoke("initialized") == 42  # a fresh instance afterwards


def test_reactor_output_is_captured_not_leaked(
    build_wasi: Build, capfd: pytest.CaptureFixture[str]
) -> None:
    with plugsafe.Host() as host:
        p = host.load(build_wasi("reactor.c", reactor=True), policy=Policy(wasi=Wasi()))
        p.invoke("say")
    assert "hello from the reactor" not in capfd.readouterr().out


def test_clocks_reveal_no_host_uptime_and_no_cpu_time(build_wasi: Build) -> None:
    with plugsafe.Host() as host:
        policy = Policy(wasi=Wasi(), timeout=5)
        p = host.load(build_wasi("reactor.c", reactor=True), policy=policy)
        first = p.invoke("mono_ms")
        assert 0 <= first < 60_000  # starts near 0 for each plugin
        p.invoke("nap", 1)
        assert p.invoke("mono_ms") - first >= 1000  # and agrees with sleep
        assert p.invoke("cpu_clock") == -1


# -- limits apply as for any plugin -------------------------------------------------------------


def test_sleep_cannot_outlive_the_timeout(build_wasi: Build) -> None:
    with plugsafe.Host() as host:
        p = host.load(
            build_wasi("reactor.c", reactor=True), policy=Policy(wasi=Wasi(), timeout=0.2)
        )
        start = time.monotonic()
        with pytest.raises(plugsafe.DeadlineExceeded):
            p.invoke("nap", 30)
        assert time.monotonic() - start < 5  # stopped at the deadline, not after 30 s
        assert p.invoke("nap", 0) == 0


def test_fuel_timeout_and_memory_apply(build_wasi: Build) -> None:
    path = build_wasi("reactor.c", reactor=True)
    with plugsafe.Host() as host:
        fuel = host.load(path, policy=Policy(wasi=Wasi(), fuel=1_000_000))
        with pytest.raises(plugsafe.FuelExhausted):
            fuel.invoke("spin")
        timed = host.load(path, policy=Policy(wasi=Wasi(), timeout=0.1))
        with pytest.raises(plugsafe.DeadlineExceeded):
            timed.invoke("spin")
        small = host.load(path, policy=Policy(wasi=Wasi(), memory=8 * 2**20))
        assert small.invoke("hog", 100) < 8  # malloc returned NULL at the cap
        assert small.memory.size <= 8 * 2**20


def test_large_module_with_malloc_and_printf_runs_under_64_mib(build_wasi: Build) -> None:
    path = build_wasi("big.c")
    assert path.stat().st_size > 3 * 2**20
    with plugsafe.Host() as host:
        p = host.load(path, policy=Policy(wasi=Wasi(), memory=64 * 2**20))
        r = p.run()
    assert r.exit_code == 0
    assert r.stdout == b"sum=8 malloc=ok\n"


# -- preopens -------------------------------------------------------------------------------------


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """data/ (preopened) holding file.txt and a symlink out; secret.txt outside it."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "file.txt").write_text("inside")
    (tmp_path / "secret.txt").write_text("SECRET")
    (data / "out").symlink_to(tmp_path / "secret.txt")
    (data / "outdir").symlink_to(tmp_path)
    return tmp_path


def _escape(build_wasi: Build, sandbox: Path, *args: str, writable: bool = False) -> str:
    wasi = Wasi(preopens=[Preopen(host=sandbox / "data", guest="/data", writable=writable)])
    with plugsafe.Host() as host:
        p = host.load(build_wasi("escape.c"), policy=Policy(wasi=wasi))
        r = p.run(args=["escape", *args])
    return r.stdout.decode().strip()


def test_reading_inside_a_preopen_works(build_wasi: Build, sandbox: Path) -> None:
    assert _escape(build_wasi, sandbox, "read", "/data/file.txt") == "ok inside"


@pytest.mark.parametrize(
    "path",
    [
        "/data/../secret.txt",  # dot-dot
        "/secret.txt",  # an absolute path outside every preopen
        "/data/out",  # a symlink pointing outside
        "/data/outdir/secret.txt",  # through a symlinked directory
        "/data/file.txt/",  # a trailing slash on a file
        "/etc/passwd",
    ],
)
def test_escapes_are_refused(build_wasi: Build, sandbox: Path, path: str) -> None:
    out = _escape(build_wasi, sandbox, "read", path)
    assert out.startswith("denied"), out
    assert "SECRET" not in out


def test_read_only_preopen_refuses_writes(build_wasi: Build, sandbox: Path) -> None:
    assert _escape(build_wasi, sandbox, "write", "/data/new.txt").startswith("denied")
    assert not (sandbox / "data" / "new.txt").exists()
    assert _escape(build_wasi, sandbox, "trunc", "/data/file.txt").startswith("denied")
    assert (sandbox / "data" / "file.txt").read_text() == "inside"  # not truncated
    assert _escape(build_wasi, sandbox, "mkdir", "/data/d").startswith("denied")


def test_writable_preopen_allows_writes_inside_only(build_wasi: Build, sandbox: Path) -> None:
    assert _escape(build_wasi, sandbox, "write", "/data/new.txt", writable=True) == "ok"
    assert (sandbox / "data" / "new.txt").read_text() == "pwned"
    out = _escape(build_wasi, sandbox, "write", "/data/../evil.txt", writable=True)
    assert out.startswith("denied") and not (sandbox / "evil.txt").exists()
    # a hard link or symlink that would reach outside is refused too
    out = _escape(build_wasi, sandbox, "link", "/data/file.txt", "/data/../hard", writable=True)
    assert out.startswith("denied") and not (sandbox / "hard").exists()
    # no symlink may be planted for the host app to follow later, wherever it points
    for target in ("/etc/passwd", "../secret.txt", "file.txt"):
        out = _escape(build_wasi, sandbox, "symlink", target, "/data/pw", writable=True)
        assert out.startswith("denied"), target
        assert not (sandbox / "data" / "pw").is_symlink()


def test_wasi_in_a_policy_file(build_wasi: Build, sandbox: Path) -> None:
    policy_file = sandbox / "policy.toml"
    policy_file.write_text(
        '[wasi]\nargs = ["escape", "read", "/data/file.txt"]\n'
        'preopens = [{ host = "data", guest = "/data" }]\n'
    )
    policy = Policy.from_toml(policy_file)
    assert policy.wasi is not None and policy.wasi.preopens[0].writable is False
    assert Policy.from_dict(policy.to_dict()) == policy
    with plugsafe.Host() as host:
        r = host.load(build_wasi("escape.c"), policy=policy).run()
    assert r.stdout == b"ok inside\n"


def test_a_loop_in_initialize_meets_the_limits() -> None:
    """Attack: spin forever in a reactor's _initialize (called by plugsafe after instantiation)."""
    wat = b'(module (func (export "_initialize") (loop $l (br $l))))'
    with plugsafe.Host() as host:
        with pytest.raises(plugsafe.FuelExhausted) as info:
            host.load(wat, policy=Policy(fuel=100_000))
        assert info.value.phase == "load"
        with pytest.raises(plugsafe.DeadlineExceeded):
            host.load(wat, policy=Policy(timeout=0.05))


# -- Rust, where the toolchain allows -----------------------------------------------------------


@pytest.fixture(scope="session")
def rust_wasi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """rev.rs built for WASI by a rustc that has that std (Debian: /usr/bin/rustc).

    The target is ``wasm32-wasip1``; rustc before 1.78 (Debian's 1.63) calls it ``wasm32-wasi``,
    a name newer ones removed, so both are tried.
    """
    import subprocess

    src = Path(__file__).parent / "src" / "rev.rs"
    out_dir = tmp_path_factory.mktemp("rust-wasi")
    tried = []
    for rustc in toolchains.rustc_candidates():
        for target in ("wasm32-wasip1", "wasm32-wasi"):
            out = out_dir / f"rev-{target}.wasm"
            cmd = [rustc, "--target", target, "-O", "-C", "debuginfo=0", str(src), "-o", str(out)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            except OSError as e:
                tried.append(f"{rustc}: {e}")
                break
            if proc.returncode == 0:
                return out
            tried.append(f"{rustc} --target {target}")
    toolchains.missing(
        f"no rustc here builds wasm32-wasip1 (tried {tried or 'none: rustc is not installed'})",
        "apt-get install rustc libstd-rust-dev-wasm32",
    )


def test_rust_wasi_command(rust_wasi: Path) -> None:
    with plugsafe.Host() as host:
        p = host.load(rust_wasi, policy=Policy(wasi=Wasi(args=["rev"])))
        r = p.run(args=["rev", "3"], stdin=b"hello plugin world")
    assert r.stdout == b"olleh nigulp dlrow\n"
    assert r.stderr == b'args=["3"] env=0\n'
    assert r.exit_code == 3


def test_cli_runs_a_wasi_command(build_wasi: Build, tmp_path: Path) -> None:
    import subprocess
    import sys

    policy = tmp_path / "policy.toml"
    policy.write_text('[wasi]\nargs = ["filter", "-", "4"]\nenv = { LANG = "C" }\n')
    cmd = [sys.executable, "-m", "plugsafe", "run", str(build_wasi("filter.c")), "_start"]
    ok = subprocess.run(
        [*cmd, "--policy", str(policy), "--input", "shout"], capture_output=True, text=True
    )
    assert ok.stdout == "SHOUT"
    assert "LANG=C" in ok.stderr
    assert "exited with code 4" in ok.stderr
    assert ok.returncode == 5  # a plugin error (docs/cli.md); the program's own code is in the text
