"""The package version, in this one place: setuptools reads it for the distribution's metadata
(``dynamic = ["version"]`` in pyproject.toml) and ``plugsafe.__version__`` re-exports it."""

__version__ = "0.1.0"
