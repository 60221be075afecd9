"""Expected failures: the exceptions library code raises (``tracekit.core.cli`` turns them into one line)."""

from __future__ import annotations

# Exit codes (documented in README "Exit codes").
EXIT_OK = 0
EXIT_FAILURE = 1  # the run finished but something failed (a task, a --strict check)
EXIT_USAGE = 2  # bad flag, bad input, Redis unreachable or password rejected
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """An expected failure: shown to the user as one line, never as a traceback."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code
