#!/usr/bin/env python3
"""Run one ffmpeg execution and measure it exactly (PID sentinel, binding, exec event).

Usage: RUN_ID=... TRACE_ID=... ffmpeg_wrapper.py -- ffmpeg [args]
Adds -nostdin when missing so ffmpeg never waits for a key; see docs/node-side.md for the environment.

A thin shim over ``tracekit.node.cli.ffmpeg_wrapper`` (also the ``[project.scripts]`` entry point).
"""

from tracekit.node.cli import ffmpeg_wrapper

if __name__ == "__main__":
    ffmpeg_wrapper()
