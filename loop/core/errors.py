"""Expected failures of tutorloop: each is reported by the CLI as one line with its exit code.

Kept free of imports so every layer (store, actors, loop) can raise them.
"""

EXIT_FAILURE = 1
EXIT_USAGE = 2


class TutorloopError(Exception):
    """An expected failure; the CLI prints its message as one line and exits with `exit_code`."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(TutorloopError, ValueError):
    """A config file or override is invalid; the message names the file and key."""

    exit_code = EXIT_USAGE


class DataError(TutorloopError, ValueError):
    """A data file is missing or malformed; the message names the file (and line)."""


class RunError(TutorloopError, RuntimeError):
    """A run cannot go on as asked (exists already, config changed since it started, no history)."""


class StoreError(TutorloopError, RuntimeError):
    """The history file cannot be used: locked too long by another process, or a schema this version cannot read."""


class ReadOnlyQueryError(TutorloopError, ValueError):
    """A query tried to change the history; `tutorloop sql` only reads."""

    exit_code = EXIT_USAGE
