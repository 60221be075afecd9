#!/usr/bin/env python3
"""OpenDC result (task.parquet, host.parquet) vs the real run's CTS -> PASS/FAIL report (Markdown, JSON) + plots.

A thin shim over ``tracekit.trace.cli.compare_opendc`` (also the ``[project.scripts]`` entry point).
"""

import sys

try:
    from tracekit.trace.cli import compare_opendc
except ModuleNotFoundError as exc:  # run outside the project's environment: say how, not a traceback
    print(f"compare_opendc.py: error: Python module {exc.name!r} is missing for {sys.executable}: "
          "run `make setup`, then use .venv/bin/python (or activate .venv)", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    compare_opendc()
