#!/usr/bin/env python3
"""Run one ffmpeg execution and measure it exactly (PID sentinel, binding, exec event).

Usage: RUN_ID=... TRACE_ID=... ffmpeg_wrapper.py -- ffmpeg [args]
Adds -nostdin when missing so ffmpeg never waits for a key; see docs/node-side.md for the environment.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracekit.adapter import ffmpeg_fixup, wrapper_main
from tracekit.errors import run_cli

if __name__ == "__main__":
    run_cli(lambda: wrapper_main(sys.argv[1:], "ffmpeg_wrapper.py", __doc__, ffmpeg_fixup), "ffmpeg_wrapper.py")
