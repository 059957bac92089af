"""Create a new plugin project from the SDK templates (what ``plugsafe new`` runs).

A project is self-contained: it gets a copy of the guest SDK it was made with (the Rust crate
as ``plugsafe-sdk/``, or ``plugsafe.h`` for C), so it builds offline with nothing but a compiler
and keeps building the same way when plugsafe is upgraded. The component templates (``python``,
built with componentize-py, and ``c-component``, C with hand-written canonical-ABI glue) need no
SDK: their contract is the WIT world in ``wit/``, whose package and world take the plugin's name
in kebab case (WIT identifiers allow no ``_``).

The templates and SDK sources are found in the installed package (``plugsafe/_sdk/``, put there
by the build hook in ``setup.py``) or, in a source checkout (``pip install -e .``), in
``plugins-sdk/`` next to the package.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

__all__ = ["LANGUAGES", "new_project", "sdk_root", "wit_name"]

LANGUAGES = ("rust", "c", "python", "c-component")

# The name every template uses for the plugin; replaced by the project's own.
_PLACEHOLDER = "plugsafe_template"
# The same in kebab case, for WIT (package, world and interface names).
_WIT_PLACEHOLDER = "plugsafe-template"
_COMPONENT_LANGUAGES = frozenset({"python", "c-component"})
# WIT's keywords: not valid as a package or world name (the templates use the plugin's name).
_WIT_KEYWORDS = frozenset(
    [
        "as",
        "async",
        "bool",
        "borrow",
        "char",
        "constructor",
        "enum",
        "error-context",
        "export",
        "f32",
        "f64",
        "flags",
        "float32",
        "float64",
        "from",
        "func",
        "future",
        "import",
        "include",
        "interface",
        "list",
        "option",
        "own",
        "package",
        "record",
        "resource",
        "result",
        "s16",
        "s32",
        "s64",
        "s8",
        "static",
        "stream",
        "string",
        "tuple",
        "type",
        "u16",
        "u32",
        "u64",
        "u8",
        "use",
        "variant",
        "with",
        "world",
    ]
)
# Letters, digits, '_' and '-', starting with a letter: valid as a directory, a cargo package
# (after '-' becomes '_') and a C file name; also a valid export-friendly identifier.
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
# Build outputs and caches that must never be copied into a new project.
_IGNORE = shutil.ignore_patterns(
    "target",
    "Cargo.lock",
    "*.wasm",
    "*.wasm.tmp",
    "__pycache__",
    ".pytest_cache",
    ".benchmarks",
    "*.pyc",
    ".plugsafe-cache",
    "bindings",
)
# How each template points at the SDK in the repository, and what a project uses instead.
_SDK_LINKS = {
    "rust": ("Cargo.toml", 'path = "../../rust"', 'path = "plugsafe-sdk"'),
    "c": ("Makefile", "SDK ?= ../../c", "SDK ?= ."),
}


def sdk_root() -> Path:
    """The directory holding ``c/``, ``rust/`` and ``templates/`` of the guest SDKs.

    Raises:
        FileNotFoundError: neither the installed package data nor a source checkout has them.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "_sdk", here.parent / "plugins-sdk"):
        if (candidate / "templates").is_dir():
            return candidate
    raise FileNotFoundError(
        "the plugsafe guest SDK templates are missing from this installation "
        f"(looked in {here / '_sdk'} and {here.parent / 'plugins-sdk'})"
    )


def wit_name(name: str) -> str:
    """``name`` as a WIT identifier: lower case, words joined by ``-``.

    WIT words are letters and digits, each starting with a letter, joined by single dashes:
    ``My_Plugin2`` becomes ``my-plugin2``, and a word starting with a digit is joined to the one
    before it (``img-2x`` becomes ``img2x``).
    """
    words: list[str] = []
    for word in re.split(r"[-_]+", name.lower()):
        if not word:
            continue
        if words and word[0].isdigit():
            words[-1] += word
        else:
            words.append(word)
    return "-".join(words)


