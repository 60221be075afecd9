#!/usr/bin/env python3
"""Raw logs of a run (every node folder under logs/$RUN_ID/) -> logs/$RUN_ID/CTS/ + audit_report.md + plots.

A thin shim over ``tracekit.trace.cli.parse_cts`` (also the ``[project.scripts]`` entry point).
"""

import sys

try:
    from tracekit.trace.cli import parse_cts
except ModuleNotFoundError as exc:  # run outside the project's environment: say how, not a traceback
    print(f"parse_cts.py: error: Python module {exc.name!r} is missing for {sys.executable}: "
          "run `make setup`, then use .venv/bin/python (or activate .venv)", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    parse_cts()
