#!/usr/bin/env python3
"""The explicit application boundary: replaces itself (exec) with the system ffmpeg, same arguments.

Usage: ffmpeg_app.py [ffmpeg args]   (FFMPEG_BIN overrides the binary; default: ffmpeg on PATH)
Being an exec, the process keeps its PID, so the adapter's sentinel and rusage stay exact.
"""

from __future__ import annotations

import os
import shutil
import sys

if __name__ == "__main__":
    if sys.argv[1:] == ["--help"]:
        print(__doc__.strip())
        sys.exit(0)
    binary = os.environ.get("FFMPEG_BIN") or shutil.which("ffmpeg")
    if not binary:
        print("ffmpeg_app.py: error: ffmpeg not found (apt-get install -y ffmpeg, or set FFMPEG_BIN)", file=sys.stderr)
        sys.exit(2)
    try:
        os.execv(binary, [binary, *sys.argv[1:]])
    except OSError as exc:
        print(f"ffmpeg_app.py: error: cannot execute {binary}: {exc.strerror}", file=sys.stderr)
        sys.exit(2)
