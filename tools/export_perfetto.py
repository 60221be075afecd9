#!/usr/bin/env python3
"""CTS of a run -> Chrome trace-event JSON (open it in ui.perfetto.dev): tasks per node and slot, CPU counters."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))

from tracekit.errors import UserError, run_cli
from tracekit.perfetto import export_timeline


def main() -> int:
    ap = argparse.ArgumentParser(description="Write a timeline of a parsed run for ui.perfetto.dev / chrome://tracing.")
    ap.add_argument("--input", required=True, metavar="DIR", help="logs/RUN_ID (or its CTS folder)")
    ap.add_argument("--output", metavar="FILE", help="timeline JSON (default: <input>/timeline.json)")
    ap.add_argument("--max-points", type=int, default=20000,
                    help="CPU counter points per node before averaging into bins (default 20000)")
    a = ap.parse_args()
    if a.max_points < 10:
        raise UserError("--max-points must be >= 10")
    out = Path(a.output) if a.output else Path(a.input) / "timeline.json"
    res = export_timeline(a.input, out, max_points=a.max_points)
    print(f"timeline: {res['output']} — {res['slices']} slice(s), {res['counters']} CPU counter point(s), "
          f"{res['nodes']} node(s); open it at https://ui.perfetto.dev")
    return 0


if __name__ == "__main__":
    run_cli(main, "export_perfetto.py")
