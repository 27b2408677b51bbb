"""User-facing errors: each one is printed as a single line with the fix, no traceback."""

from __future__ import annotations


class MarioError(Exception):
    """An error the user can fix; the message says how. Exit code 1."""

    exit_code = 1


class ConfigError(MarioError):
    """A bad config value, key, file or flag. Exit code 2, like a usage error."""

    exit_code = 2


class UnknownComponentError(ConfigError):
    """A plugin component name that no plugin registered."""


class EnvWorkerError(MarioError):
    """An env worker process crashed or stopped answering."""


class CheckpointError(MarioError):
    """A checkpoint that is missing, truncated, foreign or incompatible."""


class NonFiniteLossError(MarioError):
    """A NaN or infinite loss: the update is refused and the run stops."""


def first_line(exc: BaseException, limit: int = 160, sentence: bool = False) -> str:
    """An exception's message as one short line (its first sentence if ``sentence``),
    for a one-line error that wraps another library's."""
    text = str(exc).strip()
    text = text.splitlines()[0] if text else type(exc).__name__
    if sentence:
        text = text.split(". ")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."
