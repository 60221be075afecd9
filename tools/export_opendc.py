#!/usr/bin/env python3
"""CTS of a run -> OpenDC trace (tasks.parquet, fragments.parquet) + topology.json + experiment.json."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))

from tracekit.errors import UserError, run_cli
from tracekit.opendc import export


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Export a parsed run to OpenDC's workload format (explicit arrow schema: int32 ids, epoch-ms "
                    "submission, ms durations, MHz CPU, KB memory) plus a topology and an experiment file.")
    ap.add_argument("--input", required=True, metavar="DIR",
                    help="logs/RUN_ID (its CTS/ is used; raw logs are parsed first if there is no CTS yet)")
    ap.add_argument("--output", required=True, metavar="DIR", help="folder for the trace (created)")
    ap.add_argument("--include-failed", action="store_true",
                    help="also export executions that failed (default: successful ones only; fenced never)")
    ap.add_argument("--cpu-freq-mhz", type=float, metavar="MHZ",
                    help="per-core MHz for nodes whose metadata has no cpu_freq_mhz (no default)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args()
    if a.cpu_freq_mhz is not None and a.cpu_freq_mhz <= 0:
        raise UserError("--cpu-freq-mhz must be > 0")
    s = export(a.input, a.output, include_failed=a.include_failed, cpu_freq_mhz=a.cpu_freq_mhz,
               progress=not a.quiet and sys.stderr.isatty())
    print("\n".join(s.lines()))
    return 0


if __name__ == "__main__":
    run_cli(main, "export_opendc.py")
