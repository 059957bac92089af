#!/usr/bin/env python3
"""Build every plugsafe SDK example and template from source.

Usage (from anywhere; only the Python standard library is needed)::

    python plugins-sdk/build_plugins.py                    # build into build/plugins/, print sizes
    python plugins-sdk/build_plugins.py --out DIR          # build somewhere else
    python plugins-sdk/build_plugins.py --update-committed # also refresh examples/plugins/wasm/
    python plugins-sdk/build_plugins.py --check            # only report which toolchains are usable

Toolchains (Debian/Ubuntu: ``apt-get install clang lld wasi-libc libclang-rt-dev-wasm32 rustc
cargo libstd-rust-dev-wasm32``):

* Rust: a ``rustc`` with the ``wasm32-unknown-unknown`` target and ``cargo``. ``/usr/bin/rustc``
  (Debian's) is preferred over the first one on ``PATH`` because a rustup install often lacks
  the wasm target; set ``RUSTC`` and ``CARGO`` to choose others.
* C: ``clang`` with ``wasm-ld`` (``CC`` to choose another), and for the wasi-libc example
  wasi-libc (``WASI_SYSROOT`` if it is not where clang looks by default).

Outputs are named ``<example>-<lang>.wasm`` and ``template-<lang>.wasm``. Nothing is
downloaded: cargo runs ``--offline`` (the SDK has no dependencies).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SDK = Path(__file__).resolve().parent
ROOT = SDK.parent
EXAMPLES = ROOT / "examples" / "plugins"
COMMITTED = EXAMPLES / "wasm"
RUST_EXAMPLES = ("text", "image", "kv", "hostile")
# C examples and whether each needs wasi-libc (the rest build with no libc at all).
C_EXAMPLES = {"text": False, "kv": False, "image": True}

APT_HINT = (
    "apt-get install clang lld wasi-libc libclang-rt-dev-wasm32 rustc cargo libstd-rust-dev-wasm32"
)

# Where the toolchains must be present (CI), a missing one fails the tests instead of skipping
# them; .ci/run sets this variable. A true ``CI`` variable counts too.
REQUIRE_ENV = "PLUGSAFE_REQUIRE_TOOLCHAINS"
# How every test skipped for a missing toolchain begins its reason (tests/conftest.py counts them).
SKIP_PREFIX = "guest toolchain missing"

C_FLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-std=c99"]
# A plugin is a library (no entry point); stripping drops names and debug info.
C_LINK = ["-Wl,--no-entry", "-Wl,--strip-all"]


class ToolchainMissing(RuntimeError):
    """A compiler needed for a build is not installed; the message says what to install."""


@dataclass
class Toolchains:
    """What is available for building plugins, and why not where it is not."""

    rustc: str | None = None
    cargo: str | None = None
    clang: str | None = None
    wasi: bool = False
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def rust(self) -> bool:
        """Whether Rust plugins can be built."""
        return self.rustc is not None and self.cargo is not None

    @property
    def c(self) -> bool:
        """Whether C plugins without libc can be built."""
        return self.clang is not None

    def require(self, what: str) -> None:
        """Raise ToolchainMissing unless ``what`` (``rust``, ``c`` or ``wasi``) is usable."""
        ok = {"rust": self.rust, "c": self.c, "wasi": self.c and self.wasi}[what]
        if not ok:
            raise ToolchainMissing(f"{self.problems.get(what, what)}; install with: {APT_HINT}")


def toolchains_required() -> bool:
    """Whether a missing toolchain must fail the tests (CI) rather than skip them."""
    return any(
        os.environ.get(var, "").strip().lower() not in ("", "0", "false", "no")
        for var in (REQUIRE_ENV, "CI")
    )


def _run(
    cmd: Sequence[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # check=False: callers look at returncode and turn failures into their own messages. A tool
    # that cannot be started at all (say RUSTC=/wrong/path) reads as a failure the same way.
    try:
        return subprocess.run(
            list(cmd), cwd=cwd, env=env, capture_output=True, text=True, check=False
        )
    except OSError as e:
        return subprocess.CompletedProcess(list(cmd), 127, "", f"cannot run {cmd[0]}: {e}")


def _find_rust(tc: Toolchains) -> None:
    rustc = os.environ.get("RUSTC") or (
        "/usr/bin/rustc" if Path("/usr/bin/rustc").exists() else shutil.which("rustc")
    )
    cargo = os.environ.get("CARGO") or (
        "/usr/bin/cargo" if Path("/usr/bin/cargo").exists() else shutil.which("cargo")
    )
    if rustc is None or cargo is None:
        tc.problems["rust"] = "rustc and cargo are not installed"
        return
    if _run([cargo, "--version"]).returncode != 0:
        tc.problems["rust"] = f"cannot run cargo ({cargo})"
        return
    probe = _run([rustc, "--print", "target-libdir", "--target", "wasm32-unknown-unknown"])
    libdir = Path(probe.stdout.strip()) if probe.returncode == 0 else None
    if libdir is None or not libdir.is_dir() or not any(libdir.glob("libcore-*")):
        tc.problems["rust"] = (
            f"{rustc} has no wasm32-unknown-unknown standard library "
            "(with rustup: rustup target add wasm32-unknown-unknown)"
        )
        return
    tc.rustc, tc.cargo = rustc, cargo


def _c_probe(clang: str, args: Sequence[str], source: str) -> str | None:
    """Compile a tiny plugin; None if it worked, else clang's complaint."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text(source)
        res = _run([clang, *args, *C_LINK, "-o", str(Path(tmp) / "probe.wasm"), str(src)])
        return None if res.returncode == 0 else (res.stderr.strip().splitlines() or ["?"])[-1]


