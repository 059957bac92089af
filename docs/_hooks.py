"""mkdocs hook: links from docs/ to files elsewhere in the repository (``../examples/kv_app.py``).

mkdocs knows only the pages under docs/, so those links would be broken on the built site. This
hook checks that each target exists in the repository (a missing one is a warning, which fails
the strict build) and then either points the link at the repository browser, when mkdocs.yml sets
``repo_url`` (``<repo_url>/blob/main/<path>``), or, without it, ships a copy of the file with
the site under ``repo/<path>`` and links to that. Markdown files are copied with a ``.txt``
suffix (served as text, not rendered as pages); a link to a directory goes to its README.md.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.repo_links")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
LINK = re.compile(r"\]\((\.\./[^)#\s]+)(#[^)\s]*)?\)")


def _resolve(page_src: str, link: str) -> tuple[Path, str] | None:
    """(repository file, its path in the site) for a link that leaves docs/, else None."""
    target = (DOCS / page_src).parent.joinpath(link).resolve()
    if target.is_relative_to(DOCS) or not target.is_relative_to(ROOT) or not target.exists():
        return None
    if target.is_dir():
        target = target / "README.md"
        if not target.is_file():
            return None
    rel = target.relative_to(ROOT).as_posix()
    return target, f"repo/{rel}" + (".txt" if rel.endswith(".md") else "")


def on_files(files: Files, config: Any) -> Files:
    """Add a copy of every repository file a page links to (when there is no repo_url)."""
    if config.get("repo_url"):
        return files
    seen: set[str] = set()
    for page in list(files.documentation_pages()):
        for match in LINK.finditer(Path(page.abs_src_path or "").read_text(encoding="utf-8")):
            found = _resolve(page.src_uri, match.group(1))
            if found is not None and found[1] not in seen:
                seen.add(found[1])
                files.append(File.generated(config, found[1], abs_src_path=str(found[0])))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Rewrite ``](../path)`` links that leave docs/ (see the module docstring)."""
    repo_url = (config.get("repo_url") or "").rstrip("/")

    def rewrite(match: re.Match[str]) -> str:
        link, anchor = match.group(1), match.group(2) or ""
        if (DOCS / page.file.src_uri).parent.joinpath(link).resolve().is_relative_to(DOCS):
            return match.group(0)  # a page of this site: mkdocs checks it
        found = _resolve(page.file.src_uri, link)
        if found is None:
            log.warning("%s links to %s, which is not in the repository", page.file.src_uri, link)
            return match.group(0)
        target, site_path = found
        if repo_url:
            return f"]({repo_url}/blob/main/{target.relative_to(ROOT).as_posix()}{anchor})"
        page_dir = posixpath.dirname(page.file.src_uri)
        return f"]({posixpath.relpath(site_path, page_dir or '.')}{anchor})"

    return LINK.sub(rewrite, markdown)
