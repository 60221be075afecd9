#!/usr/bin/env python3
"""Synthesise test input videos: H.264 yuv420p, ~8 Mbps, GOP 90; a third each without / low / medium noise.

A thin shim over ``tracekit.node.cli.generate_test_videos`` (also the ``[project.scripts]`` entry point).
"""

import sys

try:
    from tracekit.node.cli import generate_test_videos
except ModuleNotFoundError as exc:  # run outside the project's environment: say how, not a traceback
    print(f"generate_test_videos.py: error: Python module {exc.name!r} is missing for {sys.executable}: "
          "run `make setup`, then use .venv/bin/python (or activate .venv)", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    generate_test_videos()