def _substitute(root: Path, ident: str, kebab: str) -> None:
    """Replace the template's placeholder names in every file name and text file under root."""
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # binary: nothing to substitute
            if _PLACEHOLDER in text or _WIT_PLACEHOLDER in text:
                text = text.replace(_PLACEHOLDER, ident).replace(_WIT_PLACEHOLDER, kebab)
                path.write_text(text, encoding="utf-8")
        if _PLACEHOLDER in path.name:
            path.rename(path.with_name(path.name.replace(_PLACEHOLDER, ident)))


def _vendor_sdk(lang: str, sdk: Path, project: Path) -> None:
    """Copy the SDK into the project and point the build at the copy."""
    if lang not in _SDK_LINKS:
        return  # a component template: the WIT world is its whole contract
    if lang == "rust":
        shutil.copytree(sdk / "rust", project / "plugsafe-sdk", ignore=_IGNORE)
    else:
        shutil.copy2(sdk / "c" / "plugsafe.h", project / "plugsafe.h")
    file_name, old, new = _SDK_LINKS[lang]
    build_file = project / file_name
    text = build_file.read_text(encoding="utf-8")
    if old not in text:
        raise RuntimeError(f"template {build_file.name} no longer contains {old!r}")
    build_file.write_text(text.replace(old, new), encoding="utf-8")


def new_project(lang: str, name: str, dest: os.PathLike[str] | str) -> Path:
    """Create a plugin project named ``name`` in the new directory ``dest``.

    Args:
        lang: ``"rust"``, ``"c"`` (core modules with the plugsafe ABI), ``"python"`` (a
            component built with componentize-py) or ``"c-component"`` (a component in C).
        name: the plugin's name: a letter, then letters, digits, ``_`` or ``-`` (at most 64).
            ``-`` becomes ``_`` where an identifier is needed (crate, file and wasm names); WIT
            names use it in kebab case (:func:`wit_name`).
        dest: the project directory to create; it must not exist yet, or be empty.

    Returns:
        The project directory (absolute). It holds the plugin source, its build file (``python
        build.py`` or ``make``), ``policy.toml``, ``test_plugin.py``, a README, and a copy of
        the SDK (core modules) or the WIT world in ``wit/`` (components).

    Raises:
        ValueError: unknown ``lang`` or an invalid ``name``.
        FileExistsError: ``dest`` exists and is not an empty directory.
        FileNotFoundError: the SDK templates are not installed (see :func:`sdk_root`).
    """
    if lang not in LANGUAGES:
        raise ValueError(
            f"unknown plugin language {lang!r}; expected one of {', '.join(LANGUAGES)}"
        )
    if not _NAME.match(name):
        raise ValueError(
            f"invalid plugin name {name!r}: use a letter, then letters, digits, '_' or '-' "
            "(at most 64 characters)"
        )
    if lang in _COMPONENT_LANGUAGES and wit_name(name) in _WIT_KEYWORDS:
        raise ValueError(
            f"invalid plugin name {name!r}: {wit_name(name)!r} is a WIT keyword, and a "
            "component's WIT world takes the plugin's name; choose another"
        )
    project = Path(dest).resolve()
    if project.exists() and (not project.is_dir() or any(project.iterdir())):
        raise FileExistsError(f"{project} already exists and is not an empty directory")
    sdk = sdk_root()
    ident = name.replace("-", "_")

    # Build the project next to its destination and move it into place at the end, so that a
    # failure halfway never leaves a half-made project behind.
    project.parent.mkdir(parents=True, exist_ok=True)
    staging = project.parent / f".{project.name}.plugsafe-new"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        shutil.copytree(sdk / "templates" / lang, staging, ignore=_IGNORE)
        _substitute(staging, ident, wit_name(name))
        _vendor_sdk(lang, sdk, staging)
        if project.exists():
            project.rmdir()  # empty, checked above
        staging.rename(project)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return project