def _find_c(tc: Toolchains) -> None:
    clang = os.environ.get("CC") or shutil.which("clang")
    if clang is None:
        tc.problems["c"] = tc.problems["wasi"] = "clang is not installed"
        return
    plain = '__attribute__((export_name("f"))) int f(int x) { return x + 1; }\n'
    err = _c_probe(clang, ["--target=wasm32-unknown-unknown", "-nostdlib"], plain)
    if err is not None:
        tc.problems["c"] = tc.problems["wasi"] = f"clang cannot build wasm32 ({err})"
        return
    tc.clang = clang
    libm = (
        "#include <math.h>\n"
        '__attribute__((export_name("f"))) double f(double x) { return exp(x); }\n'
    )
    err = _c_probe(clang, _wasi_args(), libm)
    if err is None:
        tc.wasi = True
    else:
        tc.problems["wasi"] = f"clang cannot build against wasi-libc ({err})"


def _wasi_args() -> list[str]:
    args = ["--target=wasm32-wasi", "-nostartfiles"]
    sysroot = os.environ.get("WASI_SYSROOT")
    if sysroot:
        args.append(f"--sysroot={sysroot}")
    return args


def find_toolchains() -> Toolchains:
    """Probe for the Rust and C wasm toolchains (takes a fraction of a second)."""
    tc = Toolchains()
    _find_rust(tc)
    _find_c(tc)
    return tc


def cargo_build(tc: Toolchains, project: Path, target_dir: Path) -> Path:
    """``cargo build --release`` in ``project``; returns the release directory of wasm files.

    Runs in the project directory so that its ``.cargo/config.toml`` (stack size) applies,
    exactly as when a plugin author types the command.
    """
    tc.require("rust")
    assert tc.cargo is not None and tc.rustc is not None
    env = {**os.environ, "RUSTC": tc.rustc, "CARGO_TARGET_DIR": str(target_dir)}
    # The target is explicit: the templates keep it out of .cargo/config.toml so that
    # `cargo test` runs their unit tests on the host.
    cmd = [
        tc.cargo,
        "build",
        "--release",
        "--offline",
        "--quiet",
        "--target",
        "wasm32-unknown-unknown",
    ]
    res = _run(cmd, cwd=project, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"cargo build failed in {project}:\n{res.stderr}")
    return target_dir / "wasm32-unknown-unknown" / "release"


