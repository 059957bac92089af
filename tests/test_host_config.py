"""Host config files: plugins by name, sha256 pins, default policy with overrides, paths."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import plugsafe
from plugsafe import Host, PluginLoadError, PolicyError

from wat import ECHO

ROOT = Path(__file__).resolve().parent.parent

LOGGER = """(module
  (import "plugsafe" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (func (export "noop")))
"""


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def plugins_dir(tmp_path: Path) -> Path:
    d = tmp_path / "plugins"
    d.mkdir()
    (d / "echo.wat").write_text(ECHO)
    (d / "logger.wat").write_text(LOGGER)
    return d


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "host.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_config_returns_plugins_by_name(host: Host, tmp_path: Path, plugins_dir: Path) -> None:
    config = write_config(
        tmp_path,
        f"""
        [defaults.limits]
        fuel = 1_000_000
        timeout = "500ms"
        memory = "1MiB"

        [plugins.first]
        source = "plugins/echo.wat"
        sha256 = "{sha(plugins_dir / "echo.wat")}"

        [plugins.second]
        source = "plugins/logger.wat"
        [plugins.second.imports]
        allow = ["log"]
        [plugins.second.limits]
        fuel = 5
        """,
    )
    loaded = host.load_config(config)
    assert list(loaded) == ["first", "second"]
    first, second = loaded["first"], loaded["second"]
    assert first.name == "first"
    assert first.call("echo", b"hi") == b"hi"
    # Defaults apply where a plugin says nothing ...
    assert first.policy.fuel == 1_000_000
    assert first.policy.memory == 2**20
    assert first.policy.allow == frozenset()
    # ... and overrides replace them key by key.
    assert second.policy.fuel == 5
    assert second.policy.timeout == 0.5
    assert second.policy.allow == {"log"}


def test_allow_override_replaces_the_default_list(
    host: Host, tmp_path: Path, plugins_dir: Path
) -> None:
    @host.function
    def lookup(key: str) -> str:
        return key

    config = write_config(
        tmp_path,
        """
        [defaults.imports]
        allow = ["log", "lookup"]
        [plugins.echo]
        source = "plugins/echo.wat"
        [plugins.echo.imports]
        allow = []
        """,
    )
    assert host.load_config(config)["echo"].policy.allow == frozenset()


def test_paths_are_relative_to_the_config_file(
    host: Host, tmp_path: Path, plugins_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, '[plugins.echo]\nsource = "plugins/echo.wat"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert host.load_config(config)["echo"].call("echo", "x") == b"x"
    # An absolute path stays as it is.
    absolute = write_config(tmp_path, f'[plugins.e]\nsource = "{plugins_dir / "echo.wat"}"\n')
    assert "e" in host.load_config(str(absolute))


def test_sha256_mismatch_names_both_hashes(host: Host, tmp_path: Path, plugins_dir: Path) -> None:
    wrong = "0" * 64
    config = write_config(
        tmp_path, f'[plugins.echo]\nsource = "plugins/echo.wat"\nsha256 = "{wrong}"\n'
    )
    with pytest.raises(PluginLoadError) as info:
        host.load_config(config)
    message = str(info.value)
    assert wrong in message
    assert sha(plugins_dir / "echo.wat") in message
    assert "echo" in message


def test_sha256_pin_is_case_insensitive(host: Host, tmp_path: Path, plugins_dir: Path) -> None:
    pin = sha(plugins_dir / "echo.wat").upper()
    config = write_config(tmp_path, f'[plugins.e]\nsource = "plugins/echo.wat"\nsha256 = "{pin}"\n')
    assert "e" in host.load_config(config)


def test_a_failure_closes_the_plugins_already_loaded(
    host: Host, tmp_path: Path, plugins_dir: Path
) -> None:
    config = write_config(
        tmp_path,
        """
        [plugins.good]
        source = "plugins/echo.wat"
        [plugins.needs_log]
        source = "plugins/logger.wat"
        """,
    )
    before = host.load(plugins_dir / "echo.wat")
    with pytest.raises(plugsafe.ImportNotAllowedError, match=r"plugsafe\.log"):
        host.load_config(config)
    # Only the plugin loaded outside the config is still open.
    assert not before.closed
    open_plugins = [p for p in host._plugins if not p.closed]
    assert open_plugins == [before]


def test_missing_source_file_is_a_load_error(host: Host, tmp_path: Path) -> None:
    config = write_config(tmp_path, '[plugins.gone]\nsource = "nope.wasm"\n')
    with pytest.raises(PluginLoadError, match=r"plugin 'gone': cannot read .*nope\.wasm"):
        host.load_config(config)


def test_invalid_module_names_the_file(host: Host, tmp_path: Path) -> None:
    (tmp_path / "junk.wasm").write_bytes(b"\x00asm\x02\x00\x00\x00")
    config = write_config(tmp_path, '[plugins.junk]\nsource = "junk.wasm"\n')
    with pytest.raises(plugsafe.InvalidModuleError, match=r"plugin 'junk' from .*junk\.wasm"):
        host.load_config(config)


def test_module_over_max_module_size(host: Host, tmp_path: Path, plugins_dir: Path) -> None:
    config = write_config(
        tmp_path,
        '[plugins.e]\nsource = "plugins/echo.wat"\n[plugins.e.limits]\nmax_module_size = 16\n',
    )
    with pytest.raises(plugsafe.InvalidModuleError, match="max_module_size"):
        host.load_config(config)


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        ("[plugins.a]\n", "plugins.a.source", "expected the plugin's .wasm or .wat file"),
        ("[plugins.a]\nsource = 5\n", "plugins.a.source", "got 5"),
        ('[plugins.a]\nsource = "x"\nsha256 = "abc"\n', "plugins.a.sha256", "64 hexadecimal"),
        ('[plugins.a]\nsource = "x"\nfuel = 1\n', "plugins.a.fuel", "unknown key"),
        (
            '[plugins.a]\nsource = "x"\n[plugins.a.limits]\nfuel = -5\n',
            "plugins.a.limits.fuel",
            "expected an integer >= 0, got -5",
        ),
        ('[defaults.limits]\nmemory = "lots"\n', "defaults.limits.memory", "expected a size"),
        ("[defaults]\nallow = []\n", "defaults.allow", "did you mean defaults.imports.allow?"),
        ('[plugin.a]\nsource = "x"\n', "plugin", "unknown key"),
        ("plugins = 3\n", "plugins", "expected a table"),
        ('[plugins." bad name"]\nsource = "x"\n', "plugins. bad name", "plugin names"),
    ],
)
def test_config_errors_name_the_key(
    host: Host, tmp_path: Path, text: str, path: str, words: str
) -> None:
    config = write_config(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        host.load_config(config)
    assert info.value.path == path
    assert words in str(info.value)
    assert str(config) in str(info.value)


def test_allowing_a_function_the_host_lacks_points_at_the_key(
    host: Host, tmp_path: Path, plugins_dir: Path
) -> None:
    config = write_config(
        tmp_path,
        '[plugins.e]\nsource = "plugins/echo.wat"\n[plugins.e.imports]\nallow = ["lookup"]\n',
    )
    with pytest.raises(PolicyError, match="not a host function of this host") as info:
        host.load_config(config)
    assert info.value.path == "plugins.e.imports.allow"


def test_the_example_host_config_loads() -> None:
    with Host() as host:

        @host.function
        def lookup(key: str) -> str | None:
            return {"ada": "Lovelace"}.get(key)

        loaded = host.load_config(ROOT / "examples" / "host.toml")
        assert set(loaded) == {"greet", "hostile"}
        assert loaded["greet"].call("greet", "you") == b"Hello, you!"
        assert loaded["greet"].call("describe", "ada") == b"Lovelace"
        with pytest.raises(plugsafe.LimitExceeded):
            loaded["hostile"].call("spin")
