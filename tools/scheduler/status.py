#!/usr/bin/env python3
"""Control-plane status: per node cap / cap_total / run_count / alive, queue lengths, the head task and why it
waits, done and failed counts. --watch refreshes it.

A thin shim over ``tracekit.control.cli.show_status`` (also the ``[project.scripts]`` entry point).
"""

import sys

try:
    from tracekit.control.cli import show_status
except ModuleNotFoundError as exc:  # run outside the project's environment: say how, not a traceback
    print(f"status.py: error: Python module {exc.name!r} is missing for {sys.executable}: "
          "run `make setup`, then use .venv/bin/python (or activate .venv)", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    show_status()
