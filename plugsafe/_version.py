"""The package version (one place; pyproject.toml must agree)."""

__version__ = "0.1.0"
