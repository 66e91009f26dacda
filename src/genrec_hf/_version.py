"""The package version, in a module of its own so lower layers (`integrity`, `serving.export`) can record it
without importing the package root."""

__version__ = "0.2.0"
