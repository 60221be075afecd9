#!/usr/bin/env python3
"""make demo: the whole Tracekit pipeline on an emulated N-node cluster (see --help)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))

from tracekit.demo import main
from tracekit.errors import run_cli

if __name__ == "__main__":
    run_cli(main, "demo")
