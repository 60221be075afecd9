"""Expected failures and the one place that turns them into a clear one-line error."""

from __future__ import annotations

import sys
from typing import Callable

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


def run_cli(main: Callable[[], int | None], prog: str) -> None:
    """Run a script's ``main`` and exit; expected failures print ``prog: error: ...`` only."""
    try:
        code = main()
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(exc.code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        sys.exit(EXIT_OK)
    sys.exit(code or EXIT_OK)
