#!/usr/bin/env python3
"""CTS of a run -> Chrome trace-event JSON (open it in ui.perfetto.dev): tasks per node and slot, CPU counters.

A thin shim over ``tracekit.trace.cli.export_perfetto`` (also the ``[project.scripts]`` entry point).
"""

import sys

try:
    from tracekit.trace.cli import export_perfetto
except ModuleNotFoundError as exc:  # run outside the project's environment: say how, not a traceback
    print(f"export_perfetto.py: error: Python module {exc.name!r} is missing for {sys.executable}: "
          "run `make setup`, then use .venv/bin/python (or activate .venv)", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    export_perfetto()
