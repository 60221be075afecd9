"""Command-line entry points of the node area (`tracekit-collect`, `tracekit-videos`, the two adapters).

Each parses its flags and calls one function of the area; the scripts under ``tools/`` and the
``[project.scripts]`` entry points both call these."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tracekit.core import paths
from tracekit.core.cli import command
from tracekit.node import collector
from tracekit.node.adapter import AdapterConfig, ffmpeg_fixup, legacy_call, wrapper_main
from tracekit.node.adapter import run as run_adapter
from tracekit.node.videos import generate

COLLECT_SYS_DOC = """Per-node /proc collector: `start` (daemon), `stop`, `run` (foreground). Settings come from the
environment."""

COLLECT_EPILOG = """environment (defaults in brackets):
  RUN_ID            run id [run_id.env]
  NODE_ID           node id [hostname]
  STAGE             free tag written to node.json, e.g. cloud [none]
  PROC_PID_DIR      sentinel folder; when set, only sentinels are sampled (whitelist) [logs/$RUN_ID/pids]
  PROC_INTERVAL_MS  sampling interval on absolute deadlines [200]
  PROC_MATCH        process-name regex sampled when PROC_PID_DIR is not set ['^ffmpeg$|^ffprobe$'; '' = off]
  USE_PY_COLLECT    1 = Python collector, 0 = shell fallback (same output) [1]
  TIME_SYNC         1 = best-effort NTP query at start, 0 = skip [1]; TIME_SYNC_STEP=1 also steps the clock
  NTP_POOL          NTP server for TIME_SYNC [pool.ntp.org]
  STOP_ALL          with `stop`: 1 = stop every collector of RUN_ID [0]
  CPU_FREQ_MHZ      per-core MHz written to node.json instead of what /proc says (VMs that show none) [/proc]
  IFACE, VM_IP      interface toward the controller (VM_IP) recorded in node.json [default route]
  CONTAINER         not supported (the original's in-container sampling): set, the collector refuses to start
  TRACEKIT_REDIS_URL / TRACEKIT_REDIS_PASSWORD(_FILE)  controller Redis, for the clock offset (optional)
files: logs/$RUN_ID/<node>/{samples.jsonl,node.json,collector.pid,collector.log}, logs/$RUN_ID/timesync.log"""


@command("collect_sys.py")
def collect_sys(argv: list[str] | None = None) -> int:
    """`tracekit-collect` / `tools/collect_sys.py`."""
    ap = argparse.ArgumentParser(prog="collect_sys.py", description=COLLECT_SYS_DOC, epilog=COLLECT_EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("start", "stop", "run", "run-procmon"),
                    help="start: daemonize; stop: stop this node's collector (STOP_ALL=1: all of the run); "
                         "run: sample in the foreground until Ctrl-C; run-procmon: the original's name of run")
    args = ap.parse_args(argv)
    if args.command == "run-procmon":
        args.command = "run"
    if args.command == "stop":
        rid = paths.run_id()
        node = None if os.environ.get("STOP_ALL", "0") == "1" else paths.node_id()
        done = collector.stop_daemons(rid, node)
        if not done:
            print(f"no collector running for RUN_ID={rid}" + (f" node {node}" if node else ""))
        for n, pid, how in done:
            print(f"collector of node {n} (pid {pid}): {how}")
        return 0
    cfg = collector.CollectorConfig.from_env()
    if args.command == "run":
        return collector.run_foreground(cfg)
    use_py = os.environ.get("USE_PY_COLLECT", "1") != "0"
    pid = collector.start_daemon(cfg, use_py=use_py)
    print(f"collector started: pid {pid}, node {cfg.node_id}, mode {cfg.mode if use_py else 'sh-whitelist'}, "
          f"every {cfg.interval_ms:g} ms -> {paths.samples_path(cfg.run_id, cfg.node_id)}")
    return 0


GENERATE_TEST_VIDEOS_DOC = """Synthesise test input videos: H.264 yuv420p, ~8 Mbps, GOP 90; a third each without / low /
medium noise."""


@command("generate_test_videos.py")
def generate_test_videos(argv: list[str] | None = None) -> int:
    """`tracekit-videos` / `tools/generate_test_videos.py`."""
    ap = argparse.ArgumentParser(prog="generate_test_videos.py", description=GENERATE_TEST_VIDEOS_DOC)
    ap.add_argument("--count", type=int, default=6, help="number of clips (default 6)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per clip (default 10)")
    ap.add_argument("--resolution", default="1920x1080", help="WIDTHxHEIGHT (default 1920x1080)")
    ap.add_argument("--fps", type=int, default=30, help="frames per second (default 30)")
    ap.add_argument("--seed", type=int, default=20250901, help="seed: same seed, same bytes (default 20250901)")
    ap.add_argument("--bitrate", default="8M", help="target bitrate, e.g. 8M or 300k (default 8M)")
    ap.add_argument("--gop", type=int, default=90, help="keyframe interval in frames (default 90)")
    ap.add_argument("--preset", default="medium", help="x264 preset (default medium)")
    ap.add_argument("--out", default=None, help="output folder (default <inputs root>/ffmpeg)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny clips for tests: 320x240, 1 s, 300k, preset ultrafast (explicit flags still win)")
    ap.add_argument("--jobs", type=int, default=None, help="clips encoded at a time (default: CPU count)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    if args.quick:
        given = {a.split("=")[0] for a in argv}
        if "--resolution" not in given:
            args.resolution = "320x240"
        if "--duration" not in given:
            args.duration = 1.0
        if "--bitrate" not in given:
            args.bitrate = "300k"
        if "--preset" not in given:
            args.preset = "ultrafast"
    out = Path(args.out) if args.out else paths.inputs_root() / "ffmpeg"
    files = generate(args.count, args.duration, args.resolution, args.fps, args.seed, out, args.bitrate, args.gop,
                     args.preset, progress=not args.no_progress, jobs=args.jobs)
    print(f"{len(files)} clips ({args.resolution}, {args.duration:g}s, {args.fps} fps, seed {args.seed}) in {out}")
    return 0


FFMPEG_WRAPPER_DOC = """Run one ffmpeg execution and measure it exactly (PID sentinel, binding, exec event).

Usage: RUN_ID=... TRACE_ID=... ffmpeg_wrapper.py -- ffmpeg [args]
Adds -nostdin when missing so ffmpeg never waits for a key; see docs/node-side.md for the environment.
The original toolkit's call `ffmpeg_wrapper.py <ffmpeg args>` (with CPUSET, CPU_QUOTA, CPU_WEIGHT, UNIT_NAME,
TS_ENQUEUE, STAGE) works too (docs/migrating.md).
"""

CMD_WRAPPER_DOC = """Run any allowed command once and measure it exactly (PID sentinel, binding, exec event).

