"""The text transform example (uppercase, word count) in Rust and C."""

from __future__ import annotations

import json

import pytest

import plugsafe

from .conftest import PluginPath

SOURCES = ["committed", "fresh"]
LANGS = ["rust", "c"]


def reference_count(text: str) -> dict[str, int]:
    """Words split on ASCII whitespace; a last line without a newline still counts."""
    data = text.encode()
    ascii_space = b" \t\n\x0b\x0c\r"
    count, in_word = 0, False
    for b in data:
        space = b in ascii_space
        if not space and not in_word:
            count += 1
        in_word = not space
    lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    return {"words": count, "lines": lines, "chars": len(text)}


TEXTS = [
    "",
    "hello",
    "hello world\n",
    "  leading and trailing  ",
    "tabs\tand\nnewlines\r\nand\x0bvertical\x0cfeeds",
    "no final newline\nsecond line",
    "\n\n\n",
    "unicode: straße, 東京, émoji 🎉",
]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("lang", LANGS)
def test_word_count_matches_reference(
    host: plugsafe.Host, plugin_path: PluginPath, lang: str, source: str
) -> None:
    with host.load(plugin_path("text", lang, source), name="text") as plugin:
        for text in TEXTS:
            got = json.loads(plugin.call("word_count", text))
            assert got == reference_count(text), text


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("lang", LANGS)
def test_uppercase(host: plugsafe.Host, plugin_path: PluginPath, lang: str, source: str) -> None:
    with host.load(plugin_path("text", lang, source), name="text") as plugin:
        assert plugin.call("uppercase", "hello, World 42!") == b"HELLO, WORLD 42!"
        assert plugin.call("uppercase", b"") == b""
        text = "straße ǆ ﬁ émoji 🎉"
        # Rust upper-cases with Unicode's rules, like Python; the C version only ASCII letters.
        expected = text.upper() if lang == "rust" else text.encode().upper().decode()
        assert plugin.call("uppercase", text).decode() == expected


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("lang", LANGS)
def test_invalid_utf8_is_a_guest_error(
    host: plugsafe.Host, plugin_path: PluginPath, lang: str, source: str
) -> None:
    with host.load(plugin_path("text", lang, source), name="text") as plugin:
        for bad in (b"\xff", b"ok \xc3", b"\xed\xa0\x80", b"\xc0\xaf"):
            for function in ("uppercase", "word_count"):
                with pytest.raises(plugsafe.GuestError, match="not valid UTF-8"):
                    plugin.call(function, bad)
        # The instance is fine afterwards: errors are not traps.
        assert plugin.call("uppercase", "ok") == b"OK"
