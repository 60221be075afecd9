#!/usr/bin/env python3
"""The original Tracekit's data (raw logs or CTS folders) -> a run folder of this toolkit, parsed and audited.

A thin shim over ``tracekit.trace.cli.import_original`` (also the ``[project.scripts]`` entry point).
"""

import sys

try:
    from tracekit.trace.cli import import_original
except ModuleNotFoundError as exc:  # run outside the project's environment: say how, not a traceback
    print(f"import_original.py: error: Python module {exc.name!r} is missing for {sys.executable}: "
          "run `make setup`, then use .venv/bin/python (or activate .venv)", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    import_original()
