#!/usr/bin/env python3
"""Run any allowed command once and measure it exactly (PID sentinel, binding, exec event).

Usage: RUN_ID=... TRACE_ID=... cmd_wrapper.py -- <command> [args]
The worker passes the task through the environment (docs/internals.md); see docs/node-side.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracekit.adapter import wrapper_main
from tracekit.errors import run_cli

if __name__ == "__main__":
    run_cli(lambda: wrapper_main(sys.argv[1:], "cmd_wrapper.py", __doc__), "cmd_wrapper.py")
