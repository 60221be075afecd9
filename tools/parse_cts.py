#!/usr/bin/env python3
"""Raw logs of a run (every node folder under logs/$RUN_ID/) -> logs/$RUN_ID/CTS/ + audit_report.md + plots."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))

from tracekit import audit, cts, paths
from tracekit.errors import EXIT_FAILURE, run_cli


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Parse and merge the raw logs of a run into CTS (invocations.jsonl, proc_metrics.jsonl, "
                    "nodes.json) and write audit_report.md with plots. Re-running gives identical files.")
    ap.add_argument("--run-id", help="run to parse (default: $RUN_ID, then run_id.env)")
    ap.add_argument("--input", "--logs-dir", dest="input", metavar="DIR",
                    help="the run folder itself (logs/RUN_ID); overrides --run-id/--logs")
    ap.add_argument("--logs", metavar="DIR",
                    help="logs root holding RUN_ID/ (default: $TRACEKIT_LOGS or logs/); without a run id, a run "
                         "folder is accepted too")
    ap.add_argument("--output", metavar="DIR", help="where CTS files go (default: <run folder>/CTS)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when an audit check FAILs")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--engine", choices=("python", "duckdb"), default="python",
                    help="python: columnar reader, streaming reader as reference and fallback (default); duckdb: "
                         "independent SQL implementation writing identical files (a cross-check)")
    a = ap.parse_args()
    if a.input:
        run_dir = Path(a.input)
    elif a.logs and not (a.run_id or os.environ.get("RUN_ID")) and cts.discover_nodes_quiet(Path(a.logs)):
        run_dir = Path(a.logs)  # --logs given the run folder itself (logs/RUN_ID)
    else:
        rid = paths.run_id(a.run_id)
        run_dir = Path(a.logs) / rid if a.logs else paths.run_dir(rid)
    r, checks, report = audit.parse_and_audit(run_dir, Path(a.output) if a.output else None,
                                              with_plots=not a.no_plots, progress=not a.quiet and sys.stderr.isatty(),
                                              engine=a.engine)
    verdict = audit.overall(checks)
    print(f"CTS: {r.out_dir} — {len(r.invocations)} invocation(s) from {len(r.nodes)} node(s), "
          f"{r.rows_written} proc_metrics row(s) from {r.samples_read} sample(s)")
    for c in checks:
        if c.verdict != audit.PASS:
            print(f"  {c.verdict} {c.name}: {c.summary}")
    print(f"audit: {verdict} — {report}")
    return EXIT_FAILURE if (a.strict and verdict == audit.FAIL) else 0


if __name__ == "__main__":
    run_cli(main, "parse_cts.py")