Usage: RUN_ID=... TRACE_ID=... cmd_wrapper.py -- <command> [args]
The worker passes the task through the environment (docs/internals.md); see docs/node-side.md.
"""


@command("ffmpeg_wrapper.py")
def ffmpeg_wrapper(argv: list[str] | None = None) -> int:
    """`tracekit-ffmpeg-wrapper` / `tools/adapters/ffmpeg_wrapper.py`: one measured ffmpeg execution.

    The original adapter's call (ffmpeg options straight after the script name, its CPUSET / CPU_QUOTA / ... in
    the environment) still works: :func:`tracekit.node.adapter.legacy_call` translates it."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] not in ("--", "-h", "--help") and args[0].startswith("-"):
        legacy_argv, env = legacy_call(args, dict(os.environ))
        return run_adapter(AdapterConfig.from_env(ffmpeg_fixup(legacy_argv), env))
    return wrapper_main(args, "ffmpeg_wrapper.py", FFMPEG_WRAPPER_DOC, ffmpeg_fixup)


@command("cmd_wrapper.py")
def cmd_wrapper(argv: list[str] | None = None) -> int:
    """`tracekit-cmd-wrapper` / `tools/adapters/cmd_wrapper.py`: one measured execution of any allowed command."""
    return wrapper_main(sys.argv[1:] if argv is None else argv, "cmd_wrapper.py", CMD_WRAPPER_DOC)
