#!/usr/bin/env python3
"""The original Tracekit's `make parse` script (RUN_ID from the environment): now parse_cts.py, same output folder.

A thin shim over ``tracekit.trace.cli.parse_sys`` (which runs the code of ``tracekit-parse``).
"""

import sys

try:
    from tracekit.trace.cli import parse_sys
except ModuleNotFoundError as exc:  # run outside the project's environment: say how, not a traceback
    print(f"parse_sys.py: error: Python module {exc.name!r} is missing for {sys.executable}: "
          "run `make setup`, then use .venv/bin/python (or activate .venv)", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    parse_sys()
