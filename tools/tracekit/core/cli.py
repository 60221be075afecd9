"""The command-line boundary: the one place that turns expected failures into a one-line error and an exit code."""

from __future__ import annotations

import functools
import sys
from typing import Callable

from tracekit.core.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, RunFailed, TracekitError

Main = Callable[..., "int | None"]


def exit_code(exc: TracekitError) -> int:
    """The exit code a command ends with for ``exc``: 1 when the run failed, else 2 (a usage or input error)."""
    if isinstance(exc, RunFailed):
        return EXIT_FAILURE
    return EXIT_USAGE


def run_cli(main: Callable[[], int | None], prog: str) -> None:
    """Run a script's ``main`` and exit; expected failures print ``prog: error: ...`` only."""
    try:
        code = main()
    except TracekitError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(exit_code(exc))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        sys.exit(EXIT_OK)
    sys.exit(code or EXIT_OK)


def command(prog: str) -> Callable[[Main], Callable[..., None]]:
    """Make ``main(argv=None) -> int`` a command: called with no argument (an entry point or a shim), it parses
    ``sys.argv`` and exits with ``main``'s code; expected failures print ``prog: error: ...`` only."""

    def wrap(main: Main) -> Callable[..., None]:
        @functools.wraps(main)
        def entry(argv: list[str] | None = None) -> None:
            run_cli(lambda: main(argv), prog)

        return entry

    return wrap