def clang_build(
    tc: Toolchains, source: Path, out: Path, *, wasi: bool = False, include: Path = SDK / "c"
) -> Path:
    """Compile one C plugin (no libc, or wasi-libc with ``wasi=True``) to ``out``."""
    tc.require("wasi" if wasi else "c")
    assert tc.clang is not None
    target = _wasi_args() if wasi else ["--target=wasm32-unknown-unknown", "-nostdlib"]
    cmd = [tc.clang, *target, *C_FLAGS, f"-I{include}", *C_LINK, "-o", str(out), str(source)]
    res = _run(cmd)
    if res.returncode != 0:
        raise RuntimeError(f"clang failed for {source}:\n{res.stderr}")
    return out


def build_rust_examples(tc: Toolchains, out: Path) -> list[Path]:
    """Build the Rust example workspace; copy each plugin to ``out/<name>-rust.wasm``."""
    release = cargo_build(tc, EXAMPLES / "rust", out / "cargo-target")
    built = []
    for name in RUST_EXAMPLES:
        dest = out / f"{name}-rust.wasm"
        shutil.copyfile(release / f"{name}_plugin.wasm", dest)
        built.append(dest)
    return built


def build_c_examples(tc: Toolchains, out: Path) -> list[Path]:
    """Build the C examples to ``out/<name>-c.wasm``."""
    return [
        clang_build(tc, EXAMPLES / "c" / f"{name}.c", out / f"{name}-c.wasm", wasi=wasi)
        for name, wasi in C_EXAMPLES.items()
    ]


def build_templates(tc: Toolchains, out: Path, langs: Sequence[str] = ("rust", "c")) -> list[Path]:
    """Build the templates in place, the way their READMEs say, to ``out/template-<lang>.wasm``."""
    built = []
    templates = SDK / "templates"
    if "rust" in langs:
        release = cargo_build(tc, templates / "rust", out / "cargo-target-template")
        dest = out / "template-rust.wasm"
        shutil.copyfile(release / "plugsafe_template.wasm", dest)
        built.append(dest)
    if "c" in langs:
        built.append(
            clang_build(tc, templates / "c" / "plugsafe_template.c", out / "template-c.wasm")
        )
    return built


def build_all(tc: Toolchains, out: Path) -> list[Path]:
    """Build every example and template into ``out``; returns the wasm files."""
    out.mkdir(parents=True, exist_ok=True)
    return [
        *build_rust_examples(tc, out),
        *build_c_examples(tc, out),
        *build_templates(tc, out),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "plugins")
    parser.add_argument(
        "--update-committed",
        action="store_true",
        help=f"copy the built examples to {COMMITTED.relative_to(ROOT)}/",
    )
    parser.add_argument("--check", action="store_true", help="only report the toolchains")
    args = parser.parse_args(argv)

    tc = find_toolchains()
    for what in ("rust", "c", "wasi"):
        usable = {"rust": tc.rust, "c": tc.c, "wasi": tc.c and tc.wasi}[what]
        print(f"{what:5} {'ok' if usable else 'MISSING: ' + tc.problems.get(what, '?')}")
    if args.check:
        return 0 if tc.rust and tc.c and tc.wasi else 1
    try:
        built = build_all(tc, args.out)
    except ToolchainMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path in built:
        print(f"{path.stat().st_size:8} bytes  {path}")
    if args.update_committed:
        COMMITTED.mkdir(parents=True, exist_ok=True)
        for path in built:
            if not path.name.startswith("template-"):
                shutil.copyfile(path, COMMITTED / path.name)
        print(f"updated {COMMITTED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
