"""The package's version, in a module of its own: the root package re-exports it, and the modules it
re-exports from (:mod:`csc_cli.checkpoint`) can read it without importing the root (a circle)."""

__version__ = "0.1.0"
