"""Errors by kind: a user's mistake is a :class:`UserError`, everything else is a bug.

``python -m lnpo.main`` (and the other entry points) catch :class:`UserError` alone and print
its message as one line (``lnpo: error: <message>``, exit status 2); any other exception keeps
its traceback. Each kind also derives from the built-in exception a caller would expect
(``ValueError``, ``FileNotFoundError``), so ``except ValueError`` keeps working.

The message is the whole report: one line that names the config field, the data file and
line, or the checkpoint file, the offending value and what is allowed.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input the user can fix; ``main`` prints the message alone and exits 2."""


class ConfigError(UserError, ValueError):
    """An invalid config field: the message names ``config.<field>``, the value and what is allowed."""


class DataError(UserError, ValueError):
    """Unusable data: the message names the file (and the 1-based line or row) and what is wrong."""


class ModelError(UserError, ValueError):
    """An unusable model or tokenizer directory: the message names the directory or file."""


class CheckpointError(UserError, ValueError):
    """No usable checkpoint or cache: the message names the directory or file."""


class InputNotFound(UserError, FileNotFoundError):
    """A path the config names does not exist: the message names the field and the path."""


class LostPeer(UserError, RuntimeError):
    """Another process of a multi-process job is gone (``main`` exits 3, not 2)."""


class SweepError(ConfigError):
    """An invalid sweep config: the message names ``sweep.<field>`` (or the override), the value and what is allowed."""
