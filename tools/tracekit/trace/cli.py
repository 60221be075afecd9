"""Command-line entry points of the trace area (`tracekit-parse`, `tracekit-import-original`, `tracekit-export-opendc`,
`tracekit-export-perfetto`, `tracekit-replay-opendc`, `tracekit-compare-opendc`).

Each parses its flags and calls one function of the area; the scripts under ``tools/`` and the
``[project.scripts]`` entry points both call these."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tracekit.core import env, paths
from tracekit.core.cli import command
from tracekit.core.errors import EXIT_FAILURE, RunFailed, UsageError
from tracekit.trace import audit
from tracekit.trace import compare as cmp
from tracekit.trace.export.opendc import SMALL_DATACENTER_FORMATS, TASK_ID_MODES, export
from tracekit.trace.export.perfetto import export_timeline
from tracekit.trace.export.topn import filter_topn
from tracekit.trace.legacy_io import IMPORT_DIR, find_original, import_and_parse
from tracekit.trace.model import discover_nodes_quiet
from tracekit.trace.replay_io import OUTPUT_DIR, run_replay
from tracekit.trace.sim_vs_real import compare


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
    elif a.logs and not (a.run_id or os.environ.get("RUN_ID")) and (discover_nodes_quiet(Path(a.logs))
                                                                     or find_original(Path(a.logs))):
        run_dir = Path(a.logs)  # --logs given the run folder itself (logs/RUN_ID)
    else:
        rid = paths.run_id(a.run_id)
        run_dir = Path(a.logs) / rid if a.logs else paths.run_dir(rid)
    progress = not a.quiet and sys.stderr.isatty()
    if find_original(run_dir):  # the original Tracekit's raw logs or CTS: import, then parse the import
        res, r, checks, report = import_and_parse(run_dir, cts_out=Path(a.output) if a.output else None,
                                                  with_plots=not a.no_plots, progress=progress)
        print(res.lines()[0])
    else:
        r, checks, report = audit.parse_and_audit(run_dir, Path(a.output) if a.output else None,
                                                  with_plots=not a.no_plots, progress=progress)
    verdict = audit.overall(checks)
    print(f"CTS: {r.out_dir} — {len(r.invocations)} invocation(s) from {len(r.nodes)} node(s), "
          f"{r.rows_written} proc_metrics row(s) from {r.samples_read} sample(s)")
    for c in checks:
        if c.verdict != audit.PASS:
            print(f"  {c.verdict} {c.name}: {c.summary}")
    print(f"audit: {verdict} — {report}")
    return EXIT_FAILURE if (a.strict and verdict == audit.FAIL) else 0


@command("import_original.py")
def import_original(argv: list[str] | None = None) -> int:
    """`tracekit-import-original` / `tools/import_original.py`."""
    ap = argparse.ArgumentParser(
        description="Import data of the original Tracekit (a worker's logs/RUN_ID with node_meta.json, "
                    "proc_metrics.jsonl, events.ffmpeg.jsonl / events.jsonl; several such folders gathered under one "
                    "folder; or its CTS folders) into a run folder of this toolkit, then parse and audit it. What the "
                    "old data cannot give (exact CPU totals, tail intervals, the task's trace id, ...) is listed in "
                    "the audit's 'Imported data' section. parse_cts.py and export_opendc.py do this by themselves "
                    "when given such a folder.")
    ap.add_argument("--input", required=True, metavar="DIR", help="the original's folder (raw logs and/or CTS)")
    ap.add_argument("--output", metavar="DIR",
                    help=f"run folder to write (default: <input>/{IMPORT_DIR}; a previous import there is replaced)")
    ap.add_argument("--clk-tck", type=int, metavar="N",
                    help="CLK_TCK of the workers' kernels (the original did not record it; default 100)")
    ap.add_argument("--no-parse", action="store_true", help="only convert (then: tools/parse_cts.py --input DIR)")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    a = ap.parse_args(argv)
    if a.clk_tck is not None and a.clk_tck <= 0:
        raise UsageError("--clk-tck must be > 0")
    if a.no_parse:
        from tracekit.trace.legacy_io import import_original as convert

        print("\n".join(convert(a.input, a.output, a.clk_tck).lines()))
        return 0
    res, r, checks, report = import_and_parse(a.input, a.output, a.clk_tck, with_plots=not a.no_plots,
                                              progress=sys.stderr.isatty())
    print("\n".join(res.lines()))
    print(f"CTS: {r.out_dir} — {len(r.invocations)} invocation(s), {r.rows_written} proc_metrics row(s)")
    print(f"audit: {audit.overall(checks)} — {report}")
    return 0


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
                    help="per-core MHz for nodes whose metadata has no cpu_freq_mhz (default: $CPU_FREQ_MHZ, the "
                         "original's variable; else none)")
    ap.add_argument("--task-id-mode", choices=TASK_ID_MODES, default="dense",
                    help="task ids: dense 0..n-1 (default); the original Tracekit's: pid (the PIDs; refused when they "
                         "repeat), sequential (1..n), auto (pid when unique, else sequential; its default)")
    ap.add_argument("--small-datacenter", choices=SMALL_DATACENTER_FORMATS, default="tracekit",
                    help="format of small_datacenter.json: tracekit (= topology.json, default) or original (the "
                         "original Tracekit's: cluster C01, hosts H01.. aggregated by spec, MHz and bytes)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    if a.cpu_freq_mhz is not None and a.cpu_freq_mhz <= 0:
        raise UsageError("--cpu-freq-mhz must be > 0")
    if a.cpu_freq_mhz is None:
        a.cpu_freq_mhz = env.cpu_freq_mhz()
    s = export(a.input, a.output, include_failed=a.include_failed, cpu_freq_mhz=a.cpu_freq_mhz,
               progress=not a.quiet and sys.stderr.isatty(), app_only=a.app_only, include_lost=a.include_lost,
               task_id_mode=a.task_id_mode, small_datacenter=a.small_datacenter)
    print("\n".join(s.lines()))
    return 0


@command("filter_opendc_topn.py")
def filter_opendc_topn(argv: list[str] | None = None) -> int:
    """`tracekit-filter-topn` / `tools/filter_opendc_topn.py` (the original Tracekit's script, same flags)."""
    ap = argparse.ArgumentParser(
        description="Keep the earliest N tasks (by submission_time) of an exported OpenDC trace and exactly their "
                    "fragments, same schemas; topology.json, small_datacenter.json and experiment.json are copied.")
    ap.add_argument("--input", required=True, metavar="DIR", help="export_opendc.py output (tasks/fragments.parquet)")
    ap.add_argument("--output", required=True, metavar="DIR", help="folder for the filtered trace (created)")
    ap.add_argument("--topn", type=int, default=20, help="tasks to keep (default 20)")
    a = ap.parse_args(argv)
    kept, total, fkept, ftotal = filter_topn(a.input, a.output, a.topn)
    print(f"Filtered tasks: {kept} kept out of {total}")
    print(f"Fragments kept: {fkept} out of {ftotal}")
    return 0


@command("parse_sys.py")
def parse_sys(argv: list[str] | None = None) -> int:
    """`tools/parse_sys.py`: the original Tracekit's `make parse` script, bridged to `parse_cts.py`."""
    ap = argparse.ArgumentParser(
        description="The original Tracekit's parse script (RUN_ID from the environment, else run_id.env, else the "
                    "newest folder under logs/), now parse_cts.py: it parses logs/$RUN_ID into logs/$RUN_ID/CTS, "
                    "this toolkit's node folders or the original's per-worker files alike (NODE_ID and STAGE come "
                    "from each node's metadata). Other flags: parse_cts.py --help.")
    _, rest = ap.parse_known_args(argv)  # every other flag is parse_cts.py's
    if "--run-id" not in rest and "--input" not in rest and not os.environ.get("RUN_ID") \
            and not paths.read_run_id_file():
        root = paths.logs_root()
        runs = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        if runs:  # as the original did: the newest run folder (names are UTC timestamps)
            rest = ["--run-id", runs[-1], *rest]
    return parse_cts.__wrapped__(rest)  # the same code, errors under this script's name


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


@command("compare_opendc.py")
def compare_opendc(argv: list[str] | None = None) -> int:
    """`tracekit-compare-opendc` / `tools/compare_opendc.py`."""
    d = cmp.Thresholds()
    ap = argparse.ArgumentParser(
        description="Compare an OpenDC result (task.parquet, host.parquet if present; or the replay's, same schema) "
                    "with the real run: makespan, per-task start and wait errors, wait percentiles + KS test, "
                    "cumulative throughput, CPU per node. Writes compare_report.md/.json and plots; exit 0 unless "
                    "--strict and a check FAILs (1).")
    ap.add_argument("--opendc", required=True, metavar="PATH",
                    help="OpenDC output folder (task.parquet is searched below it, e.g. "
                         "output/<name>/raw-output/<run>/seed=<n>/) or the task.parquet itself")
    ap.add_argument("--input", required=True, metavar="DIR", help="the run: logs/RUN_ID (its CTS/) or a CTS folder")
    ap.add_argument("--output", metavar="DIR", help="report folder (default: <folder of task.parquet>/compare)")
    ap.add_argument("--trace", metavar="DIR",
                    help="the exported trace (tasks.parquet) to map task_id to names when the result has no names")
    ap.add_argument("--real-start", choices=("auto", "dispatch", "exec"), default="auto",
                    help="real counterpart of OpenDC's schedule_time: placement (ts_dispatch), exec (ts_start), or "
                         "auto: whichever the simulated durations match (default auto)")
    ap.add_argument("--bin-s", type=float, metavar="S",
                    help="bin width for throughput and CPU (default: a round width giving <= 100 bins; CPU bins at "
                         "least the export interval)")
    g = ap.add_argument_group("criteria (defaults: the original Tracekit's)")
    g.add_argument("--wait-p50", type=float, default=d.wait_rel[50], metavar="F",
                   help=f"max relative error of the wait p50 (default {d.wait_rel[50]:g})")
    g.add_argument("--wait-p95", type=float, default=d.wait_rel[95], metavar="F",
                   help=f"... p95 (default {d.wait_rel[95]:g})")
    g.add_argument("--wait-p99", type=float, default=d.wait_rel[99], metavar="F",
                   help=f"... p99 (default {d.wait_rel[99]:g})")
    g.add_argument("--wait-floor-ms", type=float, default=d.wait_floor_ms, metavar="MS",
                   help="a real wait percentile below this is divided by this instead: OpenDC schedules on a 1 s grid "
                        f"(default {d.wait_floor_ms:g}; 0 = plain relative error)")
    g.add_argument("--ks-alpha", type=float, default=d.ks_alpha, metavar="A",
                   help=f"KS test of the wait distributions passes when p >= A (default {d.ks_alpha:g})")
    g.add_argument("--throughput-rmse", type=float, default=d.throughput_rmse, metavar="F",
                   help="max RMSE of the cumulative completions, fraction of the tasks "
                        f"(default {d.throughput_rmse:g})")
    g.add_argument("--max-lag-bins", type=int, default=d.max_lag_bins, metavar="N",
                   help=f"lag search for the throughput RMSE, bins each way (default {d.max_lag_bins})")
    g.add_argument("--makespan-rel", type=float, default=d.makespan_rel, metavar="F",
                   help=f"max relative makespan error for long runs (default {d.makespan_rel:g})")
    g.add_argument("--makespan-abs-s", type=float, default=d.makespan_abs_s, metavar="S",
                   help=f"max makespan error for shorter runs (default {d.makespan_abs_s:g} s)")
    g.add_argument("--makespan-long-s", type=float, default=d.makespan_long_s, metavar="S",
                   help=f"a run this long or longer is judged relatively (default {d.makespan_long_s:g} s)")
    g.add_argument("--cpu-smape", type=float, default=d.cpu_smape, metavar="F",
                   help=f"max CPU sMAPE per node (default {d.cpu_smape:g})")
    g.add_argument("--cpu-pearson", type=float, default=d.cpu_pearson, metavar="R",
                   help=f"min CPU Pearson r per node (default {d.cpu_pearson:g})")
    g.add_argument("--cpu-rmse", type=float, default=d.cpu_rmse_median, metavar="F",
                   help="max CPU RMSE per node, fraction of the real median while busy "
                        f"(default {d.cpu_rmse_median:g})")
    g.add_argument("--start-p95-ms", type=float, metavar="MS",
                   help="also judge the per-task start error at p95 (default: reported only)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a check FAILs")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    a = ap.parse_args(argv)
    if a.bin_s is not None and a.bin_s <= 0:
        raise UsageError("--bin-s must be > 0")
    if a.max_lag_bins < 0:
        raise UsageError("--max-lag-bins must be >= 0")
    th = cmp.Thresholds(wait_rel={50: a.wait_p50, 95: a.wait_p95, 99: a.wait_p99}, wait_floor_ms=a.wait_floor_ms,
                        ks_alpha=a.ks_alpha, throughput_rmse=a.throughput_rmse, max_lag_bins=a.max_lag_bins,
                        makespan_rel=a.makespan_rel, makespan_abs_s=a.makespan_abs_s,
                        makespan_long_s=a.makespan_long_s, cpu_smape=a.cpu_smape, cpu_pearson=a.cpu_pearson,
                        cpu_rmse_median=a.cpu_rmse, start_p95_ms=a.start_p95_ms)
    res = compare(a.opendc, a.input, a.output, th, real_start=a.real_start, trace_dir=a.trace,
                  bin_ms=a.bin_s * 1000 if a.bin_s else None, plots=not a.no_plots)
    width = max(len(c.name) for c in res.checks)
    for c in res.checks:
        print(f"  {c.verdict:<4}  {c.name:<{width}}  {c.value}" + (f"  [{c.limit}]" if c.limit else ""))
    print(f"compare: {res.verdict} — {res.report['matching']['how']}; {res.report['matching']['real_start']}")
    for p in res.files:
        print(f"  wrote {p}")
    if a.strict and res.verdict == cmp.FAIL:
        raise RunFailed(f"{sum(c.verdict == cmp.FAIL for c in res.checks)} check(s) FAIL (--strict)")
    return 0
