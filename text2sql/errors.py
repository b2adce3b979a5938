"""Every user-facing exception type, shared by the core and the command line; imports nothing of the project.

A `UserError` is something the user can fix (a path, a value, a choice): `text2sql VERB` and train.py show it as
one line, never as a traceback. The subclasses say which stage refused.
"""

from __future__ import annotations


class UserError(Exception):
    """A user error: printed as one line (exit status 2 for `text2sql VERB`, 1 for train.py)."""


class ConfigError(UserError, ValueError):
    """A config value of the wrong type or out of range; the message names the key."""


class DataError(UserError, ValueError):
    """A dataset directory or file that cannot be read as its layout says (missing file, bad record)."""


class HardwareError(UserError):
    """The requested hardware is not on this machine."""


class ResumeError(UserError, ValueError):
    """A resume setting that cannot work."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, file size limit); the previous checkpoint file is intact."""


class MetricsFileError(UserError, ValueError):
    """A run's metrics.json exists but cannot be read as a JSON object."""
