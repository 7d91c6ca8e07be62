"""One base class for bad input, so the command can tell "the user's fix" from "a bug" by type.

The `distill3d` command prints a `UserError` as one line (problem and fix) and exits 2; anything else is a bug
and keeps its traceback. Each layer subclasses it for its own kind of bad input.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user; the message is one line that names the problem and the fix."""


class ConfigError(UserError, ValueError):
    """A configuration value that is unknown, mistyped or impossible."""


class InputFileError(UserError, FileNotFoundError):
    """A file or run directory named on the command line is missing or unreadable."""
