"""Fuzzing: wasm-tools smith modules and hypothesis-built hostile ABI guests (see README.md)."""
