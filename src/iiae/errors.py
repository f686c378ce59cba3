"""User-facing errors.

Every mistake a user can make (a bad file, a bad config value, an unwritable folder) raises a subclass of
:class:`IIAEError` whose message names the file or key and says what was expected. The command line turns
these into one line on stderr and a non-zero exit status; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

MESSAGE_LIMIT = 1000  # characters of an error message; a longer one (it quotes a huge value) is cut in the middle


def bounded(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """``message`` cut in the middle to at most about ``limit`` characters, saying how much was left out."""
    if len(message) <= limit:
        return message
    keep = (limit - 40) // 2
    return f"{message[:keep]} ...[{len(message) - 2 * keep:,} characters cut]... {message[-keep:]}"


class IIAEError(Exception):
    """Base class of every error caused by the user's input rather than by a bug. Its message is bounded
    (:func:`bounded`): whatever value a message quotes, the one line the command line prints stays short."""

    def __init__(self, *args: object) -> None:
        if args and isinstance(args[0], str):
            args = (bounded(args[0]), *args[1:])
        super().__init__(*args)


class ConfigError(IIAEError, ValueError):
    """A configuration file or value is wrong: unknown key, wrong type, out of range."""


class DataError(IIAEError, ValueError):
    """A dataset file or folder is missing, truncated or not in the expected format."""


class CheckpointError(IIAEError, ValueError):
    """A model or checkpoint file is missing, corrupted or belongs to another model."""


class OutputError(IIAEError, OSError):
    """An output folder cannot be written, or already holds something that must not be overwritten."""


class NonFiniteError(IIAEError, ArithmeticError):
    """A loss term or a gradient became NaN or infinite during training (see :mod:`iiae.engine.guards`)."""


class RunInterrupted(IIAEError):
    """Training was stopped by SIGTERM or Ctrl-C after writing a checkpoint; ``exit_status`` is 128 + signal."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status
