#!/usr/bin/env python3
"""Load generator: drive HTTP requests at a service task and record one line per request (docs/services.md).

A thin shim over ``tracekit.control.cli.loadgen`` (also the ``[project.scripts]`` entry point).
"""

import sys

try:
    from tracekit.control.cli import loadgen
except ModuleNotFoundError as exc:  # run outside the project's environment: say how, not a traceback
    print(f"loadgen.py: error: Python module {exc.name!r} is missing for {sys.executable}: "
          "run `make setup`, then use .venv/bin/python (or activate .venv)", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    loadgen()
