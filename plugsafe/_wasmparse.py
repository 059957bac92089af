"""Compatibility name for :mod:`plugsafe._wasmbin`, the one binary reader (to be removed).

``_plugin`` still imports ``MemoryDecl`` from here; once it imports from ``_wasmbin`` this file
goes.
"""

from __future__ import annotations

from ._wasmbin import WASM_MAGIC, MemoryDecl, parse_memories

__all__ = ["MemoryDecl", "WASM_MAGIC", "parse_memories"]
