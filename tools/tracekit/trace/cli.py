"""Command-line entry points of the trace area (`tracekit-parse`, `tracekit-export-opendc`, `tracekit-export-perfetto`,
`tracekit-replay-opendc`).

Each parses its flags and calls one function of the area; the scripts under ``tools/`` and the
``[project.scripts]`` entry points both call these."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tracekit.core import paths
from tracekit.core.cli import command
from tracekit.core.errors import EXIT_FAILURE, UsageError
from tracekit.trace import audit
from tracekit.trace.export.opendc import export
from tracekit.trace.export.perfetto import export_timeline
from tracekit.trace.model import discover_nodes_quiet
from tracekit.trace.replay_io import OUTPUT_DIR, run_replay


@command("parse_cts.py")
def parse_cts(argv: list[str] | None = None) -> int:
    """`tracekit-parse` / `tools/parse_cts.py`."""
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
    a = ap.parse_args(argv)
    if a.input:
        run_dir = Path(a.input)
    elif a.logs and not (a.run_id or os.environ.get("RUN_ID")) and discover_nodes_quiet(Path(a.logs)):
        run_dir = Path(a.logs)  # --logs given the run folder itself (logs/RUN_ID)
    else:
        rid = paths.run_id(a.run_id)
        run_dir = Path(a.logs) / rid if a.logs else paths.run_dir(rid)
    r, checks, report = audit.parse_and_audit(run_dir, Path(a.output) if a.output else None,
                                              with_plots=not a.no_plots, progress=not a.quiet and sys.stderr.isatty())
    verdict = audit.overall(checks)
    print(f"CTS: {r.out_dir} — {len(r.invocations)} invocation(s) from {len(r.nodes)} node(s), "
          f"{r.rows_written} proc_metrics row(s) from {r.samples_read} sample(s)")
    for c in checks:
        if c.verdict != audit.PASS:
            print(f"  {c.verdict} {c.name}: {c.summary}")
    print(f"audit: {verdict} — {report}")
    return EXIT_FAILURE if (a.strict and verdict == audit.FAIL) else 0


@command("export_opendc.py")
def export_opendc(argv: list[str] | None = None) -> int:
    """`tracekit-export-opendc` / `tools/export_opendc.py`."""
    ap = argparse.ArgumentParser(
        description="Export a parsed run to OpenDC's workload format (explicit arrow schema: int32 ids, epoch-ms "
                    "submission, ms durations, MHz CPU, KB memory) plus a topology and an experiment file.")
    ap.add_argument("--input", required=True, metavar="DIR",
                    help="logs/RUN_ID (its CTS/ is used; raw logs are parsed first if there is no CTS yet)")
    ap.add_argument("--output", required=True, metavar="DIR", help="folder for the trace (created)")
    ap.add_argument("--include-failed", action="store_true",
                    help="also export executions that failed (default: successful ones only)")
    ap.add_argument("--include-lost", action="store_true",
                    help="also export lost attempts (executions superseded by a retry after their node or worker was "
                         "lost), so the capacity they held until the re-queue is visible")
    ap.add_argument("--app-only", action="store_true",
                    help="durations of the application alone (ts_start -> ts_end) instead of the slot each task held "
                         "(placement -> capacity release)")
    ap.add_argument("--cpu-freq-mhz", type=float, metavar="MHZ",
                    help="per-core MHz for nodes whose metadata has no cpu_freq_mhz (no default)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    if a.cpu_freq_mhz is not None and a.cpu_freq_mhz <= 0:
        raise UsageError("--cpu-freq-mhz must be > 0")
    s = export(a.input, a.output, include_failed=a.include_failed, cpu_freq_mhz=a.cpu_freq_mhz,
               progress=not a.quiet and sys.stderr.isatty(), app_only=a.app_only, include_lost=a.include_lost)
    print("\n".join(s.lines()))
    return 0


@command("export_perfetto.py")
def export_perfetto(argv: list[str] | None = None) -> int:
    """`tracekit-export-perfetto` / `tools/export_perfetto.py`."""
    ap = argparse.ArgumentParser(description="Write a timeline of a parsed run for ui.perfetto.dev / chrome://tracing.")
    ap.add_argument("--input", required=True, metavar="DIR", help="logs/RUN_ID (or its CTS folder)")
    ap.add_argument("--output", metavar="FILE", help="timeline JSON (default: <input>/timeline.json)")
    ap.add_argument("--max-points", type=int, default=20000,
                    help="CPU counter points per node before averaging into bins (default 20000)")
    a = ap.parse_args(argv)
    if a.max_points < 10:
        raise UsageError("--max-points must be >= 10")
    out = Path(a.output) if a.output else Path(a.input) / "timeline.json"
    res = export_timeline(a.input, out, max_points=a.max_points)
    print(f"timeline: {res['output']} — {res['slices']} slice(s), {res['counters']} CPU counter point(s), "
          f"{res['nodes']} node(s); open it at https://ui.perfetto.dev")
    return 0


@command("replay_opendc.py")
def replay_opendc(argv: list[str] | None = None) -> int:
    """`tracekit-replay-opendc` / `tools/replay_opendc.py`."""
    ap = argparse.ArgumentParser(
        description="Replay an exported OpenDC trace under OpenDC's own rules (FIFO with head-of-line blocking, the "
                    "experiment's allocation policy, NoDelay, OpenDC's 1 s scheduling grid and a 1 ms grid), write "
                    "OpenDC's task.parquet for each grid, compare with the real run and add a 'Replay (OpenDC "
                    "rules)' section with a verdict to CTS/audit_report.md.")
    ap.add_argument("--input", required=True, metavar="DIR",
                    help="the exported trace folder (logs/RUN_ID/opendc: tasks.parquet, fragments.parquet, "
                         "experiment.json)")
    ap.add_argument("--experiment", metavar="FILE",
                    help="SDK-model experiment to replay with (default: <input>/experiment.json)")
    ap.add_argument("--cts", metavar="DIR",
                    help="the real run to compare with: logs/RUN_ID or its CTS folder (default: <input>/../CTS "
                         "when it exists)")
    ap.add_argument("--output", metavar="DIR",
                    help=f"where the OpenDC-style output goes (default: <input>/../{OUTPUT_DIR})")
    ap.add_argument("--no-report", action="store_true", help="leave audit_report.md alone")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the verdict is FAIL")
    a = ap.parse_args(argv)
    res = run_replay(a.input, a.experiment, a.cts, a.output, update_report=not a.no_report)
    print("\n".join(res.lines()))
    return EXIT_FAILURE if (a.strict and res.verdict == audit.FAIL) else 0
