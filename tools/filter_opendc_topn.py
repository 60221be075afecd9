#!/usr/bin/env python3
"""Keep the earliest N tasks of an OpenDC export and their fragments (the original Tracekit's script, same flags).

A thin shim over ``tracekit.trace.cli.filter_opendc_topn`` (also the ``[project.scripts]`` entry point).
"""

import sys

try:
    from tracekit.trace.cli import filter_opendc_topn
except ModuleNotFoundError as exc:  # run outside the project's environment: say how, not a traceback
    print(f"filter_opendc_topn.py: error: Python module {exc.name!r} is missing for {sys.executable}: "
          "run `make setup`, then use .venv/bin/python (or activate .venv)", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    filter_opendc_topn()
