"""Expected failures: the exceptions library code raises.

Library code raises one of the classes below, with the fields that say what went wrong; it never picks an exit
code. ``tracekit.core.cli`` is the one place that turns them into a one-line message and an exit code
(``exit_code``). Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

# Exit codes of every command (documented in the README, "Exit codes").
EXIT_OK = 0
EXIT_FAILURE = 1  # the run finished but something failed (a task, a --strict check)
EXIT_USAGE = 2  # bad flag, bad input, Redis unreachable or password rejected
EXIT_INTERRUPTED = 130


class TracekitError(Exception):
    """An expected failure: shown to the user as one line, never as a traceback."""


class UsageError(TracekitError):
    """A bad flag, option value or environment setting."""


class BadInput(TracekitError):
    """A file or folder the user named is missing, unreadable or malformed (a corrupt video, a bad profiles file)."""

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = path


class BadTask(TracekitError):
    """A task payload that fails validation (unknown profile, a path outside its root, a bad field)."""

    def __init__(self, message: str, trace_id: str | None = None) -> None:
        super().__init__(message)
        self.trace_id = trace_id


class BadRunFolder(TracekitError):
    """A run folder (``logs/$RUN_ID``) or a CTS folder that is missing, empty or not what the step needs."""

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = path


class RedisUnavailable(TracekitError):
    """Redis cannot be reached, refuses the password, or answers with an error the step cannot get past."""


class DependencyMissing(TracekitError):
    """A program or Python package the step needs is not installed (ffmpeg, redis-server, duckdb, ...)."""

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class Unsupported(TracekitError):
    """This machine cannot do what was asked (no network namespaces, no cgroup controller, not root, ...)."""


class Conflict(TracekitError):
    """Something already running or already there stands in the way (a live worker, a pidfile, a busy port)."""


class StepFailed(TracekitError):
    """A step the command depends on did not complete: a child process failed or a wait timed out (see its log)."""


class RunFailed(TracekitError):
    """The run itself finished, but the result is a failure (a lost task, a failed check)."""
