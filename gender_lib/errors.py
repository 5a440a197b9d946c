"""One base class for every error a user can cause and fix (bad file, bad parameter, missing data).

The CLI prints these as one line and exits 2; anything else is a bug and keeps its traceback.
Each subclass also derives from the built-in it used to be (``ValueError``, ``FileNotFoundError``)
so callers catching those keep working.
"""

from __future__ import annotations

import os
from pathlib import Path


class GenderLibError(Exception):
    """A problem with the user's input or environment; the message says what and how to fix it."""


class UserFileNotFoundError(GenderLibError, FileNotFoundError):
    """A file or folder the user named (or a stage needs) is not there."""

    def __str__(self) -> str:  # FileNotFoundError(msg) prints plainly; keep it so
        return str(self.args[0]) if self.args else ""


class BadFileError(GenderLibError, ValueError):
    """A file that cannot be used as what it was given for; prints as ``<path>: <problem>``."""

    def __init__(self, path: str | os.PathLike[str], problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(GenderLibError, ValueError):
    """A parameter, config file or notebook parameter that is unknown or has a bad value."""
