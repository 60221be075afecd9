#!/usr/bin/env python3
"""Run one ffmpeg execution and measure it exactly (PID sentinel, binding, exec event).

Usage: RUN_ID=... TRACE_ID=... ffmpeg_wrapper.py -- ffmpeg [args]
Adds -nostdin when missing so ffmpeg never waits for a key; see docs/node-side.md for the environment.

A thin shim over ``tracekit.node.cli.ffmpeg_wrapper`` (also the ``[project.scripts]`` entry point).
"""

import sys

try:
    from tracekit.node.cli import ffmpeg_wrapper
except ModuleNotFoundError as exc:  # run outside the project's environment: say how, not a traceback
    print(f"ffmpeg_wrapper.py: error: Python module {exc.name!r} is missing for {sys.executable}: "
          "run `make setup`, then use .venv/bin/python (or activate .venv)", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    ffmpeg_wrapper()
