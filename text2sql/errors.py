"""Error types shared by the core and the command line; this module imports nothing of the project.

A `UserError` is something the user can fix (a path, a value, a choice): it is shown as one line, never as a
traceback. `text2sql.cli.CliError` is this class under its older name.
"""

from __future__ import annotations


class UserError(Exception):
    """A user error: printed as one line (exit status 2 for `text2sql VERB`, 1 for train.py)."""


class ConfigError(UserError, ValueError):
    """A config value of the wrong type or out of range; the message names the key."""
