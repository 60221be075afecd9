#!/usr/bin/env python3
"""An exported OpenDC trace -> its replay under OpenDC's rules (task.parquet per grid) + a verdict in the audit report.

A thin shim over ``tracekit.trace.cli.replay_opendc`` (also the ``[project.scripts]`` entry point).
"""

import sys

try:
    from tracekit.trace.cli import replay_opendc
except ModuleNotFoundError as exc:  # run outside the project's environment: say how, not a traceback
    print(f"replay_opendc.py: error: Python module {exc.name!r} is missing for {sys.executable}: "
          "run `make setup`, then use .venv/bin/python (or activate .venv)", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    replay_opendc()
