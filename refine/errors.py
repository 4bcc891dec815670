"""The errors refine raises for problems the user can fix.

Every message names the thing that is wrong (a path, a column, a class, a value) and
says how to fix it. The CLI turns any ``RefineError`` into that message and exit code 2;
anything else is a bug in refine and keeps its traceback.
"""

from __future__ import annotations


class RefineError(Exception):
    """Base class of every error caused by input or configuration."""


class InputError(RefineError, ValueError):
    """The input data cannot be read or does not fit what refine needs."""


class ConfigError(RefineError, ValueError):
    """An option has a value refine cannot use."""


class OutputError(RefineError, OSError):
    """The output location cannot be written as asked."""


class WorkerError(RefineError, RuntimeError):
    """A worker process (``--workers``) died before it finished its fold."""
