"""The package version, importable from every layer without importing the package façade."""

__version__ = "0.1.0"
