#!/usr/bin/env python3
"""CTS of a run -> OpenDC trace (tasks.parquet, fragments.parquet) + topology.json + experiment.json.

A thin shim over ``tracekit.trace.cli.export_opendc`` (also the ``[project.scripts]`` entry point).
"""

import sys

try:
    from tracekit.trace.cli import export_opendc
except ModuleNotFoundError as exc:  # run outside the project's environment: say how, not a traceback
    print(f"export_opendc.py: error: Python module {exc.name!r} is missing for {sys.executable}: "
          "run `make setup`, then use .venv/bin/python (or activate .venv)", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    export_opendc()
